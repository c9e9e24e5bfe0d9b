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
# ISO 8601 as Go's zap writes it: also an offset without its colon (``+0200``), a fraction of
# any length. Python 3.10's ``fromisoformat`` takes neither that nor ``Z``.
_ZAP_ISO8601 = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})([.,][0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:?[0-5][0-9])\Z"
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
    return _epoch(m)


def parse_zap_time(text: str) -> float:
    """Parse a time as zap's ISO 8601 encoder writes it (``2025-07-29T02:42:51.330+0200``)
    into epoch seconds; ``ValueError`` when it is not one or cannot be placed."""
    m = _ZAP_ISO8601.match(text)
    if not m:
        raise ValueError(f"not an ISO 8601 date-time with an offset: {text!r}")
    try:
        return _epoch(m)
    except (OverflowError, OSError) as e:  # a year at the ends of datetime's range
        raise ValueError(f"cannot place {text!r}: {e}") from e


def _epoch(m: re.Match[str]) -> float:
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = float(m.group(7).replace(",", ".")) if m.group(7) else 0.0
    off = m.group(8)
    if off in ("Z", "z"):
        tz = dt.timezone.utc
    else:
        sign = 1 if off[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(off[1:3]), minutes=int(off[-2:])))
    stamp = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    return stamp.timestamp() + frac
