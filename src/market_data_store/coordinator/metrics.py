"""Prometheus metrics (default registry) of the write path (the signal path's are in
``market_data_store.feedback.metrics``).

Counts the coordinator keeps anyway (submitted, written, batches written, dropped, queue
depth) are plain integers in each coordinator's ``stats()`` snapshot, and the write latency
is a ``LatencyHistogram`` of plain numbers; a collector reads them at scrape time, so neither
the hot path nor a worker's success path touches a labelled child or a lock. Failure-path
figures (write errors, DLQ, worker restarts) use ordinary metrics.

Label sets are bounded: when the last running coordinator with a given id stops (or is
garbage-collected), every labelled child of that id is removed and its retired totals are
forgotten. While another coordinator with the same id is running, the stopped one's final
counts are folded into retired totals instead, so an exported counter never goes backwards
for an id that is still live. A later coordinator reusing a forgotten id starts from zero,
which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from market_data_store.feedback import metrics as feedback_metrics

WRITE_ERRORS = Counter(
    "mds_write_errors", "Failed sink calls by error type", ["coordinator_id", "error_type"]
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of ``mds_write_latency_seconds``; a last bucket is ``+Inf``."""
DLQ_RECORDS = Counter(
    "mds_dlq_records", "Batches written to the dead-letter queue", ["coordinator_id"]
)
DLQ_ITEMS = Counter("mds_dlq_items", "Items written to the dead-letter queue", ["coordinator_id"])
WORKER_RESTARTS = Counter(
    "mds_worker_restarts",
    "Workers replaced after ending for a reason other than cancellation",
    ["coordinator_id"],
)
_PER_COORDINATOR = (
    DLQ_RECORDS,
    DLQ_ITEMS,
    WORKER_RESTARTS,
)


class LatencyHistogram:
    """Durations of one coordinator's successful sink calls, exported at scrape time as
    ``mds_write_latency_seconds``: a count per bucket of ``LATENCY_BUCKETS`` (the last one
    ``+Inf``) and their sum. ``observe`` is a bisect and two additions, against about 2 us
    for prometheus_client's ``Histogram.observe`` (a lock per value it updates), and it runs
    once per batch written."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one sink call that took ``seconds``."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def add(self, other: LatencyHistogram) -> None:
        """Fold ``other``'s observations into this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, as a Prometheus histogram exports them."""
        bounds = [*map(str, LATENCY_BUCKETS), "+Inf"]
        cumulative, running = [], 0
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative


class StatsSnapshot(Protocol):
    """The part of ``WriteCoordinator.stats()`` the collector exports."""

    @property
    def submitted(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def batches_written(self) -> int: ...
    @property
    def dropped(self) -> dict[str, int]: ...
    @property
    def queue_size(self) -> int: ...
    @property
    def workers_alive(self) -> int: ...
    @property
    def circuit_state(self) -> str: ...


class StatsSource(Protocol):
    """What the collector reads: a coordinator id and its stats snapshot."""

    @property
    def coord_id(self) -> str: ...

    def stats(self) -> StatsSnapshot: ...


CIRCUIT_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

# Live sources, each with the finalizer that releases its id should it be collected unretired.
_live: weakref.WeakKeyDictionary[Any, weakref.finalize[Any, Any]] = weakref.WeakKeyDictionary()
_live_ids: dict[str, int] = {}  # coordinator id -> live sources with that id
_error_types: dict[str, set[str]] = {}  # coordinator id -> error_type labels in use
# Counters read from the ledger at scrape time: exported name and help, by stats field.
_COUNTED = {
    "submitted": ("mds_coordinator_submitted", "Items accepted by submit()"),
    "written": ("mds_items_written", "Items written by sinks"),
    "batches_written": ("mds_batches_written", "Batches written by sinks"),
}
# Final counts of stopped coordinators whose id is still live, so counters never go backwards.
_retired_counts: dict[tuple[str, str], float] = {}  # (coordinator id, stats field) -> total
_retired_dropped: dict[tuple[str, str], float] = {}
_latency: weakref.WeakKeyDictionary[Any, LatencyHistogram] = weakref.WeakKeyDictionary()
_retired_latency: dict[str, LatencyHistogram] = {}  # coordinator id -> stopped ones' latencies


def track(source: StatsSource, latency: LatencyHistogram) -> None:
    """Expose ``source``'s figures and ``latency`` until ``retire`` is called (or it is
    collected)."""
    if source in _live:
        return
    cid = source.coord_id
    _live[source] = weakref.finalize(source, _release_id, cid)
    _latency[source] = latency
    _live_ids[cid] = _live_ids.get(cid, 0) + 1


def retire(source: StatsSource) -> None:
    """Stop exposing ``source``: fold its final counts into the retired totals while its id
    is still live elsewhere, else remove every label set of its id."""
    finalizer = _live.pop(source, None)
    if finalizer is None:
        return
    finalizer.detach()
    latency = _latency.pop(source, None)
    if _live_ids.get(source.coord_id, 0) > 1:
        _add_counts(source.coord_id, source.stats(), _retired_counts, _retired_dropped)
        if latency is not None:
            _retired_latency.setdefault(source.coord_id, LatencyHistogram()).add(latency)
    _release_id(source.coord_id)


def count_write_error(coord_id: str, error_type: str) -> None:
    """Count one failed sink call (remembering the label set, to remove it at retirement)."""
    WRITE_ERRORS.labels(coord_id, error_type).inc()
    _error_types.setdefault(coord_id, set()).add(error_type)


def _release_id(coord_id: str) -> None:
    left = _live_ids.get(coord_id, 0) - 1
    if left > 0:
        _live_ids[coord_id] = left
        return
    _live_ids.pop(coord_id, None)
    _forget_feedback_events(coord_id)
    for metric in _PER_COORDINATOR:
        _remove(metric, coord_id)
    for error_type in _error_types.pop(coord_id, set()):
        _remove(WRITE_ERRORS, coord_id, error_type)
    for field in _COUNTED:
        _retired_counts.pop((coord_id, field), None)
    _retired_latency.pop(coord_id, None)
    for key in [key for key in _retired_dropped if key[0] == coord_id]:
        del _retired_dropped[key]


def _forget_feedback_events(coord_id: str) -> None:
    """Remove the id's feedback-event label sets once the bus has counted the events already
    handed to it (its dispatch, e.g. of the final ``stopped`` event, is scheduled first)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        feedback_metrics.forget_coordinator(coord_id)
    else:
        loop.call_soon(_forget_unless_live, coord_id)


def _forget_unless_live(coord_id: str) -> None:
    if coord_id not in _live_ids:  # not restarted under the same id in the meantime
        feedback_metrics.forget_coordinator(coord_id)


def _remove(metric: Counter | Histogram, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:  # never used by this coordinator
        pass


def _add_counts(
    coord_id: str,
    stats: StatsSnapshot,
    counts: dict[tuple[str, str], float],
    dropped: dict[tuple[str, str], float],
) -> None:
    for field in _COUNTED:
        counts[(coord_id, field)] = counts.get((coord_id, field), 0.0) + getattr(stats, field)
    for reason, n in stats.dropped.items():
        dropped[(coord_id, reason)] = dropped.get((coord_id, reason), 0.0) + n


class _CoordinatorCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        counted = {
            field: CounterMetricFamily(name, doc, labels=["coordinator_id"])
            for field, (name, doc) in _COUNTED.items()
        }
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
        latency = HistogramMetricFamily(
            "mds_write_latency_seconds",
            "Duration of successful sink calls",
            labels=["coordinator_id"],
        )
        count_totals = dict(_retired_counts)
        drop_totals = dict(_retired_dropped)
        latency_totals: dict[str, LatencyHistogram] = {}
        for cid, retired in _retired_latency.items():
            latency_totals.setdefault(cid, LatencyHistogram()).add(retired)
        for source in list(_live):
            stats, cid = source.stats(), source.coord_id
            _add_counts(cid, stats, count_totals, drop_totals)
            observed = _latency.get(source)
            if observed is not None:
                latency_totals.setdefault(cid, LatencyHistogram()).add(observed)
            depth.add_metric([cid], stats.queue_size)
            alive.add_metric([cid], stats.workers_alive)
            circuit.add_metric([cid], CIRCUIT_STATE_VALUES[stats.circuit_state])
        for (cid, field), n in count_totals.items():
            counted[field].add_metric([cid], n)
        for (cid, reason), n in drop_totals.items():
            dropped.add_metric([cid, reason], n)
        for cid, histogram in latency_totals.items():
            latency.add_metric([cid], histogram.buckets(), histogram.total)
        yield from (*counted.values(), dropped, depth, alive, circuit, latency)


_collector = _CoordinatorCollector()
REGISTRY.register(_collector)
