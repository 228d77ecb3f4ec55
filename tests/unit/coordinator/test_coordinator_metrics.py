"""Prometheus figures of a coordinator, read from the default registry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY

from market_data_store.coordinator import (
    DeadLetterQueue,
    FeedbackBus,
    PermanentSinkError,
    RetryPolicy,
    WriteCoordinator,
)
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
    """Submitted, dropped by reason, depth, workers, circuit, written and DLQ are exported."""
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
    await coord.stop()
    assert sample("mds_items_written_total", coordinator_id=cid) == 10
    assert sample("mds_dlq_items_total", coordinator_id=cid) == 5
    assert sample("mds_dlq_records_total", coordinator_id=cid) == 1
    # A stopped coordinator's counts are kept, so the counters never go backwards.
    assert sample("mds_coordinator_submitted_total", coordinator_id=cid) == 20
    assert sample("mds_coordinator_dropped_total", coordinator_id=cid, reason="overflow") == 5
    assert sample("mds_queue_depth", coordinator_id=cid) == 0  # no longer exported
