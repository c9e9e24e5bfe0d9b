"""``edge-agent``: the thin command line of contract §7.

``run`` (the daemon), ``check``, ``status``, ``nodeconfig`` and ``version``. Exit codes: 0 ok;
1 a check or the operation failed, or the config file does not exist yet (systemd keeps
retrying: a Kairos stage may write it after boot); 2 usage; 78 a configuration error in a
file that exists, naming the key path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.configfile import file_readable, load_config
from agent.core.config import Config, ConfigError, ConfigMissing

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
DEFAULT_CONFIG = "/etc/edge-agent/config.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="EKS Hybrid Nodes edge agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    chk = sub.add_parser("check", help="run the preflight checks locally")
    chk.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    chk.add_argument("--json", action="store_true")
    chk.add_argument("--only", nargs="+", metavar="ID", action="extend")
    st = sub.add_parser("status", help="print the persisted status")
    st.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    st.add_argument("--json", action="store_true")
    nc = sub.add_parser("nodeconfig", help="print the NodeConfig rendered from the assignment")
    nc.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    nc.add_argument("--show-secrets", action="store_true")
    sub.add_parser("version", help="print the agent's version")
    return p


def _config(path: str, cmd: str) -> Config:
    # Only the daemon needs its key and token files now; `check` reports them as a check.
    return load_config(Path(path), os.environ, readable=None if cmd != "run" else file_readable)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "version":
        print(f"edge-agent {__version__}")
        return EX_OK
    try:
        cfg = _config(args.config, args.cmd)
    except ConfigMissing as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return EX_FAIL
    except ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    try:
        if args.cmd == "run":
            return _run(cfg)
        if args.cmd == "check":
            return asyncio.run(_check(cfg, args.json, args.only))
        if args.cmd == "status":
            return _status(cfg, args.json)
        return _nodeconfig(cfg, args.show_secrets)
    except ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return EX_FAIL


def _run(cfg: Config) -> int:
    from agent.daemon import Agent

    async def go() -> int:
        try:
            agent = Agent(cfg)
        except OSError as e:
            print(f"edge-agent: cannot use state_dir {cfg.state_dir}: {e}", file=sys.stderr)
            return EX_FAIL
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, agent.request_stop)
        loop.add_signal_handler(signal.SIGINT, agent.request_stop)
        loop.add_signal_handler(signal.SIGHUP, agent.reload)
        return await agent.run()

    return asyncio.run(go())


def _local_assignment(cfg: Config) -> tuple[Any, str | None]:
    """The assignment `check` and `nodeconfig` use: the file, else the last persisted one."""
    from agent.core.assignment import AssignmentError, parse_assignment
    from agent.state.store import StateStore

    if cfg.assignment_file is not None:
        from agent.daemon import load_assignment_file

        try:
            return parse_assignment(load_assignment_file(cfg.assignment_file)), None
        except AssignmentError as e:
            return None, f"assignment_file {cfg.assignment_file}: {e}"
        except (OSError, ValueError) as e:
            return None, f"cannot read assignment_file {cfg.assignment_file}: {e}"
    loaded = StateStore(cfg.state_dir).load()
    return loaded.state.assignment, None


async def _check(cfg: Config, as_json: bool, only: list[str] | None) -> int:
    from agent.checks.base import CheckContext
    from agent.checks.report import render_table, to_json
    from agent.checks.runner import UnknownCheck, run_checks
    from agent.host.metrics import host_addresses
    from agent.logs import LevelHolder, make_logger
    from agent.state.store import StateStore

    assignment, problem = _local_assignment(cfg)
    if problem:
        print(f"edge-agent: {problem}", file=sys.stderr)
    state = StateStore(cfg.state_dir).load().state
    log = make_logger(level=LevelHolder("warning"), fmt="json", stream=sys.stderr)
    ctx = CheckContext.build(
        cfg,
        assignment=assignment,
        installed_minor=state.installed_minor,
        addresses=host_addresses(),
        now=time.time(),
        allow_changes=False,
        log=log,
    )
    try:
        results = await run_checks(ctx, only)
    except UnknownCheck as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return EX_USAGE
    if as_json:
        print(json.dumps(to_json(results), indent=1))
    else:
        print(render_table(results, color=sys.stdout.isatty()))
    return EX_FAIL if any(r.blocking for r in results) or problem else EX_OK


def _status(cfg: Config, as_json: bool) -> int:
    from agent.core.timefmt import iso
    from agent.state.store import StateStore
    from agent.status import checks_object, status_from

    path = cfg.state_dir / "status.json"
    status: dict[str, Any] | None = None
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = None
    # The state file is the truth; status.json adds what only the daemon knows (seq).
    loaded = StateStore(cfg.state_dir).load()
    fresh = status_from(
        loaded.state,
        uid=_uid(cfg),
        mode=cfg.host.mode,
        seq=int((status or {}).get("seq") or 0),
        ts=iso(time.time()),
        nodeadm_version=loaded.extra.get("nodeadm_version"),
        checks=checks_object(loaded.checks, loaded.checks_ts),
    )
    if as_json:
        print(json.dumps(fresh, indent=1))
        return EX_OK
    le = fresh["last_error"]
    print(f"uid:        {fresh['uid']}\nphase:      {fresh['phase']} since {fresh['phase_since']}")
    print(
        f"kubernetes: {fresh['kubernetes_version'] or '-'} "
        f"(target {fresh['target_kubernetes_version'] or '-'})"
    )
    print(
        f"node:       {fresh['node_name'] or '-'}  provider {fresh['credential_provider'] or '-'}"
        f"  assignment revision {fresh['assignment_revision'] or '-'}"
    )
    c = fresh["checks"]
    if c:
        failing = ", ".join(c["failing"]) or "none"
        print(
            f"checks:     {c['passed']} passed, {c['warned']} warned, {c['failed']} failed "
            f"(failing: {failing}) at {c['ts']}"
        )
    if le:
        print(f"last error: {le['code']}: {le['message']} ({le['ts']})")
    return EX_OK


def _uid(cfg: Config) -> str:
    try:
        return (cfg.state_dir / "uid").read_text().strip()
    except OSError:
        return cfg.host.uid or ""


def _nodeconfig(cfg: Config, show_secrets: bool) -> int:
    import yaml

    from agent.core.nodeconfig import redact_nodeconfig, render_nodeconfig

    assignment, problem = _local_assignment(cfg)
    if assignment is None:
        print(
            f"edge-agent: {problem or 'no assignment yet (none persisted, no assignment_file)'}",
            file=sys.stderr,
        )
        return EX_FAIL
    doc = render_nodeconfig(assignment)
    if not show_secrets:
        doc = redact_nodeconfig(doc)
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
