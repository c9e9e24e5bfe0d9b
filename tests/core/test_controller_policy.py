"""Table-driven tests of the controller client's pure decisions: no server, no clock, no I/O.

The client's behaviour over real HTTP is in tests/link/test_controller_client.py; here each
rule is pinned on its own, including the corners a server is awkward to make produce (an
HTTP date without a zone, a body of control characters). How secrets are hidden is
agent.core.redact's rule, tested in test_redact.py.
"""

from __future__ import annotations

import json
import random
from email.utils import formatdate

import pytest

from agent.core.controller_policy import (
    Accepted,
    StatusVerdict,
    accepted,
    error_excerpt,
    json_object,
    parse_retry_after,
    refuses_client_cert,
    slow_delay,
    status_verdict,
)

NOW = 1_750_000_000.0
UNREACHABLE = StatusVerdict("controller_unreachable")
TRANSIENT = StatusVerdict("controller_unreachable", transient=True)
REFUSED = StatusVerdict("registration_refused", slow=True)


@pytest.mark.parametrize(
    ("status", "register", "verdict"),
    [
        (408, False, TRANSIENT),
        (429, True, TRANSIENT),
        (500, False, TRANSIENT),
        (503, True, TRANSIENT),
        (401, False, StatusVerdict("registration_refused", reauth=True)),
        (401, True, REFUSED),
        (403, False, REFUSED),
        (403, True, REFUSED),
        (409, True, StatusVerdict("uid_conflict", slow=True)),
        (400, True, StatusVerdict("registration_failed", slow=True)),
        (404, True, StatusVerdict("registration_failed", slow=True)),
        (409, False, UNREACHABLE),
        (404, False, UNREACHABLE),
        (302, False, UNREACHABLE),
    ],
)
def test_status_verdicts(status: int, register: bool, verdict: StatusVerdict) -> None:
    assert status_verdict(status, register=register) == verdict


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-5", 0.0),  # never a negative wait
        (formatdate(NOW + 90, usegmt=True), 90.0),
        (formatdate(NOW - 90, usegmt=True), 0.0),  # a date in the past: go now
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Sun, 99 Foo 2026", None),
        ("Wed, 18 Jun 2025 12:00:00", None),  # no zone: cannot be placed in time
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_slow_delay_is_half_to_all_of_the_cap() -> None:
    rng = random.Random(7)
    delays = [slow_delay(300.0, None, rng) for _ in range(1000)]
    assert all(150.0 <= d <= 300.0 for d in delays)
    assert max(delays) - min(delays) > 100  # jittered, so a refused fleet spreads out


@pytest.mark.parametrize(("retry_after", "floor"), [(280.0, 280.0), (10_000.0, 300.0)])
def test_slow_delay_honours_retry_after_up_to_the_cap(retry_after: float, floor: float) -> None:
    rng = random.Random(7)
    for _ in range(100):
        assert floor <= slow_delay(300.0, retry_after, rng) <= 300.0


@pytest.mark.parametrize(
    ("reply", "sent_uid", "expected"),
    [
        ({"uid": "h1", "host_token": " t\n"}, None, Accepted("h1", "t", None, False)),
        ({"host_token": "t"}, "sent", Accepted("sent", "t", None, False)),
        (
            {"uid": "h1", "host_token": "t", "assignment": {"a": 1}},
            None,
            Accepted("h1", "t", {"a": 1}, False),
        ),
        (
            {"uid": "h1", "host_token": "t", "assignment": [1]},
            None,
            Accepted("h1", "t", None, True),
        ),
        (
            {"uid": "h1", "host_token": "t", "assignment": None},
            None,
            Accepted("h1", "t", None, False),
        ),
        ({"uid": "h1", "host_token": "  "}, None, None),
        ({"uid": "h1"}, None, None),
        ({"uid": 7, "host_token": "t"}, None, None),
        ({"host_token": "t"}, None, None),
    ],
)
def test_registration_replies(
    reply: dict[str, object], sent_uid: str | None, expected: Accepted | None
) -> None:
    assert accepted(json.dumps(reply).encode(), sent_uid) == expected


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_reply_that_is_not_an_object_registers_nothing(raw: bytes) -> None:
    assert json_object(raw) is None
    assert accepted(raw, "sent") is None


@pytest.mark.parametrize(
    ("body", "excerpt"),
    [
        (b'{"error": "bad token", "message": "other"}', ": bad token"),
        (b'{"message": "try later"}', ": try later"),
        (b'{"error": 42, "message": "fallback"}', ": fallback"),
        (b'{"detail": "not shown"}', ""),
        (b"", ""),
        (b"  \n\t ", ""),
        (b"plain\ntext\x00here", ": plain text here"),
        (b"x" * 500, ": " + "x" * 200),
        (json.dumps({"error": "e" * 300}).encode(), ": " + "e" * 200),
        (b"\xffbroken", ": \ufffdbroken"),
    ],
)
def test_error_excerpts(body: bytes, excerpt: str) -> None:
    assert error_excerpt(body) == excerpt


@pytest.mark.parametrize(
    ("reason", "refused"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", True),
        ("SSLV3_ALERT_BAD_CERTIFICATE", True),
        ("TLSV1_ALERT_UNKNOWN_CA", True),
        ("TLSV1_ALERT_ACCESS_DENIED", True),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", True),
        ("CERTIFICATE_VERIFY_FAILED", False),
        ("WRONG_VERSION_NUMBER", False),
        ("None", False),
    ],
)
def test_client_certificate_refusals(reason: str, refused: bool) -> None:
    assert refuses_client_cert(reason) is refused
