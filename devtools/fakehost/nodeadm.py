"""Fake `nodeadm`: a faithful stand-in for AWS's EKS Hybrid Nodes CLI, run as a real process.

This module is the command line: flaggy's grammar (short and long flags, `--flag=value`,
`-flag` and `--flag` alike, Go durations, required flags and positionals), its help and usage
errors on stderr with exit 2, `version`/`--version` on stdout, and the bookkeeping of a run
(call log, `NODEADM_FAKE_LOG`, a pid file while running). What each subcommand does lives in
`nodeadm_flows`. The host root is `NODEADM_FAKE_ROOT` (required); nothing outside it is
touched except the `-c` file it reads and the `NODEADM_FAKE_LOG` file it appends to.

Knobs (environment): NODEADM_FAKE_DELAY (seconds per simulated step, default 0.05);
NODEADM_FAKE_FAIL (comma list of `sub` or `sub:mode`, modes in `nodeadm_run.FAIL_MODES`);
NODEADM_FAKE_FAIL_TIMES (fail only the first N runs of that subcommand); NODEADM_FAKE_HANG
(comma list of subcommands that stall, with a child process, until their deadline or forever)
and NODEADM_FAKE_HANG_TIMES; NODEADM_FAKE_VERSION (default v1.0.20); NODEADM_FAKE_SUPPORTED
(default `1.30-1.36`; items `X.Y`, `X.Y.Z`, `X.Y-X.Z`); NODEADM_FAKE_REMOTE_NODE_CIDRS (init's
node-ip-validation); NODEADM_FAKE_STALE_AFTER_S (install fails like a stale index when the
package lists are older); NODEADM_FAKE_REQUIRE_ROOT=1; NODEADM_FAKE_LOG (JSON line per run);
NODEADM_FAKE_ACTIVE_NODE_WAIT_S (debug's wait for a node whose kubelet is not active, 300).
Where each behaviour comes from in the real source: README.md here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.fakehost import layout, nodeadm_flows
from devtools.fakehost.nodeadm_flows import Invocation
from devtools.fakehost.nodeadm_run import (
    CommandError,
    Knobs,
    Log,
    SilentFailure,
    Usage,
    parse_duration,
)


@dataclass(frozen=True)
class Flag:
    short: str
    long: str
    kind: str  # string | bool | duration | slice
    help: str
    default: Any = None


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    flags: tuple[Flag, ...]
    positionals: tuple[tuple[str, str], ...] = ()


_CONFIG = Flag(
    "c",
    "config-source",
    "string",
    "Source of node configuration. The format is a URI with supported schemes: [file, imds].",
)
_MANIFEST = Flag(
    "m",
    "manifest-override",
    "string",
    "URI to a manifest file containing custom artifact URLs. Supports file:// for local files "
    "and https:// for remote files.",
)
_PRIVATE = Flag("", "private-mode", "bool", "Install without OS package repositories (air-gapped).")
_TIMEOUT = Flag(
    "t",
    "timeout",
    "duration",
    "Maximum command duration. Input follows duration format. Example: 1h23s",
    "20m",
)
_SKIP = Flag("s", "skip", "slice", "Phases or validations to skip, comma separated.")
_VERSION_ARG = ("KUBERNETES_VERSION", "The major[.minor[.patch]] version of Kubernetes.")

COMMANDS: dict[str, Command] = {
    "install": Command(
        "install",
        "Install components required to join an EKS cluster",
        (
            Flag("p", "credential-provider", "string", "Credential process to install. Allowed values: [ssm, iam-ra]."),
            Flag("s", "containerd-source", "string", "Source for containerd artifact. Allowed values: [none, distro, docker].", "distro"),
            Flag("r", "region", "string", "AWS region for downloading regional artifacts.", "us-west-2"),
            _TIMEOUT,
            _MANIFEST,
            _PRIVATE,
        ),
        (_VERSION_ARG,),
    ),
    "init": Command(
        "init",
        "Initialize this instance as a node in an EKS cluster",
        (_CONFIG, _SKIP, Flag("d", "daemon", "slice", "Specify one or more of `containerd` and `kubelet`."), _MANIFEST, _PRIVATE),
    ),
    "upgrade": Command(
        "upgrade",
        "Upgrade components installed using the install sub-command",
        (_CONFIG, _TIMEOUT, _SKIP, _MANIFEST, _PRIVATE),
        (_VERSION_ARG,),
    ),
    "uninstall": Command(
        "uninstall",
        "Uninstall components installed using the install sub-command",
        (
            Flag("s", "skip", "slice", "Phases of uninstall to skip. Allowed values: [pod-validation, node-validation]."),
            Flag("f", "force", "bool", "Also remove CNI state (/var/lib/cni, /etc/cni/net.d)."),
        ),
    ),
    "debug": Command(
        "debug",
        "Debug the node registration process",
        (_CONFIG, Flag("", "no-color", "bool", "If set, suppresses color output.")),
    ),
    "config": Command("config check", "Verify configuration", (_CONFIG,)),
    "sync-artifacts": Command(
        "sync-artifacts",
        "Sync EKS hybrid node dependencies directly to S3 for private installation",
        (
            Flag("", "s3-bucket", "string", "S3 bucket to upload artifacts to."),
            Flag("", "s3-prefix", "string", "Key prefix for uploaded artifacts."),
            Flag("a", "arch", "string", "Architecture of the artifacts.", "amd64"),
            Flag("r", "region", "string", "AWS region of the bucket.", "us-west-2"),
            Flag("t", "timeout", "duration", "Maximum command duration.", "30m"),
        ),
        (_VERSION_ARG,),
    ),
}  # fmt: skip


class Help(Exception):
    """-h/--help: help on stderr, exit 0 (flaggy's default)."""

    def __init__(self, command: Command | None) -> None:
        super().__init__()
        self.command = command


class ParseError(Usage):
    def __init__(self, command: Command | None, message: str) -> None:
        super().__init__(message)
        self.command = command


def help_text(command: Command | None) -> str:
    builtin = [
        ("", "version", "Displays the program version string."),
        ("h", "help", "Displays help with available flag, subcommand, and positional value parameters."),
    ]  # fmt: skip
    if command is None:
        lines = [
            "nodeadm - Initialize and manage EKS Hybrid Nodes",
            "",
            "  Usage:",
            "    nodeadm [install | init | upgrade | uninstall | debug | config | sync-artifacts]",
            "",
            "  Subcommands: ",
        ]
        lines += [f"    {c.name.split()[0]:<16} {c.description}" for c in COMMANDS.values()]
        flags = [*builtin, ("d", "development", "Enable development mode for logging.")]
    else:
        lines = [
            f"{command.name} - {command.description}",
            "",
            "  Usage:",
            f"    {command.name} " + " ".join(f"[{n}]" for n, _ in command.positionals),
        ]
        if command.positionals:
            lines += ["", "  Positional Variables: "]
            lines += [f"    {n}   {h} (Required)" for n, h in command.positionals]
        flags = builtin + [(f.short, f.long, f.help) for f in command.flags]
    lines += ["  Flags: "]
    width = max(len(long) for _, long, _ in flags) + 2
    for short, long, text in flags:
        prefix = f"-{short}" if short else "  "
        lines.append(f"    {prefix} --{long:<{width}}{text}")
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> Invocation | None:
    """Parse a command line; None means `version` was asked for."""
    development = False
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        name = argv[index].lstrip("-").partition("=")[0]
        if name == "version":
            return None
        if name in ("h", "help"):
            raise Help(None)
        if name not in ("d", "development"):
            raise ParseError(None, f"Unknown arguments supplied: {argv[index]}")
        development = True
        index += 1
    if index == len(argv):
        raise ParseError(None, "Please specify a subcommand.")
    word = argv[index]
    index += 1
    if word == "version":
        return None
    if word == "config":
        if index == len(argv) or argv[index] != "check":
            raise ParseError(None, "config requires a subcommand: check")
        index += 1
    if word not in COMMANDS:
        raise ParseError(None, f"Unexpected argument: {word}")
    command = COMMANDS[word]
    values: dict[str, Any] = {f.long: f.default for f in command.flags}
    positionals: list[str] = []
    rest = argv[index:]
    position = 0
    while position < len(rest):
        token = rest[position]
        position += 1
        if token == "--":
            positionals += rest[position:]
            break
        if not token.startswith("-") or token == "-":
            positionals.append(token)
            continue
        name, has_value, value = token.lstrip("-").partition("=")
        if name == "version":
            return None
        if name in ("h", "help"):
            raise Help(command)
        flag = next((f for f in command.flags if name in (f.short, f.long) and name), None)
        if flag is None:
            if name in ("d", "development"):
                development = True
                continue
            raise ParseError(command, f"Unknown arguments supplied: {token}")
        if flag.kind == "bool":
            values[flag.long] = value.lower() in ("true", "1", "t") if has_value else True
            continue
        if not has_value:
            if position == len(rest):
                raise ParseError(
                    command, f"Expected a following arg for flag {token}, but it did not exist."
                )
            value = rest[position]
            position += 1
        if flag.kind == "duration":
            try:
                parse_duration(value)
            except ValueError as exc:
                raise ParseError(command, f"Failed to parse flags: {exc}") from None
        if flag.kind == "slice" and values.get(flag.long):
            value = f"{values[flag.long]},{value}"
        values[flag.long] = value
    for number, (name, _) in enumerate(command.positionals, start=1):
        if len(positionals) < number:
            raise ParseError(
                command, f"Required positional variable {name} not found at position {number}"
            )
    if len(positionals) > len(command.positionals):
        raise ParseError(command, f"Unexpected argument: {positionals[len(command.positionals)]}")
    return Invocation(word, values, positionals, development)


def main(argv: list[str]) -> int:
    root = layout.root_from_env("NODEADM_FAKE_ROOT")
    layout.record_call(root, "nodeadm", argv)
    knobs = Knobs.from_env(os.environ, root)
    knobs.log_invocation(argv)
    try:
        invocation = parse(argv)
    except Help as help_request:
        sys.stderr.write(help_text(help_request.command))
        return 0
    except ParseError as error:
        sys.stderr.write(f"{help_text(error.command)}\n{error}\n")
        return 2
    if invocation is None:
        print(f"Version: {knobs.version}", flush=True)
        return 0
    pid_file = layout.under(root, f"{layout.RUN_DIR}/nodeadm-{invocation.sub}.pid")
    layout.write_file(pid_file, f"{os.getpid()}\n")
    log = Log(development=invocation.development)
    try:
        return nodeadm_flows.run(invocation, knobs, log)
    except Usage as error:
        sys.stderr.write(f"{help_text(COMMANDS[invocation.sub])}\n{error}\n")
        return 2
    except SilentFailure:
        return 1
    except CommandError as error:
        log.fatal(str(error))
        return 1
    finally:
        # Only a normal exit removes it: a killed nodeadm leaves its pid file behind.
        pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
