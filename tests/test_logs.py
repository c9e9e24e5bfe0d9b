"""Logging: secrets are masked by key and by value, tracebacks carry no local variables,
levels change live, and two agents' loggers never share state."""

from __future__ import annotations

import io
import json

from agent.logs import LevelHolder, make_logger

SECRET = "SECRETactivationCode0042"


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_secret_keys_and_values_are_redacted_everywhere() -> None:
    buf = io.StringIO()
    log = make_logger(level=LevelHolder("info"), fmt="json", stream=buf, secrets=lambda: [SECRET])
    log.info(
        "x",
        activation_code=SECRET,
        token="tok-123456",
        nested={"password": "p4ssw0rd!"},
        text=f"nodeadm said {SECRET} is bad",
        items=[SECRET],
    )
    out = buf.getvalue()
    assert SECRET not in out and "tok-123456" not in out and "p4ssw0rd!" not in out
    rec = lines(buf)[0]
    assert (
        rec["activation_code"] == "<redacted>" and rec["text"] == "nodeadm said <redacted> is bad"
    )


def test_tracebacks_have_no_locals() -> None:
    buf = io.StringIO()
    log = make_logger(level=LevelHolder("info"), fmt="json", stream=buf, secrets=lambda: [SECRET])

    def fail(code: str) -> None:
        hidden_local = code  # noqa: F841 - a frame local the renderer must not dump
        raise ValueError("boom")

    try:
        fail("hunter2-local-value")
    except ValueError:
        log.error("failed", exc_info=True)
    out = buf.getvalue()
    assert "boom" in out and "hunter2-local-value" not in out


def test_level_changes_live_and_agents_are_independent() -> None:
    a_buf, b_buf = io.StringIO(), io.StringIO()
    a_level = LevelHolder("info")
    a = make_logger(level=a_level, fmt="json", stream=a_buf, uid="a")
    b = make_logger(level=LevelHolder("warning"), fmt="json", stream=b_buf, uid="b")
    a.debug("hidden")
    a_level.set("debug")
    a.debug("shown")
    b.info("not for b")
    b.warning("for b")
    assert [r["event"] for r in lines(a_buf)] == ["shown"]
    assert [(r["event"], r["uid"]) for r in lines(b_buf)] == [("for b", "b")]


def test_a_secret_is_hidden_in_a_log_line_as_everywhere_else() -> None:
    # The rule of agent.core.redact, whichever the format: struck out by value (longest
    # first, not when too short to be a secret), masked by key at any depth, known or not.
    for fmt in ("json", "console"):
        buf = io.StringIO()
        log = make_logger(
            level=LevelHolder("info"), fmt=fmt, stream=buf, secrets=lambda: [SECRET, "salt"]
        )
        log.info(
            "nodeadm.line",
            msg=f"code {SECRET} rejected",
            fields={"activationCode": "abc", "note": "pass the salt"},
            nested={"hostToken": "t"},
        )
        out = buf.getvalue()
        assert SECRET not in out and "'abc'" not in out and "'t'" not in out
        assert "code <redacted> rejected" in out and "pass the salt" in out
        if fmt == "json":
            rec = lines(buf)[0]
            assert rec["fields"] == {"activationCode": "<redacted>", "note": "pass the salt"}
            assert rec["nested"] == {"hostToken": "<redacted>"}


def test_secret_named_keys_are_masked_before_any_secret_is_known() -> None:
    buf = io.StringIO()
    log = make_logger(level=LevelHolder("info"), fmt="json", stream=buf)
    log.info("x", reply={"host_token": "issued-token-0001"})
    assert lines(buf)[0]["reply"] == {"host_token": "<redacted>"}


def test_the_console_still_draws_a_traceback() -> None:
    buf = io.StringIO()
    log = make_logger(level=LevelHolder("info"), fmt="console", stream=buf)
    try:
        raise ValueError("boom")
    except ValueError as e:
        log.error("failed", exc_info=e)
    assert "Traceback" in buf.getvalue() and "ValueError: boom" in buf.getvalue()


def test_a_secret_that_arrives_later_is_hidden_from_then_on() -> None:
    # The host token arrives after the logger is built, and the registration token rotates.
    held: list[str] = []
    buf = io.StringIO()
    log = make_logger(level=LevelHolder("info"), fmt="json", stream=buf, secrets=lambda: held)
    log.info("x", text="issued-token-0001")
    held.append("issued-token-0001")
    log.info("x", text="issued-token-0001")
    held[0] = "issued-token-0002"
    log.info("x", text="issued-token-0001 then issued-token-0002")
    assert [r["text"] for r in lines(buf)] == [
        "issued-token-0001",
        "<redacted>",
        "issued-token-0001 then <redacted>",
    ]
