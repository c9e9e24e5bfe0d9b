"""A state.json written by the previous release is read by this one: an upgrade that was under
way when the agent stopped resumes with the version and flags the operator asked for."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from agent.app import Agent
from agent.configfile import load_config
from agent.core import lifecycle as lc
from agent.testing import sample_assignment
from tests.support import HostEnv


def _old_state_file(state_dir: Path) -> None:
    """Literally what the previous release wrote mid-upgrade: ``op_args`` as one flat object,
    with a key this release does not know."""
    a = sample_assignment()
    doc = {
        "schema_version": 1,
        "checks": [],
        "checks_ts": None,
        "extra": {},
        "lifecycle": {
            "phase": "upgrading",
            "phase_since": 1000.0,
            "reason": "upgrade command",
            "assignment": a,
            "op": "upgrade",
            "op_args": {"kubernetes_version": "1.32.2", "drained": True, "surge": 1},
            "installed_version": "1.31",
            "joined_identity": ["acc-cluster", "eu-west-1", "ssm"],
            "node_name": "mi-0123456789abcdef0",
            "last_error": None,
            "failures": 0,
            "retry_at": None,
            "unhealthy_since": None,
        },
    }
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "state.json").write_text(json.dumps(doc))


async def test_an_upgrade_in_an_old_state_file_resumes_with_its_version_and_flags(
    tmp_path: Path,
) -> None:
    h = HostEnv(
        tmp_path,
        host={"installed": True, "kubernetes_version": "1.31.7"},
        local_assignment=sample_assignment(),
    )
    _old_state_file(h.state)
    agent = Agent(load_config(h.config_path, {}), stdout=io.StringIO(), env={})
    run = asyncio.create_task(agent.run())
    try:
        s = await asyncio.wait_for(
            agent.driver.wait_until(lambda st: st.phase is not lc.Phase.UPGRADING), 30
        )
    finally:
        agent.request_stop()
        assert await run == 0
    assert s.phase is lc.Phase.JOINED, s.last_error
    assert s.installed_version == "1.32.2"
    (argv,) = h.nodeadm_calls("upgrade")
    assert argv[1] == "1.32.2"
    assert "--skip" in argv  # drained: true skips nodeadm's own drain
    saved = json.loads((h.state / "state.json").read_text())["lifecycle"]
    assert saved["op"] is None and saved["op_args"] == {}
