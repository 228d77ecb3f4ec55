"""Prometheus figures of a coordinator, read from the default registry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from market_data_store.coordinator import (
    DeadLetterQueue,
    FeedbackBus,
    PermanentSinkError,
    RetryPolicy,
    WriteCoordinator,
)
from market_data_store.coordinator.metrics import LATENCY_BUCKETS, LatencyHistogram
from market_data_store.testing.waits import wait_until


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class GateSink:
    """Holds every write until ``gate`` is set; rejects batches holding a negative item."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def write(self, batch: Sequence[int]) -> None:
        await self.gate.wait()
        if any(item < 0 for item in batch):
            raise PermanentSinkError("negative item")


async def test_coordinator_figures_are_exported_and_stay_monotonic_after_stop(
    tmp_path: Path,
) -> None:
    """Submitted, dropped, depth, workers, circuit, written and DLQ are exported while running."""
    cid = f"metrics-{uuid.uuid4().hex[:8]}"
    sink = GateSink()
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=sink,
        capacity=10,
        workers=2,
        batch_size=5,
        flush_interval=0.01,
        overflow_strategy="drop_oldest",
        retry_policy=RetryPolicy(initial_backoff_ms=0),
        dlq=DeadLetterQueue(tmp_path / "dlq.ndjson"),
        coord_id=cid,
        bus=FeedbackBus(),
    )
    await coord.start()
    await coord.submit_many([-1, *range(1, 5)])  # the first batch will be dead-lettered
    await wait_until(lambda: coord.queue.size == 0)  # both workers hold a batch
    await coord.submit_many(range(100, 115))  # 15 into a queue of 10: 5 dropped
    assert sample("mds_coordinator_submitted_total", coordinator_id=cid) == 20
    assert sample("mds_coordinator_dropped_total", coordinator_id=cid, reason="overflow") == 5
    assert sample("mds_queue_depth", coordinator_id=cid) == 10
    assert sample("mds_workers_alive", coordinator_id=cid) == 2
    assert sample("mds_circuit_state", coordinator_id=cid) == 0

    sink.gate.set()
    await wait_until(lambda: coord.stats().written == 14 and coord.stats().dead_lettered == 1)
    assert sample("mds_items_written_total", coordinator_id=cid) == 14
    assert sample("mds_dlq_items_total", coordinator_id=cid) == 1  # only the bad item
    assert sample("mds_dlq_records_total", coordinator_id=cid) == 1
    assert sample("mds_write_errors_total", coordinator_id=cid, error_type="PermanentSinkError")
    # One latency observation per successful sink call, cumulative buckets, a positive sum.
    calls = coord.stats().batches_written
    assert calls >= 3
    assert sample("mds_write_latency_seconds_count", coordinator_id=cid) == calls
    assert sample("mds_write_latency_seconds_bucket", coordinator_id=cid, le="+Inf") == calls
    assert sample("mds_write_latency_seconds_bucket", coordinator_id=cid, le="0.0005") <= calls
    assert sample("mds_write_latency_seconds_sum", coordinator_id=cid) > 0
    await coord.stop()
    assert labelled(cid) == []  # every label set of a stopped coordinator id is removed


def labelled(cid: str) -> list[str]:
    """Every exported write-path sample (name) carrying ``coordinator_id=cid`` (the
    feedback metrics belong to the signal path)."""
    return [
        sample.name
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.labels.get("coordinator_id") == cid and not metric.name.startswith("mds_feedback")
    ]


async def test_counters_of_an_id_still_live_never_go_backwards(tmp_path: Path) -> None:
    """Stopping one of two coordinators sharing an id keeps that id's counters; the last
    one stopping removes them."""
    cid = f"shared-{uuid.uuid4().hex[:8]}"

    class Sink:
        async def write(self, batch: Sequence[int]) -> None:
            if any(item < 0 for item in batch):
                raise PermanentSinkError("negative item")

    def make() -> WriteCoordinator[int]:
        return WriteCoordinator(
            sink=Sink(),
            batch_size=10,
            flush_interval=0.01,
            dlq=DeadLetterQueue(tmp_path / f"{uuid.uuid4().hex}.ndjson"),
            coord_id=cid,
            bus=FeedbackBus(),
        )

    first, second = make(), make()
    await first.start()
    await second.start()
    await first.submit_many([-1, 1, 2])
    await second.submit_many([3, 4])
    await wait_until(lambda: first.stats().written + second.stats().written == 4)
    await wait_until(lambda: first.stats().dead_lettered == 1)
    before = {name: sample(name, coordinator_id=cid) for name in COUNTERS}
    await first.stop()
    after = {name: sample(name, coordinator_id=cid) for name in COUNTERS}
    assert after == before
    assert before["mds_coordinator_submitted_total"] == 5
    assert before["mds_write_latency_seconds_count"] >= 2  # a call each, at least
    await second.stop()
    assert labelled(cid) == []


COUNTERS = (
    "mds_coordinator_submitted_total",
    "mds_items_written_total",
    "mds_batches_written_total",
    "mds_dlq_items_total",
    "mds_write_latency_seconds_count",
    "mds_write_latency_seconds_sum",
)


async def test_feedback_event_label_sets_go_with_the_last_coordinator_of_an_id() -> None:
    """mds_feedback_events_total of a stopped coordinator id is removed once the bus has
    counted its last events (the final OK "stopped" included), so ids do not pile up."""
    cid = f"fb-{uuid.uuid4().hex[:8]}"
    bus = FeedbackBus()
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=GateSink(), capacity=10, workers=1, batch_size=1, coord_id=cid, bus=bus
    )
    await coord.start()
    await coord.submit_many(range(9))  # a worker holds one, the queue crosses into HARD
    await bus.flush()
    assert sample("mds_feedback_events_total", coordinator_id=cid, level="hard") == 1
    await coord.stop(timeout=0.2)

    def feedback_samples() -> list[str]:
        return [
            sample.name
            for metric in REGISTRY.collect()
            if metric.name == "mds_feedback_events"
            for sample in metric.samples
            if sample.labels.get("coordinator_id") == cid
        ]

    await wait_until(lambda: feedback_samples() == [], what="feedback label sets removed")


def test_latency_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """An observation equal to a bound counts in that bound's bucket (Prometheus' le), every
    bucket counts what the lower ones do, +Inf counts everything, and add() folds two."""
    histogram = LatencyHistogram()
    for seconds in (0.0005, 0.0006, 0.3, 99.0):
        histogram.observe(seconds)
    buckets = dict(histogram.buckets())
    assert list(buckets) == [*map(str, LATENCY_BUCKETS), "+Inf"]
    assert buckets["0.0005"] == 1  # le: the bound itself is inside
    assert buckets["0.001"] == 2
    assert buckets["0.25"] == 2 and buckets["0.5"] == 3
    assert buckets["5.0"] == 3 and buckets["+Inf"] == 4
    other = LatencyHistogram()
    other.observe(0.0001)
    histogram.add(other)
    assert dict(histogram.buckets())["0.0005"] == 2
    assert histogram.total == pytest.approx(0.0005 + 0.0006 + 0.3 + 99.0 + 0.0001)
