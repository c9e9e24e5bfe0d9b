"""Logging: structlog loggers built per agent, with secrets redacted before rendering.

We never call ``structlog.configure``: that is process-wide state, and the fleet benchmark runs
a thousand agents in one process, each with its own level (``set-log-level`` changes it live)
and its own secrets. Output is JSON lines under systemd (with a ``<N>`` syslog prefix when
stdout is the journal, so ``journalctl -p err`` works) and a readable console on a terminal.
Tracebacks are rendered without local variables: structlog's default dict tracebacks dump
frame locals, which would leak activation codes and tokens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, MutableMapping
from types import MappingProxyType
from typing import Any, Protocol, TextIO, cast

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

LEVELS = MappingProxyType({"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50})
_SYSLOG = MappingProxyType(
    {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>", "critical": "<2>"}
)
SECRET_KEYS = frozenset(
    {
        "activation_code",
        "activationcode",
        "token",
        "host_token",
        "registration_token",
        "password",
        "private_key",
        "authorization",
        "secret",
    }
)
REDACTED = "<redacted>"


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


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every occurrence of a known secret inside strings, lists and dicts."""
    if isinstance(value, str):
        for s in secrets:
            if s and s in value:
                value = value.replace(s, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_key(k) else scrub(v, secrets)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SECRET_KEYS


def make_redactor(secrets: Callable[[], Iterable[str]]) -> Callable[..., Any]:
    """A structlog processor masking secret-named keys and known secret values anywhere."""

    def redact(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        known = [s for s in secrets() if s and len(s) >= 6]
        for key in list(event):
            if _secret_key(key):
                event[key] = REDACTED
            elif known:
                event[key] = scrub(event[key], known)
        return event

    return redact


def _level_filter(holder: LevelHolder) -> Callable[..., Any]:
    def filt(_logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not holder.enabled(name if name != "warn" else "warning"):
            raise structlog.DropEvent
        return event

    return filt


class _Journal:
    """Prefix each JSON line with its syslog priority when stdout is the journal."""

    def __init__(self, renderer: Callable[..., Any]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        level = str(event.get("level", "info"))
        return _SYSLOG.get(level, "<6>") + str(self.renderer(logger, name, event))


def stdout_is_journal(stream: TextIO, env: MutableMapping[str, str] | None = None) -> bool:
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
    **bind: Any,
) -> Log:
    """One agent's logger; ``fmt`` is ``auto``, ``json`` or ``console``."""
    out = stream if stream is not None else sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    console = fmt == "console" or (fmt == "auto" and tty)
    processors: list[Any] = [
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
        renderer: Any = structlog.processors.JSONRenderer(sort_keys=False)
        processors.append(_Journal(renderer) if stdout_is_journal(out) else renderer)
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=processors,
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    ).bind(**bind)
    return cast("Log", logger)
