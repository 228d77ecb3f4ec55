"""Adaptive batches (DESIGN.md section 8): a deep queue drains in batches of max_batch_size."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from market_data_store.coordinator import WriteCoordinator
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.types import ConfigError
from market_data_store.coordinator.write_coordinator import DEFAULT_MAX_BATCH_SIZE
from market_data_store.feedback import BackpressureLevel, FeedbackBus
from market_data_store.testing.waits import wait_until

DEADLINE = 5.0  # seconds; every wait below is bounded by it


class HeldSink:
    """Records batches; writes wait for ``release`` until it is set, so that the queue fills."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.held = 0

    async def write(self, batch: Sequence[int]) -> None:
        if not self.release.is_set():
            self.held += 1
            await self.release.wait()
        self.batches.append(list(batch))

    @property
    def written(self) -> int:
        return sum(map(len, self.batches))


def make(sink: HeldSink, **kwargs: Any) -> WriteCoordinator[int]:
    kwargs.setdefault("capacity", 50)
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("flush_interval", 0.01)
    # A deep take stops at the high watermark: 1 (and low 0) lets it take all but one.
    kwargs.setdefault("high_watermark", 1)
    kwargs.setdefault("low_watermark", 0)
    return WriteCoordinator(sink=sink, bus=FeedbackBus(), **kwargs)


async def hand_to_a_worker(
    coord: WriteCoordinator[int], sink: HeldSink, items: range, held: int
) -> None:
    """Submit ``items`` and wait until a worker holds them in a write (the ``held``-th)."""
    await coord.submit_many(items)
    await wait_until(lambda: sink.held == held, timeout=DEADLINE)
    assert coord.queue.size == 0


async def test_a_deep_queue_is_taken_in_batches_of_up_to_max_batch_size() -> None:
    """More than batch_size * workers queued: a worker takes up to max_batch_size at once."""
    sink = HeldSink()
    async with make(sink, batch_size=2, max_batch_size=6) as coord:
        await hand_to_a_worker(coord, sink, range(2), held=1)
        await coord.submit_many(range(2, 12))  # 10 queued > 2 * 1 worker: deep
        sink.release.set()
        await wait_until(lambda: sink.written == 12, timeout=DEADLINE)
    # 10 queued: 6 (max_batch_size); 4 left, still deep: 3 would leave the high watermark's
    # 1, but deep takes are whole batches: 2; then 2 queued, not deep: 2.
    assert sink.batches == [[0, 1], [2, 3, 4, 5, 6, 7], [8, 9], [10, 11]]


async def test_a_deep_take_stops_at_the_high_watermark() -> None:
    """A deep take leaves the high watermark's worth queued; below it batches are batch_size,
    so the queue size does not saw-tooth with the deep batch width."""
    sink = HeldSink()
    async with make(sink, batch_size=2, max_batch_size=20, high_watermark=6) as coord:
        await hand_to_a_worker(coord, sink, range(2), held=1)
        await coord.submit_many(range(2, 14))  # 12 queued > 2 * 1 worker: deep
        sink.release.set()
        await wait_until(lambda: sink.written == 14, timeout=DEADLINE)
    assert [len(batch) for batch in sink.batches] == [2, 6, 2, 2, 2]


async def test_a_shallow_queue_still_flushes_batch_size_or_what_linger_gathered() -> None:
    """batch_size * workers queued is shallow: batches of batch_size, then the lingered rest."""
    sink = HeldSink()
    async with make(sink, workers=2, batch_size=3, max_batch_size=12) as coord:
        await hand_to_a_worker(coord, sink, range(3), held=1)
        await hand_to_a_worker(coord, sink, range(3, 6), held=2)
        await coord.submit_many(range(6, 12))  # 6 queued, not more than 3 * 2 workers
        sink.release.set()
        await wait_until(lambda: sink.written == 12, timeout=DEADLINE)
        await coord.submit_many([12, 13])  # fewer than batch_size: flushed after the linger
        await wait_until(lambda: sink.written == 14, timeout=DEADLINE)
    assert sorted(sink.batches) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9, 10, 11],
        [12, 13],
    ]


async def test_deep_threshold_is_exclusive() -> None:
    """Exactly ``above`` queued takes max_items; one more takes up to the deep batch size."""
    q: BoundedQueue[int] = BoundedQueue(50, 1, 0, bus=FeedbackBus())
    q.set_deep_batches(above=6, max_items=10)
    await q.put_many(range(6))
    assert await q.get_batch(3) == [0, 1, 2]
    await q.put_many(range(6, 10))  # 7 queued: deep, taken down to the high watermark (1)
    assert await q.get_batch(3) == list(range(3, 9))


async def test_with_producers_blocked_on_a_full_queue_deep_takes_go_below_high_but_stay_hard() -> (
    None
):
    """Producers waiting for room (a full queue, more items behind it): deep takes may go down
    to recover + 1 + ``above``, so the sink gets larger batches, and the level stays HARD."""
    q: BoundedQueue[int] = BoundedQueue(40, 32, 20, bus=FeedbackBus())  # recover 18
    q.set_deep_batches(above=4, max_items=8)
    await q.put_many(range(40))
    assert q.level is BackpressureLevel.HARD
    seq = q.stats().seq
    producer = asyncio.create_task(q.put_many(range(40, 58)))  # 18 more
    await wait_until(lambda: bool(q._putters), timeout=DEADLINE)
    assert len(await q.get_batch(2)) == 8  # 40 -> 32: without waiting producers, 8 as well
    # The producer was woken but has not run: its items still count as behind the queue.
    assert len(await q.get_batch(2)) == 8  # 32 -> 24 (floor 18 + 1 + 4 = 23), not 2
    assert len(await q.get_batch(2)) == 2  # 24: one more deep take would pass the floor
    await asyncio.wait_for(producer, DEADLINE)
    assert q.size == 40  # 22 left, then the producer's 18
    assert q.level is BackpressureLevel.HARD and q.stats().seq == seq  # no event since


async def test_without_producers_waiting_a_deep_take_still_stops_at_high() -> None:
    """The control: the same full queue with no producer waiting leaves the high watermark."""
    q: BoundedQueue[int] = BoundedQueue(40, 32, 20, bus=FeedbackBus())
    q.set_deep_batches(above=4, max_items=8)
    await q.put_many(range(40))
    assert len(await q.get_batch(2)) == 8  # 40 -> 32
    assert len(await q.get_batch(2)) == 2  # 32: at the high watermark, batch_size only


async def test_get_batch_without_deep_batches_never_exceeds_max_items() -> None:
    """A queue never told about deep batches hands out at most max_items, however deep."""
    q: BoundedQueue[int] = BoundedQueue(50, bus=FeedbackBus())
    await q.put_many(range(40))
    assert len(await q.get_batch(5)) == 5


def test_default_max_batch_size_is_bounded_by_batch_size_and_capacity() -> None:
    """Default: DEFAULT_MAX_BATCH_SIZE, but never below batch_size nor above capacity."""
    sink = HeldSink()
    assert make(sink, capacity=10_000, batch_size=500).max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert make(sink, capacity=DEFAULT_MAX_BATCH_SIZE // 2, batch_size=10).max_batch_size == (
        DEFAULT_MAX_BATCH_SIZE // 2
    )
    big = DEFAULT_MAX_BATCH_SIZE * 2
    assert make(sink, capacity=big * 2, batch_size=big).max_batch_size == big
    assert DEFAULT_MAX_BATCH_SIZE >= 500  # at least the default batch_size


@pytest.mark.parametrize("value", [1, 51, 2.5, True])
def test_max_batch_size_outside_batch_size_to_capacity_is_a_config_error(value: object) -> None:
    """max_batch_size below batch_size, above capacity or not an int names the argument."""
    with pytest.raises(ConfigError, match="max_batch_size"):
        make(HeldSink(), capacity=50, batch_size=2, max_batch_size=value)


@pytest.mark.parametrize(("above", "max_items"), [(-1, 5), (3, 0)])
def test_set_deep_batches_rejects_bad_bounds(above: int, max_items: int) -> None:
    """set_deep_batches names the argument that is out of range."""
    q: BoundedQueue[int] = BoundedQueue(50, bus=FeedbackBus())
    with pytest.raises(ConfigError, match="above" if above < 0 else "max_items"):
        q.set_deep_batches(above, max_items)
