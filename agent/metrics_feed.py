"""What the optional Prometheus exporter sees of a running agent.

The exporter (agent/exporter.py, the only importer of prometheus-client) is built here only
when `metrics` is configured, so an agent without metrics never imports it. Its inputs are
explicit: a snapshot taken on the event loop (phase, checks, the broker link's figures) and a
tally fed by the outbound side's events and replies and by the controller's errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.core import lifecycle as lc
from agent.core.config import Config
from agent.logs import Log
from agent.outbound import Outbound

if TYPE_CHECKING:
    from agent.assignments import AssignmentSource
    from agent.exporter import LinkFigures, MetricsExporter, MetricsSnapshot
    from agent.link.mqtt import MqttLink


def start_metrics(
    config: Config,
    snapshot: Callable[[], MetricsSnapshot],
    out: Outbound,
    assignments: AssignmentSource,
    log: Log,
) -> MetricsExporter | None:
    """The exporter, or None (said loudly) when prometheus-client is missing."""
    try:
        from agent.exporter import MetricsExporter
    except ImportError as e:
        # The agent runs on without metrics: they must never cost a host its join.
        message = (
            f"metrics are configured but prometheus-client is missing ({e}): "
            "install edge-agent[metrics]"
        )
        log.error("metrics.unavailable", error=message)
        out.error("metrics_unavailable", message)
        return None
    exporter = MetricsExporter(config.metrics, snapshot, log=log)
    out.observer = exporter.tally
    assignments.on_error_seen = exporter.tally.observe_controller_error
    return exporter


def snapshot(
    uid: str,
    state: lc.State,
    now: float,
    checks: list[dict[str, Any]],
    link: MqttLink | None,
) -> MetricsSnapshot:
    """What the exporter shows of this agent now (taken on the event loop)."""
    from agent.exporter import MetricsSnapshot

    return MetricsSnapshot(
        uid=uid,
        version=__version__,
        phase=str(state.phase),
        phase_since=state.phase_since,
        now=now,
        checks=tuple((str(c.get("id")), str(c.get("status"))) for c in checks),
        link=None if link is None else _link_figures(link),
    )


def _link_figures(link: MqttLink) -> LinkFigures:
    from agent.exporter import LinkFigures

    box = link.outbox
    dropped = {str(k): n for k, n in box.dropped_total.items()}
    return LinkFigures(link.connected, link.session, len(box), box.bytes_used, dropped)
