"""Throughput of the write path against a plain asyncio.Queue, measured in the same run.

Prints items/s and the ratio to the baseline (one producer task and one consumer task moving
N items through ``asyncio.Queue``). Budgets (DESIGN.md section 7): BoundedQueue put/get >= 1.5x,
WriteCoordinator.submit() into a no-op sink >= 1.5x, submit_many() >= 10x; the queue with
feedback subscribers within 5 % of the queue without.

    python benchmarks/bench_throughput.py [--items 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from loguru import logger

from market_data_store.coordinator import (
    BoundedQueue,
    FeedbackBus,
    FeedbackEvent,
    WriteCoordinator,
)

CAPACITY = 10_000


class NoopSink:
    """Accepts every batch and counts items."""

    def __init__(self) -> None:
        self.items = 0

    async def write(self, batch: Sequence[int]) -> None:
        self.items += len(batch)


async def one_producer_one_consumer(
    q: asyncio.Queue[int | None] | BoundedQueue[int | None], n: int
) -> float:
    """Seconds to move ``n`` items from one producer task to one consumer task."""

    async def producer() -> None:
        for i in range(n):
            await q.put(i)
        await q.put(None)

    async def consumer() -> None:
        while await q.get() is not None:
            pass

    started = time.perf_counter()
    await asyncio.gather(producer(), consumer())
    return time.perf_counter() - started


async def baseline_asyncio_queue(n: int) -> float:
    return await one_producer_one_consumer(asyncio.Queue(maxsize=CAPACITY), n)


async def bounded_queue(n: int) -> float:
    return await one_producer_one_consumer(BoundedQueue(CAPACITY, bus=FeedbackBus()), n)


async def flapping_queue(n: int, bus: FeedbackBus) -> float:
    """Producer and consumer alternating around the watermarks: many level transitions."""
    q: BoundedQueue[int] = BoundedQueue(100, 80, 50, bus=bus)
    started = time.perf_counter()
    for _ in range(n // 100):
        for i in range(100):
            await q.put(i)
        for _ in range(100):
            await q.get()
    return time.perf_counter() - started


async def coordinator_submit(n: int) -> float:
    """From start() to the end of stop(): every item written."""
    sink = NoopSink()
    coord: WriteCoordinator[int] = WriteCoordinator(sink=sink, capacity=CAPACITY, bus=FeedbackBus())
    started = time.perf_counter()
    async with coord:
        for i in range(n):
            await coord.submit(i)
    elapsed = time.perf_counter() - started
    assert sink.items == n, (sink.items, n)
    return elapsed


async def coordinator_submit_many(n: int, chunk: int = 1000) -> float:
    """From start() to the end of stop(), submitting lists of ``chunk`` items."""
    sink = NoopSink()
    coord: WriteCoordinator[int] = WriteCoordinator(sink=sink, capacity=CAPACITY, bus=FeedbackBus())
    chunks = [list(range(start, min(n, start + chunk))) for start in range(0, n, chunk)]
    started = time.perf_counter()
    async with coord:
        for items in chunks:
            await coord.submit_many(items)
    elapsed = time.perf_counter() - started
    assert sink.items == n, (sink.items, n)
    return elapsed


async def submits_crossing_watermarks(n: int, subscriber_sleep: float) -> float:
    """Seconds for ``n`` submits through a queue of 100 that crosses its watermarks."""
    bus = FeedbackBus()

    async def subscriber(event: FeedbackEvent) -> None:
        await asyncio.sleep(subscriber_sleep)

    bus.subscribe(subscriber)
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=NoopSink(), capacity=100, workers=1, batch_size=100, flush_interval=0.001, bus=bus
    )
    await coord.start()
    started = time.perf_counter()
    for i in range(n):
        await coord.submit(i)
    elapsed = time.perf_counter() - started
    transitions = coord.queue.stats().seq
    await coord.stop()
    assert transitions >= n // 100, transitions  # it did cross the watermarks
    return elapsed


def slow_subscriber_cost(n: int, repeat: int) -> float:
    """Median time with a subscriber sleeping 1 s per event over that with a no-op one."""
    ratios = []
    for _ in range(repeat):
        fast = asyncio.run(submits_crossing_watermarks(n, 0.0))
        slow = asyncio.run(submits_crossing_watermarks(n, 1.0))
        ratios.append(slow / fast)
    return statistics.median(ratios)


def timed(fn: Callable[[], Coroutine[Any, Any, float]], repeat: int) -> float:
    """Median of the seconds ``fn`` measures (set-up excluded), each run on a fresh loop."""
    return statistics.median(asyncio.run(fn()) for _ in range(repeat))


def bus_with_subscribers(count: int) -> FeedbackBus:
    bus = FeedbackBus()
    for _ in range(count):

        async def subscriber(event: FeedbackEvent) -> None:
            return None

        bus.subscribe(subscriber)
    return bus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logger.remove()
    n = args.items

    base = timed(lambda: baseline_asyncio_queue(n), args.repeat)
    print(f"{'asyncio.Queue baseline':40s} {n / base:>12,.0f} items/s   1.00x")
    rows = [
        ("BoundedQueue put/get", lambda: bounded_queue(n), 1.5),
        ("WriteCoordinator.submit()", lambda: coordinator_submit(n), 1.5),
        ("WriteCoordinator.submit_many(1000)", lambda: coordinator_submit_many(n), 10.0),
    ]
    for name, fn, budget in rows:
        t = timed(fn, args.repeat)
        verdict = "ok" if base / t >= budget else "BELOW BUDGET"
        print(f"{name:40s} {n / t:>12,.0f} items/s {base / t:6.2f}x  (budget {budget}x: {verdict})")

    print("\nfeedback overhead (queue forced across its watermarks every 100 items):")
    quiet = timed(lambda: flapping_queue(n, FeedbackBus()), args.repeat)
    for subs in (1, 10):
        loud = timed(lambda subs=subs: flapping_queue(n, bus_with_subscribers(subs)), args.repeat)
        change = (loud / quiet - 1) * 100
        verdict = "ok" if abs(change) <= 5 else "OUTSIDE 5%"
        print(f"  {subs:2d} subscriber(s) vs none: {change:+.1f} % time ({verdict})")

    ratio = slow_subscriber_cost(2000, max(args.repeat * 4, 11))
    verdict = "ok" if ratio < 1.10 else "OVER 10%"
    print(
        f"  2,000 submits across the watermarks, subscriber sleeping 1 s per event vs no-op: "
        f"{(ratio - 1) * 100:+.1f} % time ({verdict})"
    )


if __name__ == "__main__":
    main()
