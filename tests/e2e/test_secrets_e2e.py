"""Secrets stay secret (docs/api/openapi.yaml, docs/api/asyncapi.yaml, config.example.yaml): the SSM activation code, the registration token
and the host token never show in the agent's log, in anything it publishes over MQTT, or in
a command reply, through a refused registration, a failed nodeadm run, debug logging and
every command that reports on the host.
"""

from __future__ import annotations

from agent.testing import ACTIVATION_CODE
from tests.e2e.conftest import SiteFactory

WRONG_TOKEN = "operator-typo-token-7f3a91"


def test_no_secret_leaves_the_agent(site_factory: SiteFactory) -> None:
    s = site_factory(
        token=WRONG_TOKEN,
        config={"log": {"level": "debug"}},
        nodeadm_env={
            "NODEADM_FAKE_FAIL": "init:ssm_activation_invalid",
            "NODEADM_FAKE_FAIL_TIMES": "1",
        },
    )
    s.wait_status(lambda st: (st.get("last_error") or {}).get("code") == "registration_refused")
    s.token_file.write_text(s.controller.registration_token + "\n")
    st = s.wait_status(
        lambda st: (st.get("last_error") or {}).get("code") == "ssm_activation_invalid"
    )
    st = s.host.wait_phase("joined", 30)
    assert st["last_error"] is None
    # Every command that reports on the host, including a failing one.
    for name, args in (
        ("get-status", {}),
        ("run-checks", {}),
        ("nodeadm-debug", {}),
        ("collect-diagnostics", {}),
        ("sync-assignment", {}),
        ("upgrade", {"kubernetes_version": "1.99", "drained": True}),
    ):
        reply = s.run(name, args, timeout=30)
        assert reply["state"] in ("succeeded", "failed"), reply
    assert s.host.stop() == 0

    host_token = s.controller.host_token(s.uid)
    assert host_token
    secrets = {
        "activation code": ACTIVATION_CODE,
        "registration token": s.controller.registration_token,
        "refused registration token": WRONG_TOKEN,
        "host token": host_token,
    }
    # The secrets did reach the places that need them: this test watches real traffic.
    assert ACTIVATION_CODE in (s.tmp / "etc" / "nodeconfig.yaml").read_text()
    assert s.cmd.records("events") and s.cmd.records("replies") and s.cmd.records("health")
    out = s.host.output()
    assert "check.done" in out, "debug logging was on"
    for what, secret in secrets.items():
        assert secret not in out, f"the {what} is in the agent's log"
        for r in s.cmd.records():
            assert secret.encode() not in r.payload, f"the {what} is in an MQTT {r.suffix} message"
