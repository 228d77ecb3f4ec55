"""BoundedQueue: overflow strategies, waiting, batching, closing, cancellation, watermarks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.types import QueueClosedError, QueueFullError
from market_data_store.feedback import BackpressureLevel, FeedbackBus

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD
DEADLINE = 2.0  # seconds; every wait below is bounded by it


def make(capacity: int = 4, *args: Any, **kwargs: Any) -> BoundedQueue[Any]:
    return BoundedQueue(capacity, *args, bus=FeedbackBus(), **kwargs)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


async def one_turn() -> None:
    """One loop turn: a task created just before starts and blocks. A timer it set cannot
    have fired yet, however slow the machine: due timers run in a later turn."""
    await asyncio.sleep(0)


async def filled(capacity: int = 4, **kwargs: Any) -> BoundedQueue[Any]:
    q = make(capacity, **kwargs)
    for i in range(capacity):
        await q.put(i)
    return q


# -- overflow strategies -------------------------------------------------------------------


async def test_block_put_waits_until_a_get_makes_room() -> None:
    """With overflow "block", put on a full queue returns only after a get frees a slot."""
    q = await filled(2)
    putter = asyncio.create_task(q.put("late"))
    await settle()
    assert not putter.done()
    assert await q.get() == 0
    async with asyncio.timeout(DEADLINE):
        await putter
    assert [q.get_nowait() for _ in range(2)] == [1, "late"]


async def test_drop_oldest_calls_drop_callback_with_the_dropped_item() -> None:
    """With "drop_oldest", a put on a full queue evicts the oldest item and reports it."""
    dropped: list[int] = []
    q = await filled(3, overflow_strategy="drop_oldest", drop_callback=dropped.append)
    await q.put(3)
    await q.put(4)
    await q.join_callbacks()
    assert dropped == [0, 1]
    assert q.stats().dropped == 2
    assert [q.get_nowait() for _ in range(3)] == [2, 3, 4]


async def test_drop_oldest_awaits_an_async_drop_callback() -> None:
    """An async drop callback is awaited (off the producer) for every dropped item."""
    dropped: list[int] = []

    async def on_drop(item: int) -> None:
        dropped.append(item)

    q = await filled(2, overflow_strategy="drop_oldest", drop_callback=on_drop)
    await q.put_many([2, 3, 4])
    await q.join_callbacks()
    assert dropped == [0, 1, 2]
    assert q.stats().dropped == 3
    assert [q.get_nowait() for _ in range(2)] == [3, 4]


async def test_error_strategy_raises_queue_full_and_keeps_contents() -> None:
    """With "error", put on a full queue raises QueueFullError and changes nothing."""
    q = await filled(2, overflow_strategy="error")
    with pytest.raises(QueueFullError):
        await q.put("x")
    assert q.size == 2
    assert q.stats().dropped == 0


async def test_error_strategy_put_many_is_all_or_nothing() -> None:
    """With "error", a put_many that does not fit adds none of its items."""
    q = make(4, overflow_strategy="error")
    await q.put(0)
    with pytest.raises(QueueFullError):
        await q.put_many([1, 2, 3, 4])
    assert q.size == 1
    assert await q.put_many([1, 2, 3]) == 3
    assert [q.get_nowait() for _ in range(4)] == [0, 1, 2, 3]


async def test_put_many_block_waits_for_room_chunk_by_chunk() -> None:
    """A blocking put_many larger than the capacity completes as a consumer drains."""
    q = make(3)
    producer = asyncio.create_task(q.put_many(list(range(10))))
    got: list[int] = []
    async with asyncio.timeout(DEADLINE):
        while len(got) < 10:
            got.append(await q.get())
        assert await producer == 10
    assert got == list(range(10))


async def test_two_blocked_put_many_producers_both_finish() -> None:
    """Two put_many callers waiting on a full queue both finish while a consumer drains."""
    q = await filled(2)
    first = asyncio.create_task(q.put_many(["a1", "a2", "a3"]))
    second = asyncio.create_task(q.put_many(["b1", "b2", "b3"]))
    await settle()
    got: list[Any] = []
    async with asyncio.timeout(DEADLINE):
        while len(got) < 8:
            got.append(await q.get())
            await asyncio.sleep(0)  # a consumer that yields between items
        await asyncio.gather(first, second)
    assert sorted(map(str, got)) == sorted(map(str, [0, 1, "a1", "a2", "a3", "b1", "b2", "b3"]))
    assert q.size == 0


# -- nowait pairs, timeouts, batches -------------------------------------------------------


async def test_put_nowait_raises_when_full_and_get_nowait_when_empty() -> None:
    """put_nowait raises QueueFullError on a full blocking queue; get_nowait raises QueueEmpty."""
    q = make(1)
    q.put_nowait("a")
    with pytest.raises(QueueFullError):
        q.put_nowait("b")
    assert q.get_nowait() == "a"
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


async def test_get_with_timeout_raises_timeout_error() -> None:
    """get(timeout) on an empty queue waits, then raises TimeoutError when the time runs out."""
    q = make()
    getter = asyncio.create_task(q.get(timeout=0.05))
    await one_turn()
    assert not getter.done()  # it waits rather than failing at once
    async with asyncio.timeout(DEADLINE):
        with pytest.raises(TimeoutError):
            await getter
    await q.put("after")
    assert await q.get(timeout=0.05) == "after"  # the expired waiter left nothing behind


async def test_get_waits_for_an_item_put_later() -> None:
    """A get on an empty queue returns the next item put."""
    q = make()
    getter = asyncio.create_task(q.get())
    await settle()
    assert not getter.done()
    await q.put("x")
    async with asyncio.timeout(DEADLINE):
        assert await getter == "x"


async def test_get_batch_returns_at_once_when_max_items_are_queued() -> None:
    """get_batch returns max_items at once when that many are queued, without lingering."""
    q = make(10)
    await q.put_many(range(7))
    async with asyncio.timeout(DEADLINE):  # far below the linger time
        assert await q.get_batch(5, linger=30.0) == [0, 1, 2, 3, 4]
    assert q.size == 2


async def test_get_batch_returns_a_partial_batch_after_the_linger_time() -> None:
    """get_batch with fewer items than max_items lingers, then returns them when linger ends."""
    q = make(10)
    await q.put_many([1, 2])
    batch = asyncio.create_task(q.get_batch(5, linger=0.05))
    await one_turn()
    assert not batch.done()  # it lingers for a fuller batch
    async with asyncio.timeout(DEADLINE):
        assert await batch == [1, 2]


async def test_get_batch_lingering_returns_early_once_the_batch_fills() -> None:
    """A lingering get_batch returns as soon as max_items are queued."""
    q = make(10)
    await q.put(0)
    batch = asyncio.create_task(q.get_batch(3, linger=30.0))
    await settle()
    assert not batch.done()
    await q.put_many([1, 2])
    async with asyncio.timeout(DEADLINE):
        assert await batch == [0, 1, 2]


async def test_get_batch_waits_for_the_first_item() -> None:
    """get_batch on an empty queue waits for the first item, however long."""
    q = make(10)
    batch = asyncio.create_task(q.get_batch(3))
    await settle()
    assert not batch.done()
    await q.put("x")
    async with asyncio.timeout(DEADLINE):
        assert await batch == ["x"]


# -- close ---------------------------------------------------------------------------------


async def test_close_wakes_waiting_getters_and_putters() -> None:
    """close() wakes blocked get, get_batch and put: they raise or return empty."""
    empty = make(2)
    getter = asyncio.create_task(empty.get())
    batcher = asyncio.create_task(empty.get_batch(5, linger=1.0))
    full = await filled(1)
    putter = asyncio.create_task(full.put("x"))
    many = asyncio.create_task(full.put_many(["y", "z"]))
    await settle()
    empty.close()
    full.close()
    async with asyncio.timeout(DEADLINE):
        with pytest.raises(QueueClosedError):
            await getter
        assert await batcher == []
        with pytest.raises(QueueClosedError):
            await putter
        with pytest.raises(QueueClosedError):
            await many
    assert full.size == 1


async def test_closed_queue_refuses_puts_but_hands_out_what_is_left() -> None:
    """After close(), put raises QueueClosedError and queued items can still be taken."""
    q = make(4)
    await q.put_many([1, 2])
    q.close()
    with pytest.raises(QueueClosedError):
        await q.put(3)
    with pytest.raises(QueueClosedError):
        q.put_nowait(3)
    assert await q.get_batch(5, linger=10.0) == [1, 2]
    assert await q.get_batch(5) == []
    with pytest.raises(QueueClosedError):
        await q.get()


# -- cancellation --------------------------------------------------------------------------


async def test_cancelled_getter_leaves_size_and_level_exact() -> None:
    """Cancelling a blocked get changes neither size nor level, and later gets still work."""
    q = make(4, 3, 1)
    getter = asyncio.create_task(q.get())
    await settle()
    getter.cancel()
    await settle()
    assert getter.cancelled()
    await q.put_many([1, 2, 3])
    assert (q.size, q.level) == (3, HARD)
    assert await q.get(timeout=DEADLINE) == 1


async def test_cancelling_a_woken_getter_passes_the_item_to_another_getter() -> None:
    """A getter woken for an item but cancelled before it ran does not strand the item."""
    q = make(4)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await settle()
    await q.put("x")  # wakes `first`
    first.cancel()  # before `first` gets to run
    async with asyncio.timeout(DEADLINE):
        assert await second == "x"
    assert first.cancelled()
    assert q.size == 0


async def test_cancelling_a_woken_batch_getter_passes_the_items_on() -> None:
    """A get_batch woken for items but cancelled before it ran leaves them to another waiter."""
    q = make(10)
    first = asyncio.create_task(q.get_batch(5))
    second = asyncio.create_task(q.get_batch(5))
    await settle()
    await q.put_many([1, 2])
    first.cancel()
    async with asyncio.timeout(DEADLINE):
        assert await second == [1, 2]
    assert first.cancelled()


async def test_cancelled_putter_leaves_size_and_level_exact() -> None:
    """Cancelling a blocked put adds nothing; size and level stay those of the full queue."""
    q = await filled(4, high_watermark=3, low_watermark=1)
    putter = asyncio.create_task(q.put("x"))
    await settle()
    putter.cancel()
    await settle()
    assert putter.cancelled()
    assert (q.size, q.level) == (4, HARD)
    assert [q.get_nowait() for _ in range(4)] == [0, 1, 2, 3]
    assert (q.size, q.level) == (0, OK)


async def test_cancelling_a_woken_putter_passes_the_slot_to_another_putter() -> None:
    """A putter woken for a slot but cancelled before it ran hands the slot to the next one."""
    q = await filled(2)
    first = asyncio.create_task(q.put("first"))
    second = asyncio.create_task(q.put("second"))
    await settle()
    assert q.get_nowait() == 0  # wakes `first`
    first.cancel()  # before `first` gets to run
    async with asyncio.timeout(DEADLINE):
        await second
    assert first.cancelled()
    assert [q.get_nowait() for _ in range(2)] == [1, "second"]


async def test_cancelling_a_woken_put_many_passes_the_slot_on() -> None:
    """A put_many woken for room but cancelled before it ran lets the next putter proceed."""
    q = await filled(2)
    first = asyncio.create_task(q.put_many(["a", "b"]))
    second = asyncio.create_task(q.put("second"))
    await settle()
    assert q.get_nowait() == 0
    first.cancel()
    async with asyncio.timeout(DEADLINE):
        await second
    assert first.cancelled()
    assert [q.get_nowait() for _ in range(2)] == [1, "second"]


# -- watermarks ----------------------------------------------------------------------------


async def test_default_watermarks_are_80_and_50_percent_of_capacity() -> None:
    """Without explicit watermarks, high is 80 % and low is 50 % of the capacity."""
    q = make(100)
    assert (q.high_watermark, q.low_watermark) == (80, 50)


async def test_on_high_fires_on_entering_hard_and_on_low_on_recovery() -> None:
    """on_high runs once on entering HARD and on_low once on HARD -> OK, not on the way."""
    calls: list[str] = []

    async def on_high() -> None:
        calls.append("high")

    async def on_low() -> None:
        calls.append("low")

    q = make(10, 8, 5, on_high=on_high, on_low=on_low)
    await q.put_many(range(7))  # SOFT: no callback
    await q.join_callbacks()
    assert (q.level, calls) == (SOFT, [])
    await q.put_many([7, 8, 9])  # HARD
    await q.join_callbacks()
    assert (q.level, calls) == (HARD, ["high"])
    for _ in range(5):  # 5 left, at the low watermark: still HARD (hysteresis)
        q.get_nowait()
    await q.join_callbacks()
    assert (q.level, calls) == (HARD, ["high"])
    q.get_nowait()  # 4 left: at the default recover watermark (5 - 1) -> OK
    await q.join_callbacks()
    assert (q.level, calls) == (OK, ["high", "low"])


async def test_on_low_does_not_fire_when_soft_recovers() -> None:
    """SOFT -> OK is not a recovery from HARD: on_low stays silent."""
    calls: list[str] = []

    async def on_low() -> None:
        calls.append("low")

    q = make(10, 8, 5, on_low=on_low)
    await q.put_many(range(7))
    for _ in range(3):
        q.get_nowait()
    await q.join_callbacks()
    assert (q.level, calls) == (OK, [])


async def test_a_raising_watermark_callback_does_not_reach_the_producer() -> None:
    """An on_high that raises is logged; the put that triggered it succeeds."""

    async def on_high() -> None:
        raise RuntimeError("boom")

    q = make(2, 1, 0, on_high=on_high)
    await q.put("x")
    await q.join_callbacks()
    assert q.level is HARD
