"""Reading nodeadm's output: zap lines, last_error classification, debug reports, scrubbing.

These are table tests over the pure core; test_runner.py drives the same classification
through the nodeadm stand-in's real failure modes.
"""

from __future__ import annotations

import json

import pytest

from agent.core.nodeadm_errors import (
    NodeadmLine,
    classify,
    parse_line,
    scrub_line,
)
from agent.core.redact import scrub_text
from tests.nodeadm.samples import ACTIVATION_CODE


def zap(level: str, msg: str, **fields: object) -> str:
    return json.dumps(
        {"level": level, "ts": "2025-07-29T02:42:51.330Z", "caller": "flows/init.go:42",
         "msg": msg, **fields}
    )  # fmt: skip


def fatal(error: str) -> NodeadmLine:
    line = parse_line(zap("fatal", "Command failed", error=error))
    assert line is not None
    return line


def test_parse_zap_line() -> None:
    line = parse_line(zap("info", "Installing kubelet...", version="1.31.2"))
    assert line == NodeadmLine(
        level="info",
        msg="Installing kubelet...",
        fields={"version": "1.31.2"},
        ts="2025-07-29T02:42:51.330Z",
        caller="flows/init.go:42",
    )
    assert line.as_event() == {
        "level": "info",
        "msg": "Installing kubelet...",
        "fields": {"version": "1.31.2"},
    }


@pytest.mark.parametrize(
    ("stamp", "utc"),
    [
        ("2025-07-29T02:42:51.330Z", "2025-07-29T02:42:51.330Z"),
        ("2025-07-29T02:42:51.330+0200", "2025-07-29T00:42:51.330Z"),
        ("2025-07-29T02:42:51.330+02:00", "2025-07-29T00:42:51.330Z"),
        ("2025-07-29T02:42:51.330-0530", "2025-07-29T08:12:51.330Z"),
        ("2025-07-29T02:42:51Z", "2025-07-29T02:42:51.000Z"),
        ("2025-07-29T02:42:51.123456789Z", "2025-07-29T02:42:51.123Z"),
        ("2025-07-29T02:42:51.330", None),  # local time without its offset
        ("2025-13-29T02:42:51.330Z", None),
        ("2025-07-29T02:42:51.330+2400", None),
        ("2025-07-29T02:42:51.330+0275", None),  # 75 minutes is no offset
        ("2025-07-29T02:42:51.\u0663\u0663\u0660Z", None),  # Arabic-Indic digits
        ("0001-01-01T00:00:00+0100", None),  # before year 1 in UTC
        ("9999-12-31T23:59:59-0100", None),  # after year 9999 in UTC
        ("2025-07-29T23:59:60Z", None),  # no leap seconds in Python
        ("yesterday", None),
    ],
)
def test_iso_times_are_read_on_every_supported_python(stamp: str, utc: str | None) -> None:
    """Python 3.10's `datetime.fromisoformat` takes neither ``Z`` nor ``+0200``; zap writes
    both, and the agent runs on 3.10 (Ubuntu 22.04)."""
    line = parse_line(json.dumps({"level": "info", "ts": stamp, "msg": "x"}))
    assert line is not None and line.ts == utc


@pytest.mark.parametrize("epoch", [1e20, -1e20, float("inf"), float("nan")])
def test_an_epoch_beyond_any_date_is_no_time(epoch: float) -> None:
    line = parse_line(json.dumps({"level": "info", "ts": epoch, "msg": "x"}))
    assert line is not None and line.msg == "x" and line.ts is None


def test_parse_float_epoch_from_early_builds() -> None:
    line = parse_line('{"level":"warn","ts":1732641847.1234,"msg":"slow"}')
    assert line is not None
    assert line.ts == "2024-11-26T17:24:07.123Z"
    # aws/eks-hybrid v1.0.20: internal/cli/logger.go (zapcore.ISO8601TimeEncoder) stamps the host's
    # local offset without a colon; the agent reports UTC with a Z, as everywhere else.
    local = parse_line('{"level":"info","ts":"2025-07-29T02:42:51.330+0200","msg":"x"}')
    assert local is not None and local.ts == "2025-07-29T00:42:51.330Z"
    assert line.level == "warn"
    assert line.caller is None


@pytest.mark.parametrize(
    "text",
    ["Usage: nodeadm install [flags]", "{not json", '["a", "list"]', '{"no": "zap keys"}'],
)
def test_anything_else_is_a_raw_info_line(text: str) -> None:
    assert parse_line(text) == NodeadmLine(level="info", msg=text, fields={}, raw=True)


def test_blank_lines_are_dropped() -> None:
    assert parse_line("   \n") is None


def test_unknown_levels_read_as_info_and_error_is_exposed() -> None:
    line = parse_line('{"level":"TRACE","msg":"x","error":"boom"}')
    assert line is not None
    assert (line.level, line.error) == ("info", "boom")


CASES = [
    ("init", "SSM activation expired. Please use a valid activation", "ssm_activation_expired"),
    (
        "init",
        "registering: ActivationExpired: the activation has expired",
        "ssm_activation_expired",
    ),
    (
        "init",
        "invalid SSM activation. Please use a valid activation code, activation id and region",
        "ssm_activation_invalid",
    ),
    (
        "init",
        "node IP 203.0.113.7 is not in any of the remote network CIDR blocks: [10.200.0.0/16]. "
        "See https://docs.aws.amazon.com/eks/latest/userguide/hybrid-nodes-troubleshooting.html "
        "or use --skip node-ip-validation",
        "node_ip_out_of_range",
    ),
    ("init", "partition type swap found on the host", "partition_swap"),
    (
        "install",
        "context deadline exceeded: running command [apt install containerd -y]",
        "package_install_timeout",
    ),
    ("install", "E: Unable to locate package containerd", "package_install_timeout"),
    ("init", "waiting for kubelet: context deadline exceeded", "nodeadm_timeout"),
    ("install", "context deadline exceeded: downloading kubelet", "nodeadm_timeout"),
    ("init", "must run as root", "nodeadm_failed"),
]


@pytest.mark.parametrize(("step", "error", "code"), CASES)
def test_classify_fatal_errors(step: str, error: str, code: str) -> None:
    got, message = classify(step, 1, [fatal(error)], False)
    assert got == code
    assert message.startswith(f"nodeadm {step} failed: ")
    assert error.split(":", maxsplit=1)[0] in message


def test_progress_lines_do_not_classify_a_failure() -> None:
    progress = parse_line(zap("info", "Validating", validation="node-ip-validation"))
    assert progress is not None
    code, _ = classify("init", 1, [progress, fatal("some other failure")], False)
    assert code == "nodeadm_failed"


def test_our_timeout_names_the_limit_and_the_last_error() -> None:
    code, message = classify("init", None, [fatal("dial tcp: i/o timeout")], True, timeout_s=90)
    assert code == "nodeadm_timeout"
    assert "did not finish within 90 s" in message
    assert "i/o timeout" in message


def test_remediation_is_appended_from_nodeadm_or_our_hints() -> None:
    swap = parse_line(
        zap("error", "Validation failed", error="partition type swap found on the host",
            remediation="Disable swap partitions before running init")
    )  # fmt: skip
    assert swap is not None
    _, message = classify("init", 1, [swap], False)
    assert message.endswith("Disable swap partitions before running init.")
    _, message = classify("init", 1, [fatal("SSM activation expired")], False)
    assert "Create a new SSM hybrid activation" in message


def test_usage_errors_use_flaggy_last_line() -> None:
    lines = [parse_line("Usage: nodeadm init [flags]"), parse_line("--config-source is required")]
    code, message = classify("init", 2, [x for x in lines if x], False)
    assert code == "nodeadm_failed"
    assert "--config-source is required" in message


def test_exit_zero_quirks() -> None:
    assert classify("init", 0, [], False, tracker_present=True, kubelet_active=True)[0] is None
    assert classify("init", 0, [], False, tracker_present=False)[0] == "not_installed"
    assert classify("upgrade", 0, [], False, tracker_present=False)[0] == "not_installed"
    code, message = classify("init", 0, [], False, tracker_present=True, kubelet_active=False)
    assert code == "kubelet_inactive"
    assert "journalctl -u kubelet" in message
    assert classify("install", 0, [], False, tracker_present=True)[0] is None
    assert classify("install", 0, [], False, tracker_present=False)[0] == "nodeadm_failed"
    assert classify("uninstall", 0, [], False, tracker_present=False)[0] is None


def test_secrets_are_scrubbed_from_messages_and_lines() -> None:
    echoed = fatal(f"InvalidActivation: code {ACTIVATION_CODE} rejected")
    code, message = classify("init", 1, [echoed], False, secrets=[ACTIVATION_CODE])
    assert code == "ssm_activation_invalid"
    assert ACTIVATION_CODE not in message
    assert "<redacted>" in message
    clean = scrub_line(echoed, [ACTIVATION_CODE])
    assert ACTIVATION_CODE not in json.dumps(clean.as_event())
    # Short strings are not treated as secrets: they would mangle ordinary words.
    assert scrub_text("a b c", ["b"]) == "a b c"


def test_a_secret_is_hidden_in_a_nodeadm_event_as_everywhere_else() -> None:
    line = parse_line(
        zap("error", f"code {ACTIVATION_CODE} rejected", activationCode="abc", token="t1",
            error=f"InvalidActivation: {ACTIVATION_CODE}", note="pass the salt")
    )  # fmt: skip
    assert line is not None
    assert scrub_line(line, [ACTIVATION_CODE, "salt"]).as_event() == {
        "level": "error",
        "msg": "code <redacted> rejected",
        "fields": {
            "activationCode": "<redacted>",
            "token": "<redacted>",
            "error": "InvalidActivation: <redacted>",
            "note": "pass the salt",
        },
    }
    # Secret-named fields are masked even before any secret is known.
    assert scrub_line(line, []).fields["token"] == "<redacted>"
