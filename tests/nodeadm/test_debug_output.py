"""Parsing ``nodeadm debug --no-color`` output as the real printer writes it.

The expected texts are aws/eks-hybrid v1.0.20: internal/validation/printer_test.go
(TestPrinter and TestPrinterWithExternalLogs), which pin internal/validation/printer.go's
tree; cmd/nodeadm/debug/debug.go prints the closing "Issues found" lines and sends zap's
JSON lines to stderr, which the agent writes to the same file as stdout.
"""

from __future__ import annotations

from agent.core.nodeadm_debug import parse_debug_output

# TestPrinter's want, verbatim.
PRINTER = """\
* Starting test [Success]
* Validating next [Failed]
  └─ Error
     └─ error message
* Third validation [Failed]
  └─ Error
     └─ another error message
     └─ Remediation
        └─ you can fix this
* Fourth validation [Failed]
  ├─ Error
  │  └─ error message
  ├─ Error
  │  └─ another error message
  │  └─ Remediation
  │     └─ you can fix this
  └─ Error
     └─ error message
"""

# TestPrinterWithExternalLogs: "with one error, with remediation and logs" and the
# multi-error case, then debug.go's closing lines.
EXTERNAL = """\
* Third validation [Failed]
  └─ Error
     ├─ third validation error
     ├─ stderr
     │  ├─ First log
     │  └─ Second log
     └─ Remediation
        └─ you can fix this
* Fourth validation [Failed]
  ├─ Error
  │  └─ error message
  ├─ Error
  │  └─ another error message
  │  └─ Remediation
  │     └─ you can fix this
  └─ Error
     ├─ error message
     └─ stderr
        ├─ First log
        ├─ Second log
        └─ Third log

Issues found during validation. Please follow the remediation advice above.
"""


def test_the_real_printer_tree_gives_error_and_remediation() -> None:
    items = [i.as_dict() for i in parse_debug_output(PRINTER)]
    assert items == [
        {"description": "Starting test", "ok": True, "error": None, "remediation": None},
        {"description": "Validating next", "ok": False, "error": "error message",
         "remediation": None},
        {"description": "Third validation", "ok": False, "error": "another error message",
         "remediation": "you can fix this"},
        {"description": "Fourth validation", "ok": False,
         "error": "error message\nanother error message\nerror message",
         "remediation": "you can fix this"},
    ]  # fmt: skip


def test_captured_stderr_is_kept_under_the_error() -> None:
    third, fourth = parse_debug_output(EXTERNAL)
    assert third.error == "third validation error\nstderr:\nFirst log\nSecond log"
    assert third.remediation == "you can fix this"
    assert fourth.error == (
        "error message\nanother error message\nerror message\nstderr:\n"
        "First log\nSecond log\nThird log"
    )
    assert fourth.remediation == "you can fix this"


def test_a_zap_line_between_the_message_and_its_verdict() -> None:
    # Printer.Starting writes "* msg " with no newline; a zap line on stderr lands there.
    text = (
        '* Validating access to AWS IAM Roles Anywhere endpoint {"level":"info",'
        '"ts":"2025-07-29T02:42:51.330+0200","msg":"Refreshing credentials"}\n'
        '{"level":"info","ts":"2025-07-29T02:42:51.331+0200","msg":"more"}\n'
        "[Failed]\n"
        "  └─ Error\n"
        "     └─ dial tcp: lookup rolesanywhere.us-west-2.amazonaws.com: no such host\n"
        "* Validating swap [Success]\n"
    )
    first, second = parse_debug_output(text)
    assert first.description == "Validating access to AWS IAM Roles Anywhere endpoint"
    assert not first.ok
    assert first.error == "dial tcp: lookup rolesanywhere.us-west-2.amazonaws.com: no such host"
    assert (second.description, second.ok) == ("Validating swap", True)


def test_colour_is_stripped_and_an_unfinished_validation_fails_with_the_reason() -> None:
    text = "* Validating swap [\x1b[32mSuccess\x1b[0m]\n* Validating Kubernetes node is active "
    swap, active = parse_debug_output(text, unfinished="stopped after 420 s")
    assert (swap.description, swap.ok) == ("Validating swap", True)
    assert active.description == "Validating Kubernetes node is active"
    assert (active.ok, active.error) == (False, "stopped after 420 s")


def test_secrets_are_scrubbed() -> None:
    text = "* Validating x [Failed]\n  └─ Error\n     └─ bad code EXAMPLEactivationCode01\n"
    [item] = parse_debug_output(text, ["EXAMPLEactivationCode01"])
    assert item.error == "bad code <redacted>"
