"""Remote commands end to end (docs/controller.md): signed envelopes published by a paho commander
to a real Mosquitto, executed by `edge-agent run`, answered on `…/replies`.

Every rejection code is seen as a `rejected` reply (and a payload without a readable id as
an `error` event); every command's happy path goes accepted → in_progress* → one final
reply; a repeated id is answered from the ledger, also after a restart; a running join can
be canceled and takes its nodeadm process group with it; garbage and a flood of pings never
take the agent down.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from agent.checks import CHECK_IDS
from agent.testing import sample_assignment
from devtools.commander import FINAL_STATES
from devtools.fakehost import layout
from tests.e2e.conftest import Site, SiteFactory
from tests.support import process_alive

STATUS_KEYS = {
    "uid", "agent_version", "mode", "phase", "phase_since", "ts", "seq", "kubernetes_version",
    "target_kubernetes_version", "node_name", "credential_provider", "assignment_revision",
    "nodeadm_version", "checks", "last_error",
}  # fmt: skip


def _states(site: Site, cid: str) -> list[str]:
    return [r["state"] for r in site.cmd.replies(cid)]


def _assert_lifecycle(site: Site, cid: str) -> None:
    """accepted → in_progress* → exactly one final state, nothing after it."""
    states = _states(site, cid)
    assert states, f"no reply to {cid}"
    assert states[0] == "accepted", states
    assert all(s == "in_progress" for s in states[1:-1]), states
    assert states[-1] in FINAL_STATES and states[-1] != "rejected", states
    assert sum(s in FINAL_STATES for s in states) == 1, states


def _raw(env: dict[str, Any]) -> bytes:
    return json.dumps(env, separators=(",", ":")).encode()


def _rejected(site: Site, payload: dict[str, Any], code: str) -> dict[str, Any]:
    # To this host's topic, whatever `uid` the envelope names.
    cid = site.cmd.send(payload, site.uid)
    assert cid is not None
    reply = site.cmd.final_reply(cid, 10)
    assert reply is not None, f"no reply for the {code} case"
    assert reply["state"] == "rejected", reply
    assert reply["error"]["code"] == code, reply
    assert reply["duplicate"] is False and reply["uid"] == site.uid
    return reply


def test_each_rejection_code_gets_a_rejected_reply(site_factory: SiteFactory) -> None:
    # The join hangs in `nodeadm install`, so exclusive commands are busy meanwhile.
    s = site_factory(
        nodeadm_env={"NODEADM_FAKE_HANG": "install"}, config={"commands": {"max_bytes": 4096}}
    )
    s.host.wait_phase("installing", 30)
    now = time.time()
    sent: list[str] = []

    def check(payload: dict[str, Any], code: str) -> None:
        sent.append(str(payload["id"]))
        _rejected(s, payload, code)

    # too_large: not parsed; the id is found in its first 256 bytes.
    big = b'{"id":"big-1","name":"ping","args":{"pad":"' + b"x" * 4500 + b'"}}'
    s.cmd.publish("commands", big)
    reply = s.cmd.final_reply("big-1", 10)
    assert reply and reply["state"] == "rejected" and reply["error"]["code"] == "too_large"
    sent.append("big-1")
    # bad_json: a non-integer number (the id is still readable).
    bad = s.envelope("ping", id="badjson-1")
    s.cmd.publish("commands", _raw(bad)[:-1] + b',"x":1.5}')
    reply = s.cmd.final_reply("badjson-1", 10)
    assert reply and reply["state"] == "rejected" and reply["error"]["code"] == "bad_json"
    sent.append("badjson-1")
    # bad_envelope: a required field missing (signed all the same).
    missing = s.envelope("ping", sign=False)
    del missing["expires_at"]
    check(s.signer.sign(missing), "bad_envelope")
    check(s.envelope("ping", ttl_s=7200), "bad_envelope")  # TTL beyond max_ttl_s
    check(s.envelope("ping", uid="edge-someone-else"), "wrong_host")
    check(s.envelope("ping", issued_at=now + 1000), "not_yet_valid")
    check(s.envelope("ping", issued_at=now - 700, ttl_s=600), "expired")
    tampered = s.envelope("ping")
    tampered["name"] = "uninstall"
    check(tampered, "bad_signature")
    check(s.envelope("ping", sign=False), "bad_signature")  # no sig at all
    garbled = s.envelope("ping")
    garbled["sig"] = base64.b64encode(b"\x01" * 64).decode()
    check(garbled, "bad_signature")
    check(s.envelope("reboot"), "unknown_command")
    check(s.envelope("ping", {"x": 1}), "bad_args")
    check(s.envelope("upgrade", {}), "bad_args")
    check(s.envelope("upgrade", {"kubernetes_version": "latest"}), "bad_args")
    check(s.envelope("set-log-level", {"level": "loud"}), "bad_args")
    check(s.envelope("refresh-package-index"), "busy")
    check(s.envelope("join"), "busy")
    # Non-exclusive commands still run beside the hung nodeadm.
    assert s.run("ping")["state"] == "succeeded"
    # Each refused envelope got exactly one reply.
    for cid in sent:
        assert len(s.cmd.replies(cid)) == 1, (cid, s.cmd.replies(cid))
    assert s.host.nodeadm_calls("uninstall") == []


def test_a_payload_without_a_readable_id_gets_an_error_event(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    before = {r.payload for r in site.cmd.records("replies")}
    payloads = [
        b"\x00\xffnot json at all",
        b'{"name":"ping","args":{}}',
        json.dumps({"id": "has spaces!", "name": "ping", "args": {}}).encode(),
        # Too large (but within what the broker lets through: max_bytes + 1 KiB), and no id
        # in its first 256 bytes.
        b'{"pad":"' + b"y" * 65700 + b'"}',
    ]
    for p in payloads:
        site.cmd.publish("commands", p)

    def refusals() -> list[dict[str, Any]]:
        # Only the dispatcher's: a slow controller poll may add an error event of its own.
        return [e for e in site.cmd.events("error") if "without a readable id" in e["message"]]

    assert site.cmd.wait_for(lambda: len(refusals()) >= len(payloads), 10), refusals()
    codes = sorted(e["code"] for e in refusals())
    assert codes == sorted(["bad_json", "bad_envelope", "bad_envelope", "too_large"]), codes
    time.sleep(0.5)
    assert {r.payload for r in site.cmd.records("replies")} == before, "no reply without an id"


def test_every_command_runs_on_a_joined_host(site_factory: SiteFactory) -> None:
    # A long poll interval: only sync-assignment can bring the new revision in time.
    s = site_factory(config={"controller": {"assignment_poll_s": 120}})
    s.host.wait_phase("joined", 30)
    ids: list[str] = []

    def run(name: str, args: dict[str, Any] | None = None, timeout: float = 20) -> dict[str, Any]:
        reply = s.run(name, args, timeout)
        ids.append(reply["command_id"])
        assert reply["state"] == "succeeded", reply
        assert reply["name"] == name and reply["error"] is None and reply["duplicate"] is False
        return dict(reply["result"])

    pong = run("ping")
    assert pong["pong"] is True and pong["agent_version"] and isinstance(pong["uptime_s"], int)
    status = run("get-status")
    assert set(status) == STATUS_KEYS
    assert status["uid"] == s.uid and status["phase"] == "joined"
    assert status["kubernetes_version"] == "1.31"

    assert "check.done" not in s.host.output()
    checks = run("run-checks")
    assert len(checks["checks"]) == len(CHECK_IDS)
    assert checks["summary"]["failed"] == 0 and checks["summary"]["passed"] >= 10
    assert run("set-log-level", {"level": "debug"}) == {"level": "debug"}
    only = run("run-checks", {"only": ["system.swap", "os.supported"]})
    assert sorted(c["id"] for c in only["checks"]) == ["os.supported", "system.swap"]
    # The new level is live: the checks' debug lines are in the log now.
    assert s.host.wait_for(lambda: "check.done" in s.host.output(), 5)

    apt_before = len(layout.calls(s.host.root, "apt-get"))
    refreshed = run("refresh-package-index")
    assert refreshed["manager"] == "apt" and isinstance(refreshed["duration_s"], float | int)
    assert len(layout.calls(s.host.root, "apt-get")) == apt_before + 1

    s.controller.set_assignment(s.uid, sample_assignment(revision=2, kubelet={"node_labels": {"a": "b"}}))
    assert run("sync-assignment") == {"revision": 2}
    assert s.wait_status(lambda st: st["assignment_revision"] == 2, 5)["phase"] == "joined"

    debug = run("nodeadm-debug")
    assert isinstance(debug["ok"], bool) and debug["items"]
    for item in debug["items"]:
        assert set(item) >= {"description", "ok", "error", "remediation"}

    bundle = run("collect-diagnostics", {"upload": False}, timeout=30)
    assert bundle["uploaded"] is False and bundle["bytes"] > 0 and len(bundle["sha256"]) == 64
    assert s.controller.bundles == {}

    assert run("cancel", {"command_id": "nothing-running"}) == {"canceled": False}
    time.sleep(0.3)  # any stray reply would have arrived by now
    for cid in ids:
        _assert_lifecycle(s, cid)


def test_join_upgrade_and_uninstall_by_command(site_factory: SiteFactory) -> None:
    s = site_factory(config={"join": {"auto": False}})
    st = s.wait_status(
        lambda st: st["phase"] == "awaiting_assignment" and st["assignment_revision"] == 1
    )
    assert st["kubernetes_version"] is None
    time.sleep(1.0)
    assert s.host.nodeadm_calls("install") == [], "join.auto false: nothing runs by itself"

    join = s.run("join", timeout=40)
    assert join["state"] == "succeeded", join
    assert join["result"]["kubernetes_version"] == "1.31"
    assert join["result"]["node_name"].startswith("mi-")
    progress = [
        r["progress"] for r in s.cmd.replies(join["command_id"]) if r["state"] == "in_progress"
    ]
    assert progress, "a join reports its progress"
    _assert_lifecycle(s, join["command_id"])
    assert s.host.status()["phase"] == "joined"
    calls = len(s.host.nodeadm_calls())
    again = s.run("join", timeout=10)
    assert again["state"] == "succeeded" and again["result"] == join["result"]
    assert len(s.host.nodeadm_calls()) == calls, "join on a joined host runs nothing"

    up = s.run("upgrade", {"kubernetes_version": "1.32", "drained": True}, timeout=40)
    assert up["state"] == "succeeded", up
    assert up["result"] == {"kubernetes_version": "1.32"}
    _assert_lifecycle(s, up["command_id"])
    call = s.host.nodeadm_calls("upgrade")[-1]
    assert call[1] == "1.32" and "pod-validation,node-validation" in call
    assert s.host.status()["kubernetes_version"] == "1.32"
    same = s.run("upgrade", {"kubernetes_version": "1.32", "drained": True}, timeout=10)
    assert same["state"] == "succeeded" and len(s.host.nodeadm_calls("upgrade")) == 1

    gone = s.run("uninstall", {"force": True}, timeout=40)
    assert gone["state"] == "succeeded", gone
    assert gone["result"] == {}
    _assert_lifecycle(s, gone["command_id"])
    assert "--force" in s.host.nodeadm_calls("uninstall")[-1]
    st = s.host.status()
    assert st["phase"] == "uninstalled" and st["kubernetes_version"] is None


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _install_pid_file(s: Site) -> Path:
    """Where the nodeadm stand-in writes the pid of a running `install`."""
    return layout.under(s.host.root, f"{layout.RUN_DIR}/nodeadm-install.pid")


def _join_with_a_first_install_that_hangs(site_factory: SiteFactory) -> tuple[Site, str]:
    """A site that joins only on command, its first `nodeadm install` hanging; the `join` is
    sent once the assignment is in. Returns the site and the join's command id."""
    s = site_factory(
        config={"join": {"auto": False}},
        nodeadm_env={"NODEADM_FAKE_HANG": "install", "NODEADM_FAKE_HANG_TIMES": "1"},
    )
    s.wait_status(lambda st: st["assignment_revision"] == 1)
    return s, s.send("join")


def test_cancel_of_a_running_join_ends_its_nodeadm(site_factory: SiteFactory) -> None:
    s = site_factory(config={"join": {"auto": False}}, nodeadm_env={"NODEADM_FAKE_HANG": "install"})
    s.wait_status(lambda st: st["assignment_revision"] == 1)
    join_env = s.envelope("join")
    join_id = s.cmd.send(join_env)
    assert join_id
    pid_file = _install_pid_file(s)
    pid = int(s.host.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20))
    pgid = os.getpgid(pid)
    assert _group_alive(pgid)
    assert s.cmd.wait_for(lambda: "in_progress" in _states(s, join_id), 5)

    # A second exclusive command is busy; the same join again is a duplicate, still running.
    busy = s.run("upgrade", {"kubernetes_version": "1.32"})
    assert busy["state"] == "rejected" and busy["error"]["code"] == "busy"
    s.cmd.send(join_env)
    dup = s.cmd.wait_for(lambda: [r for r in s.cmd.replies(join_id) if r["duplicate"]], 5)
    assert dup and dup[0]["state"] in ("accepted", "in_progress")

    cancel = s.run("cancel", {"command_id": join_id})
    assert cancel["state"] == "succeeded" and cancel["result"] == {"canceled": True}
    final = s.cmd.final_reply(join_id, 15)
    assert final is not None and final["state"] == "canceled", final
    assert s.host.wait_for(lambda: not _group_alive(pgid), 10), "nodeadm's process group lives on"
    assert not process_alive(pid)
    finals = [r for r in s.cmd.replies(join_id) if r["state"] in FINAL_STATES]
    assert len(finals) == 1
    # A canceled step is not retried by itself.
    time.sleep(1.5)
    assert len(s.host.nodeadm_calls("install")) == 1
    assert s.host.status()["phase"] != "installing"


def test_sigterm_during_a_join_command_keeps_the_phase_for_the_next_start(
    site_factory: SiteFactory,
) -> None:
    s, join_id = _join_with_a_first_install_that_hangs(site_factory)
    pid_file = _install_pid_file(s)
    pid = int(s.host.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20))
    pgid = os.getpgid(pid)
    assert s.host.stop() == 0
    assert not _group_alive(pgid), "a stopped agent left its nodeadm running"
    # docs/design-notes.md: a restart during a nodeadm step keeps the phase, so the next start
    # re-runs it.
    st = s.host.status()
    assert st["phase"] == "installing", st
    assert (st["last_error"] or {}).get("code") != "canceled", st
    final = s.cmd.final_reply(join_id, 5)
    assert final is not None and final["state"] == "canceled"
    assert "cancel command" not in final["message"], final["message"]
    s.start()
    st = s.host.wait_phase("joined", 30)
    assert st["last_error"] is None
    assert len(s.host.nodeadm_calls("install")) == 2
    assert len([r for r in s.cmd.replies(join_id) if r["state"] in FINAL_STATES]) == 1


def test_a_canceled_join_stays_canceled_across_a_restart(site_factory: SiteFactory) -> None:
    s, join_id = _join_with_a_first_install_that_hangs(site_factory)
    pid_file = _install_pid_file(s)
    s.host.wait_for(pid_file.exists, 20)
    assert s.run("cancel", {"command_id": join_id})["result"] == {"canceled": True}
    st = s.wait_status(lambda st: st["phase"] == "failed")
    assert st["last_error"]["code"] == "canceled"
    assert s.host.stop() == 0
    s.start()
    time.sleep(2.5)
    st = s.host.status()
    assert st["phase"] == "failed" and st["last_error"]["code"] == "canceled", st
    assert len(s.host.nodeadm_calls("install")) == 1, "the canceled join ran again"


def test_a_repeated_id_gets_the_recorded_reply_even_after_a_restart(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    env = site.envelope("refresh-package-index")
    cid = site.cmd.send(env)
    assert cid
    first = site.cmd.final_reply(cid, 20)
    assert first is not None and first["state"] == "succeeded"
    apt_calls = len(layout.calls(site.host.root, "apt-get"))

    def duplicates() -> list[dict[str, Any]]:
        return [r for r in site.cmd.replies(cid) if r["duplicate"]]

    site.cmd.send(env)
    assert site.cmd.wait_for(lambda: len(duplicates()) == 1, 10)
    again = duplicates()[0]
    assert again["state"] == "succeeded" and again["result"] == first["result"]
    assert again["seq"] > first["seq"]

    assert site.host.stop() == 0
    since = time.time()
    site.start()
    assert site.cmd.wait_for(
        lambda: any(
            r.json().get("state") == "online"
            for r in site.cmd.records("availability")
            if r.ts >= since
        ),
        15,
    )
    site.cmd.send(env)
    assert site.cmd.wait_for(lambda: len(duplicates()) == 2, 10), site.cmd.replies(cid)
    after = duplicates()[1]
    assert after["state"] == "succeeded" and after["result"] == first["result"]
    assert len(layout.calls(site.host.root, "apt-get")) == apt_calls, "the command ran twice"
    # An unverified message reusing the id is no reply at all (it cannot speak for it).
    forged = {**env, "args": {"x": 1}}
    site.cmd.send(forged)
    assert site.cmd.wait_for(
        lambda: any(cid in e.get("message", "") for e in site.cmd.events("error")), 10
    )
    assert len(site.cmd.replies(cid)) == 1 + 1 + 2  # accepted, succeeded, two duplicates
    _assert_lifecycle_ignoring_duplicates(site, cid)


def _assert_lifecycle_ignoring_duplicates(site: Site, cid: str) -> None:
    states = [r["state"] for r in site.cmd.replies(cid) if not r["duplicate"]]
    assert states[0] == "accepted" and states[-1] == "succeeded"
    assert sum(s in FINAL_STATES for s in states) == 1


def test_garbage_never_crashes_the_agent(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    rng = random.Random(4242)
    base = site.envelope("ping", id="dupkeys-1")
    # Duplicate keys: signed over `ping`; a lax parser would keep the later `uninstall`.
    dup_text = _raw(base)[:-1] + b',"name":"uninstall"}'
    signed_uninstall = site.envelope("uninstall", id="dupkeys-2")
    dup_text2 = b'{"name":"ping",' + _raw(signed_uninstall)[1:]
    payloads: list[bytes] = [
        *(rng.randbytes(rng.randint(0, 3000)) for _ in range(20)),
        b"",
        b"null",
        b"[]",
        b'"id"',
        b"[" * 30000 + b"]" * 30000,
        b'{"id":"deep-1","args":' + b'{"a":' * 10000 + b"1" + b"}" * 10001,
        b'{"id":"num-1","name":"ping","args":{"n":1e400}}',
        b'{"id":"num-2","name":"ping","args":{"n":' + b"9" * 5000 + b"}}",
        b'{"id":"num-3","name":"ping","args":{"n":-9007199254740993}}',
        b'{"id":"nan-1","name":"ping","args":{"n":NaN}}',
        b'{"id":"sur-1","name":"ping","args":{"s":"\\ud800"}}',
        b'{"id":"utf-1","name":"ping","args":{"s":"\xed\xa0\x80"}}',
        dup_text,
        dup_text2,
    ]
    for p in payloads:
        site.cmd.publish("commands", p)
    ids = ("deep-1", "num-1", "num-2", "num-3", "nan-1", "sur-1", "utf-1", "dupkeys-1", "dupkeys-2")
    for cid in ids:
        reply = site.cmd.final_reply(cid, 10)
        assert reply is not None, cid
        assert reply["state"] == "rejected" and reply["error"]["code"] == "bad_json", reply
    pong = site.run("ping")
    assert pong["state"] == "succeeded"
    assert site.host.proc is not None and site.host.proc.poll() is None
    assert site.host.nodeadm_calls("uninstall") == []
    assert site.host.status()["phase"] == "joined"
    out = site.host.output()
    assert "Traceback" not in out and "command.crashed" not in out


def test_a_flood_of_pings_gets_one_final_reply_each(site: Site) -> None:
    site.host.wait_phase("joined", 30)
    n = 1000
    envs = [site.envelope("ping", id=f"flood-{i:04d}") for i in range(n)]
    infos = [site.cmd.send(e, wait=False) for e in envs]
    assert len(infos) == n
    ids = {str(e["id"]) for e in envs}

    def finals() -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in site.cmd.messages("replies"):
            if r.get("command_id") in ids and r.get("state") in FINAL_STATES:
                counts[r["command_id"]] = counts.get(r["command_id"], 0) + 1
        return counts

    answered = site.cmd.wait_for(lambda: len(finals()) == n, 60)
    broker_log = site.broker.log_path.read_text(errors="replace")
    assert "Outgoing messages are being dropped" not in broker_log, "the broker dropped some"
    assert answered, f"{len(finals())} of {n} answered\n{site.host.output()[-2000:]}"
    time.sleep(0.5)
    counts = finals()
    assert set(counts.values()) == {1}, "a ping got more than one final reply"
    states = {r["state"] for r in site.cmd.messages("replies") if r.get("command_id") in ids}
    assert "succeeded" in states and "rejected" not in states, states
    assert site.host.proc is not None and site.host.proc.poll() is None
    assert site.run("ping")["state"] == "succeeded"
