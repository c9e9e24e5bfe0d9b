"""``config.files``: the token, key and certificate files the config names can be read.

The config parser leaves these alone for ``edge-agent check`` (a local check never sends the
registration token or opens a TLS connection), so a host being prepared still gets every
other verdict; this check then says which files are missing or unreadable and what to do.
The daemon itself refuses to start without them. Every ``*_file`` key is covered, found
from the config's fields, so a new key needs no change here; ``assignment_file`` is left
to the assignment loading that already reports it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.checks.base import Check, CheckContext, CheckVerdict, failed, passed
from agent.core.config import Config


def configured_files(cfg: Config) -> list[tuple[str, Path]]:
    """(key path, file) for every ``*_file`` set in the config's sections."""
    found = []
    for section in dataclasses.fields(cfg):
        value: object = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            path = getattr(value, f.name)
            if f.name.endswith("_file") and isinstance(path, Path):
                found.append((f"{section.name}.{f.name}", path))
    return found


def _unreadable(path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


async def check_config_files(ctx: CheckContext) -> CheckVerdict:
    files = configured_files(ctx.config)
    problems = []
    for key, path in files:
        why = _unreadable(path)
        if why is not None:
            problems.append(f"{key} {path}: {why}")
    details = {"files": {key: str(path) for key, path in files}}
    if problems:
        return failed("; ".join(problems), details=details | {"problems": problems})
    return passed(f"{len(files)} configured files are readable", details)


CHECK = Check(
    id="config.files",
    title="The agent's token, key and certificate files are readable",
    remedy="put each named file in place (readable by root: the agent runs as root), e.g. the "
    "registration token the controller issued and the controller's signing public key, or "
    "remove the key from the config",
    timeout_s=5.0,
    needs_assignment=False,
    run=check_config_files,
)
