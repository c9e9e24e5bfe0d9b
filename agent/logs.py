"""Logging: structlog loggers built per agent, with secrets redacted before rendering.

We never call ``structlog.configure``: that is process-wide state, and the fleet benchmark runs
a thousand agents in one process, each with its own level (``set-log-level`` changes it live)
and its own secrets. Output is JSON lines under systemd (with a ``<N>`` syslog prefix when
stdout is the journal, so ``journalctl -p err`` works) and a readable console on a terminal.
Tracebacks are rendered without local variables: structlog's default dict tracebacks dump
frame locals, which would leak activation codes and tokens. What counts as a secret, and
how it is hidden, is `agent.core.redact`'s rule, the same for every surface.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Protocol, TextIO, cast

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from agent.core.redact import REDACTED, is_secret_key, scrub, usable_secrets

__all__ = [
    "LEVELS",
    "LevelHolder",
    "Log",
    "make_logger",
    "make_redactor",
    "stdout_is_journal",
]

LEVELS = MappingProxyType({"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50})
# How many top-level keys a redactor remembers the secrecy of (ours are a few dozen).
_KEYS_KEPT = 512
_SYSLOG = MappingProxyType(
    {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>", "critical": "<2>"}
)


class LevelHolder:
    """The live log level of one agent."""

    def __init__(self, level: str = "info") -> None:
        self.level = level

    def set(self, level: str) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}: one of {', '.join(LEVELS)}")
        self.level = level

    def enabled(self, level: str) -> bool:
        return LEVELS.get(level, 20) >= LEVELS[self.level]


class _Redactor:
    """The structlog processor `make_redactor` returns.

    Every line passes here, so what rarely changes from line to line is kept: the secrets as
    last sorted out, and whether each top-level key (named in our code) is secret-named.
    Per logger, never per process: two agents in one process hold different secrets.
    """

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        self._secrets = secrets
        self._given: list[str] | None = None
        self._known = usable_secrets(())
        self._secret_key: dict[str, bool] = {}

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        given = list(self._secrets())
        if given != self._given:
            self._given, self._known = given, usable_secrets(given)
        for key, value in event.items():
            # exc_info is the exception itself, left for the console renderer to draw.
            if key == "exc_info":
                continue
            hidden = self._secret_key.get(key)
            if hidden is None:
                hidden = is_secret_key(key)
                if len(self._secret_key) < _KEYS_KEPT:
                    self._secret_key[key] = hidden
            event[key] = REDACTED if hidden else scrub(value, self._known)
        return event


def make_redactor(secrets: Callable[[], Iterable[str]]) -> Processor:
    """A structlog processor hiding secrets by `agent.core.redact`'s rules, at any depth.

    The secrets are asked for on every line: the activation code and the host token arrive
    after the logger is built, and the registration token is rotated.
    """
    return _Redactor(secrets)


def _level_filter(holder: LevelHolder) -> Processor:
    def filt(_logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        if not holder.enabled(name if name != "warn" else "warning"):
            raise structlog.DropEvent
        return event

    return filt


class _Journal:
    """Prefix each JSON line with its syslog priority when stdout is the journal."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        level = str(event.get("level", "info"))
        return _SYSLOG.get(level, "<6>") + str(self.renderer(logger, name, event))


def stdout_is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    env = env if env is not None else os.environ
    spec = env.get("JOURNAL_STREAM", "")
    if ":" not in spec:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = spec.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class Log(Protocol):
    """The structured logger the agent's parts are handed (what `make_logger` returns)."""

    def debug(self, event: str, /, **kw: object) -> object: ...
    def info(self, event: str, /, **kw: object) -> object: ...
    def warning(self, event: str, /, **kw: object) -> object: ...
    def error(self, event: str, /, **kw: object) -> object: ...


def make_logger(
    *,
    level: LevelHolder,
    fmt: str = "auto",
    stream: TextIO | None = None,
    secrets: Callable[[], Iterable[str]] = tuple,
    **bind: object,
) -> Log:
    """One agent's logger; ``fmt`` is ``auto``, ``json`` or ``console``."""
    out = stream if stream is not None else sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    console = fmt == "console" or (fmt == "auto" and tty)
    processors: list[Processor] = [
        _level_filter(level),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    if console:
        processors.append(make_redactor(secrets))
        processors.append(structlog.dev.ConsoleRenderer(colors=tty, timestamp_key="ts"))
    else:
        # Render the traceback first so the redactor also sees the exception's text.
        processors.append(ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
        processors.append(make_redactor(secrets))
        renderer: Processor = structlog.processors.JSONRenderer(sort_keys=False)
        processors.append(_Journal(renderer) if stdout_is_journal(out) else renderer)
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=processors,
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    ).bind(**bind)
    return cast("Log", logger)
