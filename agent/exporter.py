"""Prometheus metrics of one agent: served on ``metrics.listen`` and/or written to
``metrics.textfile`` for node_exporter's textfile collector, every ``metrics.interval_s``.

The only module that imports prometheus-client (the ``metrics`` extra), and it is imported
only when metrics are enabled: an agent without them loads none of this. Two inputs, both
explicit. `Tally` counts what happens, fed by the agent's own events, replies and controller
errors (join attempts and failures by code, nodeadm step durations, commands by name and
state, controller errors by code). `MetricsSnapshot` is what the agent is now (phase and
since when, last check results, the broker link and its outbox), taken on the event loop at
each interval. The exporter turns both into metric families once per interval and keeps the
result, so a scrape (answered from prometheus-client's own thread) never reads the agent's
live objects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.core.config import MetricsConfig
from agent.core.lifecycle import Phase
from agent.logs import Log
from agent.state.atomic import write_bytes

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

# Phases whose time is one nodeadm step; leaving one ends the step.
STEP_OF_PHASE = MappingProxyType(
    {
        "installing": "install",
        "joining": "init",
        "upgrading": "upgrade",
        "uninstalling": "uninstall",
    }
)
FAILED_PHASES = frozenset({"failed", "preflight_failed"})
# nodeadm steps run for minutes (install downloads, init waits for the node to register).
STEP_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
CHECK_STATUSES = ("pass", "warn", "fail", "skip", "error")


@dataclass
class _Steps:
    counts: list[int] = field(default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1))
    total: float = 0.0


@dataclass
class Tally:
    """Counts since this process started, from the agent's own events (no I/O, no clock)."""

    join_attempts: int = 0
    join_failures: dict[str, int] = field(default_factory=dict)
    steps: dict[tuple[str, str], _Steps] = field(default_factory=dict)
    commands: dict[tuple[str, str], int] = field(default_factory=dict)
    controller_errors: dict[str, int] = field(default_factory=dict)
    _entered: float | None = None
    _step_error: str | None = None

    def observe_event(self, event: Mapping[str, object], at: float) -> None:
        """An event the agent emitted, at monotonic time `at`."""
        kind = event.get("type")
        if kind == "error" and event.get("step") in ("install", "init"):
            self._step_error = str(event.get("code") or "nodeadm_failed")
        if kind != "phase":
            return
        old, new = str(event.get("from")), str(event.get("to"))
        step = STEP_OF_PHASE.get(old)
        if step is not None and self._entered is not None:
            outcome = "failed" if new in FAILED_PHASES else "ok"
            self._observe_step(step, outcome, at - self._entered)
        self._entered = at if new in STEP_OF_PHASE else None
        if new == "preflight":
            self.join_attempts += 1
            self._step_error = None
        elif new == "preflight_failed":
            self._fail("preflight_failed")
        elif new == "failed" and old in ("installing", "joining"):
            self._fail(self._step_error or "nodeadm_failed")

    def observe_reply(self, reply: Mapping[str, object]) -> None:
        if reply.get("duplicate"):
            return  # the same command again: counted once
        key = (str(reply.get("name") or "unknown"), str(reply.get("state")))
        self.commands[key] = self.commands.get(key, 0) + 1

    def observe_controller_error(self, code: str) -> None:
        self.controller_errors[code] = self.controller_errors.get(code, 0) + 1

    def _fail(self, code: str) -> None:
        self.join_failures[code] = self.join_failures.get(code, 0) + 1

    def _observe_step(self, step: str, outcome: str, seconds: float) -> None:
        h = self.steps.setdefault((step, outcome), _Steps())
        i = next((n for n, b in enumerate(STEP_BUCKETS) if seconds <= b), len(STEP_BUCKETS))
        h.counts[i] += 1
        h.total += max(0.0, seconds)


@dataclass(frozen=True)
class LinkFigures:
    connected: bool
    session: int
    outbox_messages: int
    outbox_bytes: int
    dropped: Mapping[str, int]  # by message kind, since start


@dataclass(frozen=True)
class MetricsSnapshot:
    uid: str
    version: str
    phase: str
    phase_since: float | None  # epoch seconds
    now: float  # epoch seconds
    checks: tuple[tuple[str, str], ...]  # (id, status) of the last full run
    link: LinkFigures | None  # None without a broker configured


def families(snap: MetricsSnapshot, tally: Tally) -> list[Metric]:
    """Every metric of one agent, as prometheus-client metric families."""
    info = GaugeMetricFamily("edge_agent_info", "The agent's identity", labels=["uid", "version"])
    info.add_metric([snap.uid, snap.version], 1)
    phase = GaugeMetricFamily("edge_agent_phase", "1 for the current phase", labels=["phase"])
    for p in Phase:
        phase.add_metric([str(p)], 1 if str(p) == snap.phase else 0)
    since = snap.now - snap.phase_since if snap.phase_since else 0.0
    out: list[Metric] = [
        info,
        phase,
        GaugeMetricFamily(
            "edge_agent_phase_seconds", "Seconds in the current phase", value=max(0.0, since)
        ),
        CounterMetricFamily(
            "edge_agent_join_attempts", "Preflights started towards a join", tally.join_attempts
        ),
        _counter("edge_agent_join_failures", "Failed joins by code", ["code"], tally.join_failures),
        _steps(tally),
        _checks(snap.checks),
        _counter(
            "edge_agent_commands",
            "Command replies by name and state",
            ["name", "state"],
            tally.commands,
        ),
        _counter(
            "edge_agent_controller_errors",
            "Failed controller calls by code",
            ["code"],
            tally.controller_errors,
        ),
    ]
    if snap.link is not None:
        out.extend(_link(snap.link))
    return out


def _counter(
    name: str,
    doc: str,
    labels: list[str],
    values: Mapping[str, int] | Mapping[tuple[str, str], int],
) -> Metric:
    c = CounterMetricFamily(name, doc, labels=labels)
    rows: list[tuple[tuple[str, ...], int]] = [
        ((key,) if isinstance(key, str) else key, n) for key, n in values.items()
    ]
    for key, n in sorted(rows):
        c.add_metric(list(key), n)
    return c


def _steps(tally: Tally) -> Metric:
    h = HistogramMetricFamily(
        "edge_agent_nodeadm_step_seconds", "nodeadm step durations", labels=["step", "outcome"]
    )
    for (step, outcome), s in sorted(tally.steps.items()):
        running, buckets = 0, []
        for bound, n in zip((*STEP_BUCKETS, float("inf")), s.counts, strict=True):
            running += n
            # Prometheus spells bounds as Go does: "30.0", "+Inf".
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        h.add_metric([step, outcome], buckets, s.total)
    return h


def _checks(checks: tuple[tuple[str, str], ...]) -> Metric:
    g = GaugeMetricFamily(
        "edge_agent_check_status", "1 for each check's last result", labels=["check", "status"]
    )
    for check_id, status in checks:
        for s in CHECK_STATUSES:
            g.add_metric([check_id, s], 1 if s == status else 0)
    return g


def _link(link: LinkFigures) -> list[Metric]:
    dropped = CounterMetricFamily(
        "edge_agent_outbox_dropped", "Messages dropped from a full outbox", labels=["kind"]
    )
    for kind, n in sorted(link.dropped.items()):
        dropped.add_metric([kind], n)
    return [
        GaugeMetricFamily(
            "edge_agent_mqtt_connected", "1 while connected to the broker", value=link.connected
        ),
        GaugeMetricFamily(
            "edge_agent_mqtt_session", "The availability session counter", value=link.session
        ),
        GaugeMetricFamily(
            "edge_agent_outbox_messages",
            "Messages waiting for the broker",
            value=link.outbox_messages,
        ),
        GaugeMetricFamily(
            "edge_agent_outbox_bytes", "Bytes waiting for the broker", value=link.outbox_bytes
        ),
        dropped,
    ]


class _Latest(Collector):
    """Serves the families of the last interval (replaced whole, never mutated)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class MetricsExporter:
    """The agent's metrics component: a loop taking a snapshot every ``interval_s``."""

    def __init__(
        self,
        config: MetricsConfig,
        snapshot: Callable[[], MetricsSnapshot],
        *,
        log: Log,
        tally: Tally | None = None,
    ) -> None:
        self.config = config
        self.tally = tally or Tally()
        self._snapshot = snapshot
        self._log = log
        self._latest = _Latest()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._latest)
        self._server: WSGIServer | None = None
        self.address: tuple[str, int] | None = None  # where it listens, once started

    def start(self) -> None:
        """Listen on ``metrics.listen`` (a port in use is logged, not fatal)."""
        if self.config.listen is None or self._server is not None:
            return
        host, _, port = self.config.listen.rpartition(":")
        try:
            server, _thread = start_http_server(int(port), host.strip("[]"), self.registry)
        except OSError as e:
            self._log.error("metrics.listen_failed", listen=self.config.listen, error=str(e))
            return
        self._server = server
        bound_host, bound_port = server.server_address[:2]
        self.address = (str(bound_host), int(bound_port))
        self._log.info("metrics.listening", address=f"{self.address[0]}:{self.address[1]}")

    def publish(self) -> bytes:
        """Take a snapshot, make it what scrapes see, and write the textfile."""
        self._latest.families = families(self._snapshot(), self.tally)
        text = generate_latest(self.registry)
        if self.config.textfile is not None:
            try:
                write_bytes(self.config.textfile, text, 0o644)
            except OSError as e:
                self._log.warning(
                    "metrics.textfile_failed", path=str(self.config.textfile), error=str(e)
                )
        return text

    async def run(self, heartbeat: Callable[[], None] = lambda: None) -> None:
        self.start()
        while True:
            heartbeat()
            self.publish()
            await asyncio.sleep(self.config.interval_s)

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
            self._server = None


__all__ = ["LinkFigures", "MetricsExporter", "MetricsSnapshot", "Tally", "families"]
