"""What a SIGHUP reload changes: the config's sections compared, each sorted live or not.

A live section is pushed to the part of the agent that owns it (the command verifier, the
nodeadm runner, the lifecycle's policy, the log level) and takes effect at once. The others
are wired into long-lived connections or paths (the broker and controller links, the state
directory, the host root and identity, the log's output format): a change there is reported
as needing a restart, never applied half-way. Pure: the daemon does the pushing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

from agent.core.config import CommandsConfig, Config

# Sections the running agent takes on a reload. Reading `Config.<section>` at each use is
# enough for checks, kubernetes, diagnostics, network and programs; the daemon pushes the
# rest (commands, nodeadm, join, health, log.level, assignment_file) to their owners.
LIVE: Final = frozenset(
    {
        "assignment_file",
        "checks",
        "commands",
        "diagnostics",
        "health",
        "join",
        "kubernetes",
        "log.level",
        "network",
        "nodeadm",
        "programs",
    }
)
NEEDS_RESTART: Final = frozenset(
    {
        "commands.max_bytes",
        "commands.max_skew_s",
        "commands.max_ttl_s",
        "controller",
        "host",
        "log.format",
        "metrics",
        "mqtt",
        "state_dir",
    }
)
# Command limits fixed at start: max_skew_s sizes the ledger and the clock's saves; max_bytes
# and max_ttl_s are also the MQTT session's maximum packet size and expiry, which the broker
# takes only in a CONNECT (raised live, the broker would still drop the larger commands).
_COMMANDS_AT_START: Final = ("max_bytes", "max_skew_s", "max_ttl_s")
# Where the config came from is not a setting.
_NOT_SETTINGS: Final = frozenset({"source"})


@dataclass(frozen=True)
class ConfigChange:
    """The sections a reload changed: ``live`` are applied, ``needs_restart`` are not."""

    live: tuple[str, ...]
    needs_restart: tuple[str, ...]

    def changed(self, section: str) -> bool:
        return section in self.live or section in self.needs_restart


def _sections(old: Config, new: Config) -> list[str]:
    changed: list[str] = []
    for f in fields(Config):
        if f.name in _NOT_SETTINGS:
            continue
        if f.name == "log":
            # The level is a holder every logger reads; the format is fixed when the
            # logger is built, so the two halves of one section differ.
            changed += [
                f"log.{k}"
                for k in ("level", "format")
                if getattr(old.log, k) != getattr(new.log, k)
            ]
        elif f.name == "commands":
            # The ledger keeps a command's id for max_skew_s past its expiry and the clock
            # is saved at a period derived from it: raising it live would let the ledger
            # forget ids the envelope check still accepts, i.e. run a replay twice.
            changed += [
                f"commands.{k}"
                for k in _COMMANDS_AT_START
                if getattr(old.commands, k) != getattr(new.commands, k)
            ]
            if any(
                getattr(old.commands, k.name) != getattr(new.commands, k.name)
                for k in fields(CommandsConfig)
                if k.name not in _COMMANDS_AT_START
            ):
                changed.append("commands")
        elif getattr(old, f.name) != getattr(new, f.name):
            changed.append(f.name)
    return changed


def config_change(old: Config, new: Config) -> ConfigChange:
    changed = _sections(old, new)
    unknown = [s for s in changed if s not in LIVE and s not in NEEDS_RESTART]
    # A section added to Config but not sorted here is treated as needing a restart:
    # applying it half-way would be worse than asking for one.
    return ConfigChange(
        live=tuple(s for s in changed if s in LIVE),
        needs_restart=tuple(s for s in changed if s in NEEDS_RESTART or s in unknown),
    )


__all__ = ["LIVE", "NEEDS_RESTART", "ConfigChange", "config_change"]
