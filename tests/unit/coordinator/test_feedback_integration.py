"""Feedback emitted by a running WriteCoordinator, as the pipeline sees it on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from market_data_store.coordinator import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    WriteCoordinator,
)
from market_data_store.testing.waits import wait_until

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD


class GatedSink:
    """Writes nothing until ``gate`` is set, so tests decide when the queue drains."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.items: list[int] = []

    async def write(self, batch: Sequence[int]) -> None:
        await self.gate.wait()
        self.items.extend(batch)


class Recorder:
    """A subscriber that keeps every event it gets."""

    def __init__(self) -> None:
        self.events: list[FeedbackEvent] = []

    async def __call__(self, event: FeedbackEvent) -> None:
        self.events.append(event)

    def levels(self, coordinator_id: str | None = None) -> list[tuple[str, str | None]]:
        return [
            (e.level.value, e.reason)
            for e in self.events
            if coordinator_id is None or e.coordinator_id == coordinator_id
        ]


def coordinator(sink: GatedSink, bus: FeedbackBus, coord_id: str = "c1") -> WriteCoordinator[int]:
    # One worker taking one item at a time: the queue holds all but that one.
    return WriteCoordinator(
        sink=sink,
        capacity=10,
        high_watermark=8,
        low_watermark=4,
        workers=1,
        batch_size=1,
        max_batch_size=1,
        flush_interval=0.01,
        coord_id=coord_id,
        bus=bus,
    )


async def test_coordinator_emits_soft_then_hard_when_filling_and_ok_on_recovery() -> None:
    """Filling past low emits SOFT, reaching high emits HARD, draining to low emits OK."""
    bus, rec, sink = FeedbackBus(), Recorder(), GatedSink()
    bus.subscribe(rec)
    async with coordinator(sink, bus) as coord:
        for i in range(9):  # one item is held by the worker, eight are queued
            await coord.submit(i)
        await bus.flush()
        assert rec.levels() == [("soft", None), ("hard", None)]
        assert coord.health().level is HARD
        sink.gate.set()
        await wait_until(lambda: len(sink.items) == 9)
        await bus.flush()
        assert rec.levels() == [("soft", None), ("hard", None), ("ok", "queue_recovered")]
    await bus.flush()
    assert rec.levels()[-1] == ("ok", "stopped")


async def test_soft_is_emitted_for_a_queue_that_stays_between_the_watermarks() -> None:
    """A queue filled into the mid-range emits SOFT and nothing else."""
    bus, rec, sink = FeedbackBus(), Recorder(), GatedSink()
    bus.subscribe(rec)
    coord = coordinator(sink, bus)
    await coord.start()
    for i in range(7):  # 6 queued: above low (4), below high (8)
        await coord.submit(i)
    await bus.flush()
    assert rec.levels() == [("soft", None)]
    sink.gate.set()
    await coord.stop()


async def test_two_coordinators_at_once_keep_their_ids_and_sequences_apart() -> None:
    """Each event carries its coordinator's id, and seq counts up by one per coordinator."""
    bus, rec = FeedbackBus(), Recorder()
    bus.subscribe(rec)
    sinks = {"alpha": GatedSink(), "beta": GatedSink()}
    coords = {cid: coordinator(sink, bus, cid) for cid, sink in sinks.items()}
    for coord in coords.values():
        await coord.start()

    async def produce(coord: WriteCoordinator[int], n: int) -> None:
        for i in range(n):
            await coord.submit(i)

    await asyncio.gather(produce(coords["alpha"], 9), produce(coords["beta"], 6))
    await bus.flush()
    assert rec.levels("alpha") == [("soft", None), ("hard", None)]
    assert rec.levels("beta") == [("soft", None)]
    for sink in sinks.values():
        sink.gate.set()
    for coord in coords.values():
        await coord.stop()
    await bus.flush()
    for cid in coords:
        events = [e for e in rec.events if e.coordinator_id == cid]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert all(e.capacity == 10 for e in events)
        assert events[-1].level is OK and events[-1].reason == "stopped"


async def test_a_subscriber_that_never_returns_blocks_neither_submit_nor_other_subscribers() -> (
    None
):
    """Submits crossing the watermarks return while one subscriber hangs; others get all."""
    bus, rec = FeedbackBus(), Recorder()
    hung_calls: list[FeedbackEvent] = []
    never = asyncio.get_running_loop().create_future()

    async def hung(event: FeedbackEvent) -> None:
        hung_calls.append(event)
        await never

    bus.subscribe(hung)
    bus.subscribe(rec)
    sink = GatedSink()
    sink.gate.set()
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=sink,
        capacity=20,
        high_watermark=16,
        low_watermark=8,
        workers=1,
        batch_size=20,
        flush_interval=0.001,
        coord_id="hung",
        bus=bus,
    )
    async with coord:
        async with asyncio.timeout(5):
            for _ in range(20):
                await coord.submit_many(range(18))  # up to HARD ...
                await wait_until(lambda: coord.queue.level is OK)  # ... and back to OK
        assert coord.stats().submitted == 20 * 18
    await wait_until(lambda: len(rec.levels("hung")) >= 41)
    levels = rec.levels("hung")
    assert levels.count(("hard", None)) == 20
    assert levels.count(("ok", "queue_recovered")) == 20
    assert levels[-1] == ("ok", "stopped")
    assert len(hung_calls) == 1  # it is still stuck on its first event
    never.cancel()
