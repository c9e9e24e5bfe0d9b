"""What nodeadm said, and what it means for the host: log lines in, ``last_error`` codes out.

nodeadm logs with zap: one JSON object per line on stderr (``level``, ``ts``, ``caller``,
``msg`` and free fields such as ``error`` and ``remediation``), ending a failed run with a
``fatal`` "Command failed" line carrying the error. `parse_line` turns each line into a
`NodeadmLine` (anything that is not such an object is kept as a raw info line), and `classify` maps
a finished step to one of the ``last_error`` codes (docs/api/schemas/status.schema.json) with one
readable sentence. Pure: no I/O, no clock; the runner supplies what it observed on the host (tracker
present, kubelet active). Secrets are scrubbed here, once, for every message that leaves, by
`agent.core.redact`'s rules: nodeadm does not print the activation code, but an AWS error echoing a
request might.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.core.redact import scrub, scrub_text
from agent.core.timefmt import iso, parse_zap_time

_LEVELS = frozenset({"debug", "info", "warn", "error", "dpanic", "panic", "fatal"})
_KNOWN_KEYS = ("level", "ts", "caller", "msg")

# nodeadm's own wording (internal/ssm/daemon.go maps the SSM agent's ActivationExpired /
# InvalidActivation* errors to these sentences); the raw AWS error codes are matched too.
_SSM_EXPIRED = re.compile(r"activationexpired|ssm activation expired|activation (has )?expired")
_SSM_INVALID = re.compile(r"invalidactivation|invalid ssm activation|invalid activation")
_NODE_IP = re.compile(r"not in any of the remote (node )?network|outside (of )?the remote node")
_SWAP = re.compile(r"partition type swap|swap partition|partition swap")
_DEADLINE = re.compile(r"context deadline exceeded")
_PKG_CMD = re.compile(r"\b(apt|apt-get|yum|dnf)\b")
_NO_PACKAGE = re.compile(r"unable to locate package|no package .* available|no match for argument")

_HINTS = MappingProxyType(
    {
        "ssm_activation_expired": "Create a new SSM hybrid activation and update the assignment.",
        "ssm_activation_invalid": "Check the activation id, activation code and region of the "
        "assignment against the SSM hybrid activation.",
        "node_ip_out_of_range": "Set network.node_ip to this host's address inside the remote "
        "node CIDRs, or add its network to remote_node_cidrs.",
        "partition_swap": "Disable the swap partition (swapoff and remove it from /etc/fstab).",
        "package_install_timeout": "Refresh the package index (apt-get update or dnf makecache) "
        "and check the package repositories, then retry.",
        "nodeadm_timeout": "Check the host's connectivity, or raise the step's timeout in "
        "nodeadm.*_timeout_s.",
        "not_installed": "Run nodeadm install first (the agent will re-run the install step).",
        "kubelet_inactive": "Inspect 'journalctl -u kubelet' on the host.",
    }
)


@dataclass(frozen=True)
class NodeadmLine:
    """One line of nodeadm output: a zap JSON object, or raw text (``raw=True``)."""

    level: str
    msg: str
    fields: Mapping[str, object] = field(default_factory=dict)
    ts: str | None = None
    caller: str | None = None
    raw: bool = False

    @property
    def error(self) -> str | None:
        value = self.fields.get("error")
        return str(value) if value is not None else None

    def as_event(self) -> dict[str, Any]:
        """The contract's ``nodeadm`` event body, less ``step`` (the caller adds it)."""
        return {"level": self.level, "msg": self.msg, "fields": dict(self.fields)}


def scrub_line(line: NodeadmLine, secrets: Sequence[str]) -> NodeadmLine:
    """The same line hidden by `agent.core.redact`'s rules: secrets struck from its message
    and every string field, and every secret-named field masked whatever its value."""
    return NodeadmLine(
        level=line.level,
        msg=scrub_text(line.msg, secrets),
        fields=scrub(line.fields, secrets),
        ts=line.ts,
        caller=line.caller,
        raw=line.raw,
    )


def _ts(value: object) -> str | None:
    """The line's time as the contract writes times (UTC, ``Z``).

    Early nodeadm builds used zap's default epoch-float encoder; current ones ISO 8601 with
    the host's local offset and no colon (``2025-07-29T02:42:51.330+0200``), which is only
    UTC on hosts that run in UTC.
    """
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            return iso(float(value)) if math.isfinite(value) else None
        if isinstance(value, str):
            # A local time without its offset cannot be placed: not read.
            return iso(parse_zap_time(value.strip()))
    except (ValueError, OverflowError, OSError):  # not a time, or beyond datetime's range
        return None
    return None


def parse_line(text: str) -> NodeadmLine | None:
    """A `NodeadmLine` for one line of output; None for a blank line."""
    stripped = text.strip()
    if not stripped:
        return None
    doc: object = None
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
    if not isinstance(doc, dict) or not ("msg" in doc or "level" in doc):
        return NodeadmLine(level="info", msg=stripped, fields={}, raw=True)
    level = str(doc.get("level", "info")).lower()
    return NodeadmLine(
        level=level if level in _LEVELS else "info",
        msg=str(doc.get("msg", "")),
        fields={k: v for k, v in doc.items() if k not in _KNOWN_KEYS},
        ts=_ts(doc.get("ts")),
        caller=str(doc["caller"]) if isinstance(doc.get("caller"), str) else None,
    )


def _fatal_error(lines: Sequence[NodeadmLine]) -> str | None:
    """nodeadm's reason for failing: the last fatal line's error, else the last error line's."""
    for wanted in (("fatal", "panic", "dpanic"), ("error",)):
        for line in reversed(lines):
            if line.level in wanted and not line.raw:
                return line.error or line.msg or None
    return None


def _remediation(lines: Sequence[NodeadmLine]) -> str | None:
    for line in reversed(lines):
        value = line.fields.get("remediation")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _haystack(lines: Sequence[NodeadmLine]) -> str:
    # Only what reads as an error: the messages of warn-or-worse and raw lines, and every
    # ``error`` field (retry loops log each failed attempt at info with its error).
    # Progress lines ("Validating node-ip-validation...") must not classify a failure.
    parts: list[str] = []
    for line in lines:
        if line.raw or line.level not in ("debug", "info"):
            parts.append(line.msg)
        if line.error is not None:
            parts.append(line.error)
    return "\n".join(parts).lower()


def _code_for(step: str, text: str, timed_out: bool) -> str:
    if _SSM_EXPIRED.search(text):
        return "ssm_activation_expired"
    if _SSM_INVALID.search(text):
        return "ssm_activation_invalid"
    if _SWAP.search(text):
        return "partition_swap"
    if _NODE_IP.search(text):
        return "node_ip_out_of_range"
    if step in ("install", "upgrade") and (
        _NO_PACKAGE.search(text) or (_DEADLINE.search(text) and _PKG_CMD.search(text))
    ):
        # Package commands retry every 5 s until the deadline: a stale index or a broken
        # repository burns the whole --timeout and surfaces only as a deadline.
        return "package_install_timeout"
    if timed_out or _DEADLINE.search(text):
        return "nodeadm_timeout"
    return "nodeadm_failed"


def _sentence(text: str) -> str:
    # Not capitalised: messages start with "nodeadm", which is spelt in lower case.
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _last_raw(lines: Sequence[NodeadmLine]) -> str | None:
    for line in reversed(lines):
        if line.raw and line.msg.strip():
            return line.msg.strip()
    return None


def classify(
    step: str,
    exit_code: int | None,
    lines: Sequence[NodeadmLine],
    timed_out: bool,
    *,
    tracker_present: bool | None = None,
    kubelet_active: bool | None = None,
    timeout_s: float | None = None,
    secrets: Sequence[str] = (),
) -> tuple[str | None, str]:
    """``(code, message)`` for a finished step; ``code`` is None when it succeeded.

    ``tracker_present`` and ``kubelet_active`` are what the runner saw after the step:
    nodeadm init/upgrade exit 0 when nothing is installed, so exit 0 alone is not success.
    """
    if exit_code == 0 and not timed_out:
        if step in ("init", "upgrade") and tracker_present is False:
            return "not_installed", scrub_text(
                f"nodeadm {step} exited 0 but did nothing: the components are not installed "
                f"(no /opt/nodeadm/tracker). {_HINTS['not_installed']}",
                secrets,
            )
        if step == "init" and kubelet_active is False:
            return "kubelet_inactive", (
                "nodeadm init finished but kubelet is not active. " + _HINTS["kubelet_inactive"]
            )
        if step == "install" and tracker_present is False:
            return "nodeadm_failed", (
                "nodeadm install exited 0 but did not write /opt/nodeadm/tracker."
            )
        if step == "uninstall" and tracker_present is True:
            return "nodeadm_failed", (
                "nodeadm uninstall exited 0 but /opt/nodeadm/tracker is still there."
            )
        return None, f"nodeadm {step} succeeded."
    text = _haystack(lines)
    code = _code_for(step, text, timed_out)
    reason = _fatal_error(lines)
    if reason is None and exit_code == 2:
        # flaggy usage errors print help text, not JSON: its last line says what was wrong.
        reason = _last_raw(lines) or "nodeadm rejected its arguments"
    if timed_out:
        limit = f" within {timeout_s:g} s" if timeout_s is not None else " in time"
        head = f"nodeadm {step} did not finish{limit} and was stopped"
        message = f"{head} (last error: {reason})" if reason else head
    elif reason:
        message = f"nodeadm {step} failed: {reason}"
    else:
        message = f"nodeadm {step} failed with exit code {exit_code}"
    remedy = _remediation(lines) or _HINTS.get(code)
    out = _sentence(message)
    if remedy and remedy.lower() not in out.lower():
        out = f"{out} {_sentence(remedy)}"
    return code, scrub_text(out, secrets)
