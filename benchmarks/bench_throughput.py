"""Throughput of the write path against a plain asyncio.Queue, in paired, alternating rounds.

The baseline is one producer task and one consumer task moving ``--items`` items through an
``asyncio.Queue`` of the same capacity. Each round runs, for every candidate, the baseline and
the candidate back to back, each in a fresh event loop (``asyncio.run``), their order
alternating from round to round; the ratio of the two times is that round's figure. A noisy
machine slows both halves of a pair alike, so the ratios are stable where single timings are
not. Printed: min / median / max of the per-round ratios, against the budgets of DESIGN.md
section 7 (queue >= 2x, submit() >= 2x, submit_many(1000) >= 15x).

Also printed, per round in a fresh loop: what handing an event to the bus costs the producer
(``publish_nowait`` with 1 and 10 no-op subscribers and with one raising subscriber, and a
whole emission: event built and handed over), in microseconds, against the < 5 us budget.

    python benchmarks/bench_throughput.py [--items 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from _harness import clock_overhead_ns, paired_rounds, spread
from loguru import logger

from market_data_store.coordinator import BoundedQueue, WriteCoordinator
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent

CAPACITY = 10_000
CHUNK = 1_000
BUS_EVENTS = 20_000
BUS_BUDGET_US = 5.0

Timed = Callable[[int], Coroutine[Any, Any, float]]


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


async def coordinator_submit(n: int) -> float:
    """From start() to the end of stop(): every item written."""
    sink = NoopSink()
    coord: WriteCoordinator[int] = WriteCoordinator(sink=sink, capacity=CAPACITY, bus=FeedbackBus())
    started = time.perf_counter()
    async with coord:
        submit = coord.submit
        for i in range(n):
            await submit(i)
    elapsed = time.perf_counter() - started
    assert sink.items == n, (sink.items, n)
    return elapsed


async def coordinator_submit_many(n: int) -> float:
    """From start() to the end of stop(), submitting lists of ``CHUNK`` items."""
    sink = NoopSink()
    coord: WriteCoordinator[int] = WriteCoordinator(sink=sink, capacity=CAPACITY, bus=FeedbackBus())
    chunks = [list(range(start, min(n, start + CHUNK))) for start in range(0, n, CHUNK)]
    started = time.perf_counter()
    async with coord:
        for items in chunks:
            await coord.submit_many(items)
    elapsed = time.perf_counter() - started
    assert sink.items == n, (sink.items, n)
    return elapsed


CANDIDATES: list[tuple[str, Timed, float]] = [
    ("BoundedQueue put/get", bounded_queue, 2.0),
    ("WriteCoordinator.submit()", coordinator_submit, 2.0),
    (f"WriteCoordinator.submit_many({CHUNK})", coordinator_submit_many, 15.0),
]


def paired_ratios(fn: Timed, n: int, rounds: int) -> list[float]:
    """Per-round baseline time / candidate time, the order of the pair alternating, each run
    in a new event loop after a garbage collection."""
    base, cand = paired_rounds(
        rounds, partial(baseline_asyncio_queue, n), partial(fn, n), collect=True
    )
    return [b / c for b, c in zip(base, cand, strict=True)]


# -- the producer's cost of one emission ---------------------------------------------------


def make_bus(noop_subscribers: int, raising: bool) -> FeedbackBus:
    bus = FeedbackBus()
    for _ in range(noop_subscribers):

        async def noop(event: FeedbackEvent) -> None:
            return None

        bus.subscribe(noop)
    if raising:

        async def broken(event: FeedbackEvent) -> None:
            raise RuntimeError("subscriber bug")

        bus.subscribe(broken)
    return bus


async def publish_cost_us(noop_subscribers: int, raising: bool, whole_emission: bool) -> float:
    """Median us of one hand-over per loop turn (the fan-out runs between calls, uncharged)."""
    bus = make_bus(noop_subscribers, raising)
    overhead = clock_overhead_ns()
    clock = time.perf_counter_ns
    levels = (BackpressureLevel.SOFT, BackpressureLevel.HARD, BackpressureLevel.OK)
    costs = []
    if whole_emission:
        queue: BoundedQueue[int] = BoundedQueue(CAPACITY, coord_id="bench", bus=bus)
        emit = queue.emit_feedback
        for i in range(BUS_EVENTS):
            level = levels[i % 3]
            t0 = clock()
            emit(level)
            costs.append(clock() - t0)
            await asyncio.sleep(0)
    else:
        events = [
            FeedbackEvent("bench", i, CAPACITY, levels[i % 3], seq=i + 1) for i in range(BUS_EVENTS)
        ]
        publish = bus.publish_nowait
        for event in events:
            t0 = clock()
            publish(event)
            costs.append(clock() - t0)
            await asyncio.sleep(0)
    await bus.flush()
    return max(statistics.median(costs) - overhead, 0.0) / 1000


BUS_CASES: list[tuple[str, int, bool, bool]] = [
    ("publish_nowait, 1 subscriber", 1, False, False),
    ("publish_nowait, 10 subscribers", 10, False, False),
    ("publish_nowait, 1 raising subscriber", 0, True, False),
    ("emission (event built + handed over), 1 sub", 1, False, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000, help="items moved per run")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per candidate")
    args = parser.parse_args()
    logger.remove()  # the library logs nothing by default; make sure no sink slows a run
    n, rounds = args.items, args.rounds

    print(f"{n:,} items, {rounds} paired rounds against asyncio.Queue (min / median / max)")
    for name, fn, budget in CANDIDATES:
        ratios = paired_ratios(fn, n, rounds)
        verdict = "ok" if statistics.median(ratios) >= budget else "BELOW BUDGET"
        print(f"  {name:36s} {spread(ratios, '6.2f')} x  (budget {budget:g}x: {verdict})")

    print(f"producer cost of handing an event to the bus, us ({rounds} rounds, min / median / max)")
    for name, subs, raising, whole in BUS_CASES:
        costs = [asyncio.run(publish_cost_us(subs, raising, whole)) for _ in range(rounds)]
        verdict = "ok" if statistics.median(costs) < BUS_BUDGET_US else "OVER BUDGET"
        print(f"  {name:44s} {spread(costs, '5.2f')}  (budget < {BUS_BUDGET_US:g}: {verdict})")


if __name__ == "__main__":
    main()
