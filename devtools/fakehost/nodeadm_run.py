"""One run of the fake nodeadm: its zap-style log, its behaviour knobs, its deadline, its errors.

The knobs come from the environment (`NODEADM_FAKE_*`, see `Knobs.from_env`); failure and
hang counters live in `<root>/run/fakehost/fail-counts.json` so "fail twice, then succeed"
spans separate processes. `Clock` turns nodeadm's `--timeout` into a deadline that simulated
steps sleep against, failing as Go's context does: "context deadline exceeded".
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from devtools.fakehost import layout

DEFAULT_VERSION = "v1.0.20"
DEFAULT_DELAY_S = 0.05
# Latest patch per minor in the fake manifest (nodeadm resolves major.minor to these).
LATEST_PATCH = {
    "1.28": "1.28.15",
    "1.29": "1.29.14",
    "1.30": "1.30.11",
    "1.31": "1.31.7",
    "1.32": "1.32.3",
    "1.33": "1.33.1",
    "1.34": "1.34.9",
    "1.35": "1.35.2",
    "1.36": "1.36.0",
}
DEFAULT_SUPPORTED = "1.30-1.36"
CHILD_TTL_S = 900
FAIL_MODES = (
    "generic",
    "stale_index",
    "ssm_activation_expired",
    "ssm_activation_invalid",
    "apt_lock",
    "checksum",
    "download",
    "kubelet_inactive",
    "access_denied",
    "not_drained",
)


class CommandError(Exception):
    """A command failed: logged as the fatal "Command failed" line, exit 1."""


class DeadlineExceeded(CommandError):
    """The `--timeout` context expired during a step."""


class SilentFailure(Exception):
    """A failure already reported on stdout (debug): exit 1 without a fatal line."""


class Usage(Exception):
    """flaggy's usage error: help and this message on stderr, exit 2."""


def timestamp() -> str:
    """zap's ISO-8601 UTC time with milliseconds and a Z."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class Log:
    """zap's production JSON encoder (or its development console encoder) on stderr."""

    def __init__(self, *, development: bool = False, stream: TextIO | None = None) -> None:
        self.development = development
        self.stream = stream or sys.stderr
        self.component = "nodeadm/main.go"

    def _emit(self, level: str, msg: str, fields: Mapping[str, Any]) -> None:
        # The caller field names the Go file of the phase and the Python line that logged.
        caller = f"{self.component}:{sys._getframe(2).f_lineno}"
        if self.development:
            extra = f"\t{json.dumps(dict(fields))}" if fields else ""
            line = f"{timestamp()}\t{level.upper()}\t{caller}\t{msg}{extra}"
        else:
            record = {"level": level, "ts": timestamp(), "caller": caller, "msg": msg, **fields}
            line = json.dumps(record, separators=(",", ":"))
        self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, msg: str, **fields: Any) -> None:
        self._emit("info", msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self._emit("warn", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._emit("error", msg, fields)

    def fatal(self, error: str) -> None:
        self.component = "nodeadm/main.go"
        self._emit("fatal", "Command failed", {"error": error})


class Clock:
    """A Go context deadline for simulated work; None means no deadline."""

    def __init__(self, timeout_s: float | None) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def sleep(self, seconds: float, what: str) -> None:
        """Sleep `seconds` of simulated work, or fail as the context would if it ends first."""
        if seconds > self.remaining():
            time.sleep(max(self.remaining(), 0.0))
            raise DeadlineExceeded(f"{what}: context deadline exceeded")
        time.sleep(seconds)


@dataclass
class Knobs:
    """The fake's behaviour, from the environment."""

    root: Path
    delay: float = DEFAULT_DELAY_S
    fail: dict[str, str] = field(default_factory=dict)
    fail_times: int | None = None
    hang: set[str] = field(default_factory=set)
    hang_times: int | None = None
    version: str = DEFAULT_VERSION
    supported: dict[str, str] = field(default_factory=dict)
    remote_node_cidrs: list[ipaddress.IPv4Network] | None = None
    require_root: bool = False
    log_path: Path | None = None
    stale_after_s: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], root: Path) -> Knobs:
        """NODEADM_FAKE_{DELAY,FAIL,FAIL_TIMES,HANG,HANG_TIMES,VERSION,SUPPORTED,
        REMOTE_NODE_CIDRS,REQUIRE_ROOT,LOG,STALE_AFTER_S}."""
        fail: dict[str, str] = {}
        for item in _csv(env.get("NODEADM_FAKE_FAIL", "")):
            sub, _, mode = item.partition(":")
            if (mode or "generic") not in FAIL_MODES:
                # A typo must not turn an intended failure into a silent success.
                print(f"fake nodeadm: NODEADM_FAKE_FAIL: unknown mode {mode!r}", file=sys.stderr)
                raise SystemExit(70)
            fail[_sub_key(sub)] = mode or "generic"
        cidrs = env.get("NODEADM_FAKE_REMOTE_NODE_CIDRS")
        return cls(
            root=root,
            delay=float(env.get("NODEADM_FAKE_DELAY", DEFAULT_DELAY_S)),
            fail=fail,
            fail_times=_int_or_none(env.get("NODEADM_FAKE_FAIL_TIMES")),
            hang={_sub_key(s) for s in _csv(env.get("NODEADM_FAKE_HANG", ""))},
            hang_times=_int_or_none(env.get("NODEADM_FAKE_HANG_TIMES")),
            version=env.get("NODEADM_FAKE_VERSION") or DEFAULT_VERSION,
            supported=parse_supported(env.get("NODEADM_FAKE_SUPPORTED") or DEFAULT_SUPPORTED),
            remote_node_cidrs=None
            if cidrs is None
            else [ipaddress.IPv4Network(c, strict=False) for c in _csv(cidrs)],
            require_root=env.get("NODEADM_FAKE_REQUIRE_ROOT") == "1",
            log_path=Path(env["NODEADM_FAKE_LOG"]) if env.get("NODEADM_FAKE_LOG") else None,
            stale_after_s=_float_or_none(env.get("NODEADM_FAKE_STALE_AFTER_S")),
        )

    def failure(self, sub: str) -> str | None:
        """The failure mode for this run of `sub`, counting runs when FAIL_TIMES is set."""
        mode = self.fail.get(sub)
        if mode is None:
            return None
        if self.fail_times is None:
            return mode
        return mode if self._count(f"fail:{sub}") < self.fail_times else None

    def hangs(self, sub: str) -> bool:
        if sub not in self.hang:
            return False
        return self.hang_times is None or self._count(f"hang:{sub}") < self.hang_times

    def _count(self, key: str) -> int:
        """Return how many earlier runs counted `key`, and count this one (under a file lock)."""
        path = layout.under(self.root, layout.FAIL_COUNTS_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.with_suffix(".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            counts = json.loads(path.read_text()) if path.exists() else {}
            seen = int(counts.get(key, 0))
            counts[key] = seen + 1
            path.write_text(json.dumps(counts, sort_keys=True) + "\n")
        return seen

    def log_invocation(self, argv: list[str]) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as out:
            out.write(json.dumps({"argv": argv, "pid": os.getpid(), "ts": time.time()}) + "\n")

    def version_tuple(self) -> tuple[int, ...]:
        numbers = re.findall(r"\d+", self.version)
        return tuple(int(n) for n in numbers[:3])


def parse_supported(text: str) -> dict[str, str]:
    """`1.30-1.36`, `1.31,1.32.5`: minor -> latest patch (explicit, from the table, or .0)."""
    supported: dict[str, str] = {}
    for item in _csv(text):
        if "-" in item:
            low, _, high = item.partition("-")
            major, low_minor = low.split(".")[:2]
            for minor in range(int(low_minor), int(high.split(".")[1]) + 1):
                key = f"{major}.{minor}"
                supported[key] = LATEST_PATCH.get(key, f"{key}.0")
        else:
            parts = item.split(".")
            key = ".".join(parts[:2])
            supported[key] = item if len(parts) == 3 else LATEST_PATCH.get(key, f"{key}.0")
    return supported


def resolve_version(wanted: str, supported: Mapping[str, str]) -> str:
    """nodeadm's manifest lookup: major.minor -> latest patch; a full version must exist."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", wanted)
    if match is None:
        raise CommandError("invalid semantic version")
    key = f"{match[1]}.{match[2]}"
    latest = supported.get(key)
    if match[3] is None:
        if latest is None:
            raise CommandError("input semver did not match with any available releases")
        return latest
    if latest is None or int(match[3]) > int(latest.split(".")[2]):
        raise CommandError(
            "input semver did not match with available releases. Try again with major.minor version"
        )
    return f"{key}.{int(match[3])}"


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds (`1800s`, `20m`, `1h23s`, `1.5h`, `0`)."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    parts = re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)", body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f'time: invalid duration "{text}"')
    seconds = sum(float(n) * units[u] for n, u in parts)
    return -seconds if text.startswith("-") else seconds


def spawn_hung_child(root: Path, sub: str) -> subprocess.Popen[bytes]:
    """A child stuck like an apt run, in nodeadm's process group, its pid kept under the root.

    An agent that ends only nodeadm's pid leaves this one behind; ending the group gets both.
    """
    # It gives up after CHILD_TTL_S so a leaked orphan does not outlive a test session.
    child = subprocess.Popen(
        [sys.executable, "-c", f"import time; time.sleep({CHILD_TTL_S})"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    layout.write_file(
        layout.under(root, f"{layout.RUN_DIR}/nodeadm-{sub}.child.pid"), f"{child.pid}\n"
    )
    return child


def _sub_key(sub: str) -> str:
    return sub.strip().replace(" ", "-").replace("config-check", "config")


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _int_or_none(text: str | None) -> int | None:
    return None if text in (None, "") else int(text)


def _float_or_none(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)
