"""Metrics: `factory-metrics` and the same figures as Prometheus text on a local port.

Owns: a private `prometheus_client` registry holding (1) a collector that turns the records into
figures at each scrape (`figures.py`, pure: no RPC, so a scrape never waits on lightningd and may
run on the HTTP server's thread), (2) the peers rate-limited (`ratelimit.stats`), (3) histograms of
creation phase timings (seconds, from the `factory_created` event) and migration steps (blocks,
from `migration_step` and `handover` events). The endpoint is off unless the operator sets
`superscalar-metrics-port`; it binds `superscalar-metrics-address` (default 127.0.0.1).
May call: nothing of lightningd.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..lightningd import ratelimit
from ..lightningd.node import Node
from ..lightningd.records import Records
from . import events
from .figures import COUNTER, Figure, figures

log = logging.getLogger("superscalar")

CREATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MIGRATION_BUCKETS = (1.0, 3.0, 6.0, 12.0, 36.0, 72.0, 144.0, 288.0, 432.0, 1008.0)


def _family(f: Figure) -> Metric:
    labels = list(f.label_names)
    family: Metric
    if f.kind == COUNTER:
        family = CounterMetricFamily(f.name, f.help, labels=labels)
    else:
        family = GaugeMetricFamily(f.name, f.help, labels=labels)
    for s in f.samples:
        family.add_metric([v for _, v in s.labels], s.value)
    return family


class _RecordsCollector(Collector):  # type: ignore[misc]
    def __init__(self, records: Records, node: Node) -> None:
        self._records = records
        self._node = node

    def collect(self) -> Iterator[Metric]:
        for f in figures(self._records.all(), self._node.height, self._node.config.dying_blocks):
            yield _family(f)
        limiting, left_out = ratelimit.stats()
        yield GaugeMetricFamily(
            "superscalar_peers_rate_limited",
            "Peers (or other sources) whose log lines are being left out now",
            value=limiting,
        )
        yield CounterMetricFamily(
            "superscalar_log_lines_suppressed",
            "Log lines a peer triggered that the rate limit left out",
            value=left_out,
        )


class Metrics:
    def __init__(self, records: Records, node: Node) -> None:
        self._node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RecordsCollector(records, node))
        self.creation = Histogram(
            "superscalar_creation_phase_seconds",
            "LSP: seconds each phase of a factory creation took",
            ["phase"],
            registry=self.registry,
            buckets=CREATION_BUCKETS,
        )
        self.migration = Histogram(
            "superscalar_migration_step_blocks",
            "LSP: blocks from the start of a factory's migration to each of its steps",
            ["step"],
            registry=self.registry,
            buckets=MIGRATION_BUCKETS,
        )
        self._migration_start: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        events.listen(self.on_event)

    def on_event(self, topic: str, fields: dict[str, Any]) -> None:
        if topic == events.FACTORY_CREATED:
            for phase, seconds in fields.get("timings", {}).items():
                self.creation.labels(phase=phase).observe(float(seconds))
            return
        if topic not in (events.MIGRATION_STEP, events.HANDOVER):
            return
        instance, height = str(fields["instance"]), int(fields["height"])
        with self._lock:
            start = self._migration_start.setdefault(instance, height)
            if topic == events.HANDOVER:
                self._migration_start.pop(instance, None)
        step = "handover" if topic == events.HANDOVER else str(fields.get("step"))
        self.migration.labels(step=step).observe(max(0, height - start))

    def as_json(self) -> dict[str, Any]:
        """What `factory-metrics` answers: every metric, its type, help and samples."""
        out = []
        for metric in self.registry.collect():
            out.append(
                {
                    "name": metric.name,
                    "type": metric.type,
                    "help": metric.documentation,
                    "samples": [
                        {"name": s.name, "labels": dict(s.labels), "value": s.value}
                        for s in metric.samples
                        if not s.name.endswith("_created")
                    ],
                }
            )
        return {"blockheight": self._node.height, "metrics": out}

    def serve(self, address: str, port: int) -> None:
        """Start the Prometheus endpoint (its own thread); a failure is logged, never fatal."""
        try:
            self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as e:
            log.warning("metrics endpoint %s:%d not started: %s", address, port, e)
            return
        log.info("metrics endpoint listening on %s:%d", address, port)

    def stop(self) -> None:
        events.unlisten(self.on_event)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
