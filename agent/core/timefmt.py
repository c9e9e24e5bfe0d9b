"""RFC 3339 timestamps as the contract writes them: UTC, milliseconds, and a ``Z``.

Pure functions over epoch seconds (floats), so callers pass in whatever clock they use.
"""

from __future__ import annotations

import datetime as dt
import re

_RFC3339 = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def iso(epoch: float) -> str:
    """Format epoch seconds as ``2026-11-26T17:24:07.123Z``."""
    t = dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Parse an RFC 3339 date-time into epoch seconds; ``ValueError`` when it is not one."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = float(m.group(7)) if m.group(7) else 0.0
    off = m.group(8)
    if off in ("Z", "z"):
        tz = dt.timezone.utc
    else:
        sign = 1 if off[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(off[1:3]), minutes=int(off[4:6])))
    stamp = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    return stamp.timestamp() + frac
