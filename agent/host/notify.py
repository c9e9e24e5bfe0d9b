"""What the agent tells systemd, and how it hands systemd's variables to nobody else.

The sd_notify protocol (sd_notify(3)) is one ``AF_UNIX`` datagram of ``KEY=VALUE`` lines to
``$NOTIFY_SOCKET``; :class:`Notifier` speaks it without libsystemd and never raises because
systemd is absent or gone. The watchdog is kept honest by :class:`Heartbeats`: every periodic
loop stamps its own, and :func:`watchdog_loop` pings only while none is stale, so a wedged
loop gets the agent restarted instead of hidden behind a timer that still fires. Children get
an environment without our notify variables (:func:`strip_notify_env`), and log lines get the
journald priority prefix when stdout is the journal. Nothing here is process-global: each agent
in a process builds its own notifier and heartbeats.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "NOTIFY_ENV_KEYS",
    "Heartbeats",
    "Notifier",
    "stdout_is_journal",
    "strip_notify_env",
    "syslog_prefix",
    "watchdog_interval",
    "watchdog_loop",
]

NOTIFY_ENV_KEYS = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})

# systemd reads at most PIPE_BUF bytes per notification and drops a longer one whole
# (NOTIFY_BUFFER_MAX in src/core/manager.c), so an over-long STATUS could swallow READY=1.
_MAX_DATAGRAM = 4096
_MAX_STATUS_BYTES = 1024
_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


class Notifier:
    """Sends sd_notify messages over one datagram socket, kept open between calls.

    Built from the environment with :meth:`from_env`. A notifier without a usable address
    is disabled (:attr:`disabled_reason` says why) and every send returns ``False``. A failed
    send returns ``False`` too, closes the socket so the next call opens a fresh one, and is
    reported once per run of failures: through ``on_error`` and :attr:`last_error`.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_interval_s: float | None = None,
        on_error: Callable[[str], None] | None = None,
        send_timeout_s: float = 1.0,
    ) -> None:
        self._address, self.disabled_reason = _parse_address(address)
        self._shown = address or ""
        self.watchdog_interval_s = watchdog_interval_s
        self.last_error: str | None = None
        self._on_error = on_error
        # Sending blocks only while PID 1's receive queue is full (net.unix.max_dgram_qlen,
        # often 10). The bound keeps a wedged PID 1 from freezing the event loop for long,
        # and a READY=1 is still not dropped just because PID 1 was busy for a moment.
        self._send_timeout_s = send_timeout_s
        self._failing = False
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        pid: int,
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> Notifier:
        """The notifier systemd set up for process ``pid`` (normally ``os.getpid()``)."""
        return cls(
            env.get("NOTIFY_SOCKET"),
            watchdog_interval_s=watchdog_interval(env, pid),
            on_error=on_error,
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` fields as one datagram; ``True`` when it was handed over.

        Newlines in a value become spaces and NUL bytes are dropped: a newline would start a
        new assignment, and systemd ignores a message containing NUL.
        """
        return self.send_lines(*(f"{key}={_one_line(str(value))}" for key, value in fields.items()))

    def send_lines(self, *lines: str) -> bool:
        """Send preformatted ``KEY=VALUE`` lines as one datagram.

        ``ValueError`` for a malformed line (a bug in the caller, raised even when disabled);
        otherwise this never raises.
        """
        if not lines:
            raise ValueError("sd_notify needs at least one KEY=VALUE line")
        for line in lines:
            key, sep, _ = line.partition("=")
            if not sep or not _KEY.fullmatch(key) or "\n" in line or "\0" in line:
                raise ValueError(f"not a single KEY=VALUE line: {line!r}")
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        if len(payload) > _MAX_DATAGRAM:
            self._report(f"sd_notify message of {len(payload)} bytes exceeds {_MAX_DATAGRAM}")
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(self._send_timeout_s)
            # sendto rather than connect: the path is resolved on every call, so a socket
            # that systemd re-created (daemon-reexec) is found again without reconnecting.
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            self.close()
            self._report(f"sd_notify to {self._shown}: {exc}")
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_clip(_one_line(status))}")
        return self.send_lines(*lines)

    def status(self, text: str) -> bool:
        return self.send_lines(f"STATUS={_clip(_one_line(text))}")

    def stopping(self) -> bool:
        return self.send_lines("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send_lines("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> bool:
        """Ask for ``usec`` more microseconds in the current start or stop phase."""
        if usec <= 0:
            raise ValueError(f"EXTEND_TIMEOUT_USEC must be positive, got {usec}")
        return self.send_lines(f"EXTEND_TIMEOUT_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _report(self, message: str) -> None:
        self.last_error = message
        if self._failing:
            return
        self._failing = True
        if self._on_error is not None:
            self._on_error(message)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or ``None`` for no pings.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; any other process
    (a child that inherited the variables) must not ping.
    """
    usec = _positive_int(env.get("WATCHDOG_USEC", ""))
    if usec is None:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and _positive_int(owner) != pid:
        return None
    return usec / 2_000_000


@dataclass
class _Beat:
    max_age_s: float
    last_s: float


class Heartbeats:
    """Last-seen times of the agent's periodic loops, for the watchdog to judge.

    Times come from the caller (one monotonic clock for stamps and checks). A loop that was
    registered but never stamped counts from its registration, so a loop stuck before its
    first round is caught too.
    """

    def __init__(self) -> None:
        self._beats: dict[str, _Beat] = {}

    def register(self, name: str, max_age_s: float, now: float) -> None:
        """Watch ``name`` from ``now``: stale once ``max_age_s`` pass without a stamp."""
        if max_age_s <= 0:
            raise ValueError(f"heartbeat {name!r}: max age must be positive, got {max_age_s}")
        self._beats[name] = _Beat(max_age_s=max_age_s, last_s=now)

    def stamp(self, name: str, now: float) -> None:
        """Record that ``name`` completed a round; ``KeyError`` for a name never registered."""
        self._beats[name].last_s = now

    def unregister(self, name: str) -> None:
        """Stop watching ``name`` (a loop that ended on purpose); unknown names are ignored."""
        self._beats.pop(name, None)

    def stale(self, now: float) -> list[str]:
        """Sorted names whose last stamp is older than their max age."""
        return sorted(n for n, b in self._beats.items() if now - b.last_s > b.max_age_s)

    def __contains__(self, name: object) -> bool:
        return name in self._beats


async def watchdog_loop(
    notifier: Notifier,
    heartbeats: Heartbeats,
    interval_s: float,
    clock: Callable[[], float],
    on_stale: Callable[[list[str]], None] | None = None,
) -> None:
    """Ping ``WATCHDOG=1`` every ``interval_s`` while no heartbeat is stale; runs until cancelled.

    It runs on the event loop it guards, so a blocked loop stops the pings by itself. When a
    heartbeat goes stale the pings stop, so systemd restarts the agent after ``WatchdogSec``;
    ``on_stale`` hears the names once per stale episode, to log them before that happens. A
    loop that recovers in time (stamps again) resumes the pings.
    """
    if interval_s <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval_s}")
    stalled = False
    while True:
        stale = heartbeats.stale(clock())
        if not stale:
            stalled = False
            notifier.watchdog()
        elif not stalled:
            stalled = True
            if on_stale is not None:
                on_stale(stale)
        await asyncio.sleep(interval_s)


def strip_notify_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child process: without ``NOTIFY_SOCKET`` and ``WATCHDOG_*``.

    A child (nodeadm, or a tool it starts) must not send READY or WATCHDOG in the agent's
    name, nor decide from ``WATCHDOG_USEC`` that it is being watched.
    """
    return {k: v for k, v in env.items() if k not in NOTIFY_ENV_KEYS}


def stdout_is_journal(env: Mapping[str, str], fd_stat: os.stat_result) -> bool:
    """Whether stdout (``fd_stat``, from ``os.fstat(1)``) is the stream ``$JOURNAL_STREAM`` names.

    systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` for a service whose output goes to journald;
    comparing with stdout itself keeps the answer right after a redirect or in a child.
    """
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        return int(dev) == fd_stat.st_dev and int(ino) == fd_stat.st_ino
    except ValueError:
        return False


# Syslog priorities (RFC 5424): journald strips a leading "<N>" and files the line under it,
# which makes `journalctl -p err` work. Names are structlog's and the stdlib's.
_PRIORITY = MappingProxyType(
    {
        "critical": 2,
        "exception": 3,
        "error": 3,
        "warning": 4,
        "warn": 4,
        "notice": 5,
        "info": 6,
        "debug": 7,
    }
)


def syslog_prefix(level: str) -> str:
    """``<3>``, ``<4>``, ``<6>``, ``<7>`` … for a log level name; ``<6>`` for one not known.

    A log line must never fail on an odd level name, so unknown names are filed as info.
    """
    return f"<{_PRIORITY.get(level.lower(), 6)}>"


def _parse_address(address: str | None) -> tuple[str | None, str | None]:
    """The ``sendto`` address for ``$NOTIFY_SOCKET`` and ``None``, or ``None`` and why not."""
    if not address:
        return None, "NOTIFY_SOCKET is not set"
    if address.startswith("/"):
        return address, None
    if address.startswith("@") and len(address) > 1:
        # A leading "@" names a socket in the abstract namespace: on the wire a NUL byte.
        return "\0" + address[1:], None
    # systemd >= 254 may hand out vsock:CID:PORT (for VMs); nothing on an edge host needs it.
    return None, f"unsupported NOTIFY_SOCKET address {address!r}: only /path and @abstract"


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\0", "")


def _clip(text: str) -> str:
    data = text.encode()
    if len(data) <= _MAX_STATUS_BYTES:
        return text
    # Cut on a character boundary, and say that it was cut.
    return data[: _MAX_STATUS_BYTES - 3].decode(errors="ignore") + "..."


def _positive_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None
