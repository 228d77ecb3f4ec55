"""Nothing is lost: under random sink faults every submitted item ends in exactly one place."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data_store.coordinator.dlq import DeadLetterQueue
from market_data_store.coordinator.policy import CircuitBreaker, RetryPolicy
from market_data_store.coordinator.types import (
    OVERFLOW_STRATEGIES,
    CoordinatorNotRunningError,
    OverflowStrategy,
    PermanentSinkError,
    QueueFullError,
    RetryableSinkError,
)
from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback import FeedbackBus

WaitUntil = Callable[..., Awaitable[None]]
FAULTS = ("ok", "ok", "permanent", "transient", "hang")


class FaultySink:
    """Decides each batch's fate by its first item: store, fail for good, fail once, or hang."""

    def __init__(self, plan: Sequence[str]) -> None:
        self.plan = plan
        self.stored: list[int] = []
        self.failed_once: set[int] = set()
        self.hung = 0

    async def write(self, batch: Sequence[int]) -> None:
        fault = self.plan[batch[0] % len(self.plan)]
        if fault == "permanent":
            raise PermanentSinkError(f"batch from {batch[0]} rejected")
        if fault == "transient" and batch[0] not in self.failed_once:
            self.failed_once.add(batch[0])
            raise RetryableSinkError(f"batch from {batch[0]}: try again")
        if fault == "hang":
            self.hung += 1
            await asyncio.Future()  # forever: only the stop deadline ends it
        self.stored.extend(batch)


@dataclass(frozen=True)
class Run:
    strategy: OverflowStrategy
    capacity: int
    workers: int
    batch_size: int
    items: int
    chunk: int  # 0: submit() one by one; else submit_many() in chunks of this size
    plan: tuple[str, ...]
    failure_threshold: int
    drain: bool


runs = st.builds(
    Run,
    strategy=st.sampled_from(OVERFLOW_STRATEGIES),
    capacity=st.integers(1, 30),
    workers=st.integers(1, 4),
    batch_size=st.integers(1, 8),
    items=st.integers(0, 80),
    chunk=st.integers(0, 12),
    plan=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=8).map(tuple),
    failure_threshold=st.integers(1, 20),
    drain=st.booleans(),
).map(lambda run: dataclasses.replace(run, batch_size=min(run.batch_size, run.capacity)))
# batch_size > capacity is a ConfigError since issue 9: draw only valid coordinators.


async def run_faults(run: Run, dlq_path: Path, wait_until: WaitUntil) -> None:
    sink = FaultySink(run.plan)
    dlq: DeadLetterQueue[int] = DeadLetterQueue(dlq_path)
    dropped: list[int] = []
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=sink,
        capacity=run.capacity,
        workers=run.workers,
        batch_size=run.batch_size,
        flush_interval=0.005,
        overflow_strategy=run.strategy,
        drop_callback=dropped.append,
        retry_policy=RetryPolicy(max_attempts=3, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(run.failure_threshold, half_open_after_sec=0.005),
        dlq=dlq,
        coord_id="conservation",
        bus=FeedbackBus(),
    )
    offered = list(range(run.items))
    accepted: list[int] = []

    async def produce() -> None:
        step = run.chunk or 1
        for start in range(0, len(offered), step):
            part = offered[start : start + step]
            try:
                if run.chunk:
                    await coord.submit_many(part)
                else:
                    await coord.submit(part[0])
            except QueueFullError:
                continue
            except CoordinatorNotRunningError:
                return
            accepted.extend(part)

    await coord.start()
    producer = asyncio.create_task(produce())
    breaker = coord.circuit_breaker

    def stuck() -> bool:
        """Every worker hangs, or a probe hangs and the rest wait for it: no more progress."""
        return sink.hung == run.workers or (sink.hung > 0 and breaker.state != "closed")

    # Stop once the producer is done or nothing can progress any more (a blocked producer
    # would wait forever): the stop deadline must sort out what is left either way.
    await wait_until(lambda: producer.done() or stuck(), timeout=5.0)
    assert coord.health().workers_alive == run.workers, "a worker died of a sink fault"
    await coord.stop(drain=run.drain, timeout=0.05)
    await producer
    await coord.queue.join_callbacks()

    stats = coord.stats()
    written = sink.stored
    dead = [item for record in await dlq.replay(max_records=10**6) for item in record.items]
    assert len(set(written)) == len(written), "an item was written twice"
    assert len(set(dead)) == len(dead), "an item was dead-lettered twice"
    assert len(set(dropped)) == len(dropped), "an item was dropped twice"
    places = [set(written), set(dead), set(dropped)]
    assert not (places[0] & places[1] or places[0] & places[2] or places[1] & places[2])
    assert set(accepted) <= places[0] | places[1] | places[2] <= set(offered)
    assert stats.queue_size == 0
    assert len(written) + len(dead) + sum(stats.dropped.values()) == stats.submitted
    assert len(dropped) == sum(stats.dropped.values()) == coord.queue.stats().dropped
    assert (stats.written, stats.dead_lettered) == (len(written), len(dead))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(run=runs)
def test_written_plus_dead_lettered_plus_dropped_equals_submitted(
    run: Run, tmp_path: Path, wait_until: WaitUntil
) -> None:
    """Under random faults each submitted item is written, dead-lettered or dropped, once."""
    dlq_path = tmp_path / f"dlq-{uuid.uuid4().hex}.ndjson"
    asyncio.run(run_faults(run, dlq_path, wait_until))
