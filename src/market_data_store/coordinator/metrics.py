"""Prometheus metrics (default registry) for the coordinator, the feedback bus and the webhook.

Per-item figures (submitted, dropped, queue depth) are plain integers in each coordinator's
``stats()`` snapshot and are read by a collector at scrape time, so the hot path never touches
a labelled child or a lock. Per-batch figures use ordinary counters, updated once per batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FEEDBACK_EVENTS = Counter(
    "mds_feedback_events",
    "Feedback events published, by coordinator and level",
    ["coordinator_id", "level"],
)
FEEDBACK_SUBSCRIBERS = Gauge("mds_feedback_subscribers", "Subscribers registered on feedback buses")
FEEDBACK_SUBSCRIBER_ERRORS = Counter(
    "mds_feedback_subscriber_errors", "Exceptions raised by feedback subscribers", ["subscriber"]
)
FEEDBACK_COALESCED = Counter(
    "mds_feedback_coalesced", "Intermediate events skipped for subscribers that fell behind"
)
WEBHOOK_SENDS = Counter(
    "mds_feedback_webhook_sends", "Webhook POST attempts by outcome", ["outcome"]
)
WEBHOOK_DROPPED = Counter(
    "mds_feedback_webhook_dropped", "Webhook events given up on or superseded", ["reason"]
)

BATCHES_WRITTEN = Counter("mds_batches_written", "Batches written by sinks", ["coordinator_id"])
ITEMS_WRITTEN = Counter("mds_items_written", "Items written by sinks", ["coordinator_id"])
WRITE_ERRORS = Counter(
    "mds_write_errors", "Failed sink calls by error type", ["coordinator_id", "error_type"]
)
WRITE_LATENCY = Histogram(
    "mds_write_latency_seconds",
    "Duration of successful sink calls",
    ["coordinator_id"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DLQ_RECORDS = Counter(
    "mds_dlq_records", "Batches written to the dead-letter queue", ["coordinator_id"]
)
DLQ_ITEMS = Counter("mds_dlq_items", "Items written to the dead-letter queue", ["coordinator_id"])

_feedback_children: dict[tuple[str, str], Any] = {}


def count_feedback_event(coordinator_id: str, level: str) -> None:
    """Increment ``mds_feedback_events_total`` through a cached child."""
    child = _feedback_children.get((coordinator_id, level))
    if child is None:
        child = _feedback_children[(coordinator_id, level)] = FEEDBACK_EVENTS.labels(
            coordinator_id=coordinator_id, level=level
        )
    child.inc()


class StatsSource(Protocol):
    """What the collector reads: a coordinator id and a stats snapshot."""

    @property
    def coord_id(self) -> str: ...

    def metric_values(self) -> Mapping[str, Any]: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_retired: dict[tuple[str, str], float] = {}

CIRCUIT_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def track(source: StatsSource) -> None:
    """Expose ``source``'s figures until ``retire`` is called."""
    _live.add(source)


def retire(source: StatsSource) -> None:
    """Fold ``source``'s final counts into the retired totals (keeps counters monotonic)."""
    if source in _live:
        _live.discard(source)
        values = source.metric_values()
        _retired_add(source.coord_id, "submitted", values["submitted"])
        for reason, n in values["dropped"].items():
            _retired_add(source.coord_id, f"dropped:{reason}", n)


def _retired_add(coord_id: str, key: str, n: float) -> None:
    _retired[(coord_id, key)] = _retired.get((coord_id, key), 0.0) + n


class _CoordinatorCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        submitted = CounterMetricFamily(
            "mds_coordinator_submitted", "Items accepted by submit()", labels=["coordinator_id"]
        )
        dropped = CounterMetricFamily(
            "mds_coordinator_dropped",
            "Items dropped, by reason",
            labels=["coordinator_id", "reason"],
        )
        depth = GaugeMetricFamily("mds_queue_depth", "Items queued", labels=["coordinator_id"])
        alive = GaugeMetricFamily("mds_workers_alive", "Live workers", labels=["coordinator_id"])
        circuit = GaugeMetricFamily(
            "mds_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["coordinator_id"],
        )
        sub_totals: dict[str, float] = {}
        drop_totals: dict[tuple[str, str], float] = {}
        for (coord_id, key), n in _retired.items():
            if key == "submitted":
                sub_totals[coord_id] = sub_totals.get(coord_id, 0.0) + n
            else:
                reason = key.split(":", 1)[1]
                drop_totals[(coord_id, reason)] = drop_totals.get((coord_id, reason), 0.0) + n
        for source in list(_live):
            values = source.metric_values()
            cid = source.coord_id
            sub_totals[cid] = sub_totals.get(cid, 0.0) + values["submitted"]
            for reason, n in values["dropped"].items():
                drop_totals[(cid, reason)] = drop_totals.get((cid, reason), 0.0) + n
            depth.add_metric([cid], values["queue_size"])
            alive.add_metric([cid], values["workers_alive"])
            circuit.add_metric([cid], CIRCUIT_STATE_VALUES[values["circuit_state"]])
        for cid, n in sub_totals.items():
            submitted.add_metric([cid], n)
        for (cid, reason), n in drop_totals.items():
            dropped.add_metric([cid, reason], n)
        yield from (submitted, dropped, depth, alive, circuit)


_collector = _CoordinatorCollector()
REGISTRY.register(_collector)


def cached_child(metric: Any, cache: dict[tuple[str, ...], Any]) -> Callable[..., Any]:
    """Return a ``labels(*values)`` that caches children (labels() takes a lock each call)."""

    def child(*values: str) -> Any:
        found = cache.get(values)
        if found is None:
            found = cache[values] = metric.labels(*values)
        return found

    return child
