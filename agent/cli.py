"""``edge-agent``: the thin command line.

``run`` (the daemon), ``check``, ``status``, ``nodeconfig`` and ``version``; bare
``edge-agent`` prints the help. Exit codes: 0 ok; 1 a check or the operation failed, or the
config file does not exist yet (systemd keeps retrying: a Kairos stage may write it after
boot); 2 usage; 3 ``status`` found no running daemon (the LSB convention); 78 a configuration
error in a file that exists, naming the key path.
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
from typing import TYPE_CHECKING

from agent import __version__
from agent.configfile import file_readable, load_config
from agent.core.config import Config, ConfigError, ConfigMissing

if TYPE_CHECKING:
    from agent.core.assignment import Assignment

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
DEFAULT_CONFIG = "/etc/edge-agent/config.yaml"


_DESCRIPTION = """\
The edge agent turns this host into an Amazon EKS Hybrid Node under a central controller:
it registers, receives an assignment, runs preflight checks, runs nodeadm install and init,
and reports over MQTT. `run` is the daemon (systemd starts it); the other commands are for
people at the host and read the same configuration."""

_EXIT_CODES = """\
exit codes: 0 success; 1 a check or the operation failed, or the config file does not exist;
2 usage; 3 (status only) the daemon is not running; 78 a configuration error."""


def _check_list() -> str:
    from agent.checks.registry import CHECKS

    width = max(len(c.id) for c in CHECKS)
    rows = "\n".join(f"  {c.id:<{width}}  {c.title}" for c in CHECKS)
    return (
        "check ids (in the order they run):\n"
        f"{rows}\n\n"
        "Checks that need an assignment (the last persisted one, or assignment_file) are\n"
        "skipped without one. Exit code 0 when nothing failed, else 1."
    )


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help="the agent's YAML configuration file (default: %(default)s)",
    )


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="edge-agent", description=_DESCRIPTION, epilog=_EXIT_CODES, formatter_class=raw
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", title="commands")
    run = sub.add_parser(
        "run",
        help="run the daemon (what systemd starts)",
        description="Run the daemon in the foreground: SIGTERM stops it, SIGHUP reloads the "
        "configuration.",
    )
    _config_option(run)
    chk = sub.add_parser(
        "check",
        help="run the preflight checks locally, contacting neither controller nor broker",
        description="Run the preflight checks on this host now. Nothing is changed: the\n"
        "package index is not refreshed and no route is added.",
        epilog=_check_list(),
        formatter_class=raw,
    )
    _config_option(chk)
    chk.add_argument(
        "--json",
        action="store_true",
        help='print {"checks": [...], "summary": {...}} instead of a table (default: a table)',
    )
    chk.add_argument(
        "--only",
        nargs="+",
        metavar="ID",
        action="extend",
        help="run only these checks, repeatable (default: all of them; ids below)",
    )
    st = sub.add_parser(
        "status",
        help="say whether the daemon runs, and the host's last known phase",
        description="Report from the state directory whether the daemon runs (pid, since "
        "when) and the host's last known phase. Exit code 0 when the daemon runs, 3 when not.",
    )
    _config_option(st)
    st.add_argument(
        "--json",
        action="store_true",
        help="print the status object with running, pid and running_since (default: plain text)",
    )
    nc = sub.add_parser(
        "nodeconfig",
        help="print the nodeadm NodeConfig rendered from the assignment",
        description="Print the NodeConfig the agent would give nodeadm, from assignment_file "
        "or the last persisted assignment.",
    )
    _config_option(nc)
    nc.add_argument(
        "--show-secrets",
        action="store_true",
        help="print the SSM activation code as it is (default: redacted)",
    )
    sub.add_parser("version", help="print the agent's version")
    return p


def _config(path: str, cmd: str) -> Config:
    # Only the daemon needs its key and token files now; `check` reports them as a check.
    return load_config(Path(path), os.environ, readable=None if cmd != "run" else file_readable)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help()
        return EX_USAGE
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
    from agent.app import Agent

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


def _local_assignment(cfg: Config) -> tuple[Assignment | None, str | None]:
    """The assignment `check` and `nodeconfig` use: the file, else the last persisted one."""
    from agent.core.assignment import AssignmentError, parse_assignment
    from agent.state.store import StateStore

    if cfg.assignment_file is not None:
        from agent.assignments import load_assignment_file

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
    from agent.status_report import read_report, render

    uid = _uid(cfg) or None
    report = read_report(cfg.state_dir, uid=uid, mode=cfg.host.mode, now=time.time())
    if as_json:
        print(json.dumps(report.status, indent=1))
    else:
        print(render(report, cfg.state_dir))
    return report.exit_code


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
