"""The controller client's decisions, apart from HTTP itself (docs/api/openapi.yaml).

What a reply's status means as a status ``last_error`` code (and whether only an operator can
fix it, or the host token must be renewed), how long to wait (``Retry-After`` in seconds or
as an HTTP date, the slow delay of a refusal), what a registration reply must carry, and what
of an error body may be shown (a short printable excerpt, which the client scrubs of secrets
with `agent.core.redact`). Pure: the clock and the random source are passed in, so every rule
is tested by a table of values; `agent.link.controller` does the talking and raises the errors
these verdicts describe.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

EXCERPT_CHARS = 200
# TLS alerts a server sends about *our* certificate. Under TLS 1.3 they arrive after the
# client's handshake has finished, as a raw ssl.SSLError on the first read that httpx does
# not wrap. They are refusals, not transient faults.
_CLIENT_CERT_ALERT = re.compile(
    r"ALERT_(CERTIFICATE_\w+|BAD_CERTIFICATE|UNKNOWN_CA|ACCESS_DENIED)$"
)


@dataclass(frozen=True)
class StatusVerdict:
    """What an unexpected HTTP status means for the client.

    `code`: the status ``last_error.code``. `slow`: only an operator can fix it, so wait near
    the backoff cap. `transient`: the server may say when to come back (``Retry-After``).
    `reauth`: the host token was refused, so register again.
    """

    code: str
    slow: bool = False
    transient: bool = False
    reauth: bool = False


class Accepted(NamedTuple):
    """A registration reply's fields; `bad_assignment` when one came but not as an object."""

    uid: str
    host_token: str
    assignment: dict[str, Any] | None
    bad_assignment: bool


def status_verdict(status: int, *, register: bool) -> StatusVerdict:
    """The meaning of a status the exchange did not expect; `register` for the POST."""
    if status in (408, 429) or status >= 500:
        return StatusVerdict("controller_unreachable", transient=True)
    if status == 401 and not register:
        return StatusVerdict("registration_refused", reauth=True)
    if status in (401, 403):
        return StatusVerdict("registration_refused", slow=True)
    if register:
        # A registration refused for its content stays refused until someone changes it.
        code = "uid_conflict" if status == 409 else "registration_failed"
        return StatusVerdict(code, slow=True)
    return StatusVerdict("controller_unreachable")


def refuses_client_cert(alert: str) -> bool:
    """True when a TLS alert's reason is the server refusing our client certificate."""
    return _CLIENT_CERT_ALERT.search(alert) is not None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    `now` is the wall clock in seconds since the epoch, which an HTTP date is relative to.
    """
    if not value:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now) if when.tzinfo is not None else None


def slow_delay(cap: float, retry_after: float | None, rng: random.Random) -> float:
    """The wait after a refusal: half to all of `cap`, and at least a capped `retry_after`.

    Jittered so a fleet refused together does not return together, and never near zero,
    since an operator has to act first.
    """
    return max(min(retry_after or 0.0, cap), cap * rng.uniform(0.5, 1.0))


def accepted(raw: bytes, sent_uid: object) -> Accepted | None:
    """The fields of a 200 registration reply, None without a uid and a host token.

    The uid defaults to the one we sent; the host token is stripped.
    """
    doc = json_object(raw) or {}
    host_token, uid = doc.get("host_token"), doc.get("uid", sent_uid)
    if not isinstance(host_token, str) or not host_token.strip() or not isinstance(uid, str):
        return None
    assignment = doc.get("assignment")
    good = assignment if isinstance(assignment, dict) else None
    return Accepted(uid, host_token.strip(), good, assignment is not None and good is None)


def json_object(raw: bytes) -> dict[str, Any] | None:
    """`raw` parsed as a JSON object, or None when it is not one.

    Deep nesting (5 KB of ``[``) raises RecursionError, not ValueError: a reply from anyone
    on the path must never be able to end the agent.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def error_excerpt(raw: bytes) -> str:
    """A short, printable excerpt of an error body: its "error"/"message" field if JSON.

    Returned as ``": text"`` to append to a message, or "" when there is nothing to show.
    """
    doc = json_object(raw)
    if doc is not None:
        text = next((v for k in ("error", "message") if isinstance(v := doc.get(k), str)), "")
    else:
        text = raw[:EXCERPT_CHARS].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()[:EXCERPT_CHARS]
    return f": {text}" if text else ""
