"""Prometheus metrics, one registry per app (several apps can live in one test process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "crdt_sync_http_requests_total", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "crdt_sync_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.mutations = Counter(
            "crdt_sync_mutations_total", "Pushed mutations by result", ["status"], registry=r
        )
        self.full_resyncs = Counter(
            "crdt_sync_full_resyncs_total",
            "410 full_resync_required answers",
            ["reason"],
            registry=r,
        )
        self.pulled_changes = Counter(
            "crdt_sync_pulled_changes_total", "Changes sent to devices on pull", registry=r
        )
        self.readonly_dropped = Counter(
            "crdt_sync_readonly_updates_dropped_total",
            "Yjs updates from read-only (learner) room clients, dropped",
            registry=r,
        )
        self.room_connections = Gauge(
            "crdt_sync_room_connections", "Open room WebSocket connections", registry=r
        )
        self.rooms = Gauge("crdt_sync_rooms", "Loaded rooms", registry=r)
        self.doc_updates = Counter(
            "crdt_sync_doc_updates_total", "Yjs updates stored", ["source"], registry=r
        )
        self.doc_merges = Counter(
            "crdt_sync_doc_merges_total", "Yjs merges (archived first)", ["source"], registry=r
        )
        self.pruned = Counter(
            "crdt_sync_pruned_total", "Rows removed by retention", ["kind"], registry=r
        )

    def count_from(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter whose value is read from elsewhere at each scrape."""

        class _Read:
            def collect(self) -> Iterator[Metric]:
                family = CounterMetricFamily(name, documentation)
                family.add_metric([], read())
                yield family

        self.registry.register(_Read())  # type: ignore[arg-type]

    def render(self) -> bytes:
        return generate_latest(self.registry)
