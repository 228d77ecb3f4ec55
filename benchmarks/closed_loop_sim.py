"""Closed-loop simulation: a producer offering twice the sink's capacity, with and without feedback.

Three runs of ``--duration`` seconds each, in real time, on one coordinator:

  (a) no feedback, overflow_strategy="block"
  (b) no feedback, overflow_strategy="drop_oldest"
  (c) "block" plus a RateController (max_rate = the producer's offered rate) subscribed to
      the coordinator's bus; the producer awaits ``acquire()`` before each chunk

The sink is a single server of fixed capacity: a batch of n items completes n / capacity
seconds after the previous one, however many workers call it. The producer offers at most
twice that capacity, in chunks, and does not make up time it spent waiting. For each run it
prints items dropped, peak queue depth, seconds in HARD, throughput as a fraction of the
sink's capacity and level transitions per second. Goal for (c): no drops, the queue never
full, throughput >= 95 %, under one transition per second.

    python benchmarks/closed_loop_sim.py [--duration 20] [--sink-rate 5000] [--capacity 10000]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from loguru import logger

from market_data_store.coordinator.types import OverflowStrategy
from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
from market_data_store.feedback.rate_controller import RateController

CHUNK = 100  # items per submit_many() call


class SimulatedSink:
    """Writes ``items_per_sec`` items per second, serially, by sleeping."""

    def __init__(self, items_per_sec: float) -> None:
        self.items_per_sec = items_per_sec
        self._free_at = 0.0

    async def write(self, batch: Sequence[int]) -> None:
        now = asyncio.get_running_loop().time()
        self._free_at = max(self._free_at, now) + len(batch) / self.items_per_sec
        await asyncio.sleep(self._free_at - now)


@dataclass
class LevelLog:
    """Subscriber recording (loop time, level) at every level change."""

    changes: list[tuple[float, BackpressureLevel]] = field(default_factory=list)

    async def __call__(self, event: FeedbackEvent) -> None:
        if event.reason == "stopped":
            return
        if not self.changes or self.changes[-1][1] is not event.level:
            self.changes.append((asyncio.get_running_loop().time(), event.level))

    def seconds_in(self, level: BackpressureLevel, start: float, end: float) -> float:
        total = 0.0
        marks = [*self.changes, (end, BackpressureLevel.OK)]
        for (t0, lvl), (t1, _) in pairwise(marks):
            if lvl is level:
                total += max(0.0, min(t1, end) - max(t0, start))
        return total


@dataclass
class RunResult:
    name: str
    dropped: int
    peak_queue: int
    capacity: int
    hard_sec: float
    throughput: float
    transitions_per_sec: float
    mean_rate: float | None


async def produce(
    coord: WriteCoordinator[int],
    offered_rate: float,
    end: float,
    controller: RateController | None,
    peak: list[int],
) -> None:
    """Offer ``offered_rate`` items/s until loop time ``end``; track the peak queue size."""
    loop = asyncio.get_running_loop()
    items = list(range(CHUNK))
    next_at = loop.time()
    while loop.time() < end:
        if controller is not None:
            await controller.acquire(CHUNK)
        await coord.submit_many(items)
        peak[0] = max(peak[0], coord.queue.size)  # the queue only grows here
        next_at = max(next_at + CHUNK / offered_rate, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def sample_rate(controller: RateController, end: float, samples: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        samples.append(controller.rate)
        await asyncio.sleep(0.05)


async def run(
    name: str,
    strategy: OverflowStrategy,
    *,
    with_controller: bool,
    duration: float,
    sink_rate: float,
    capacity: int,
) -> RunResult:
    bus = FeedbackBus()
    levels = LevelLog()
    bus.subscribe(levels)
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=SimulatedSink(sink_rate),
        capacity=capacity,
        overflow_strategy=strategy,
        coord_id=name,
        bus=bus,
    )
    offered = 2 * sink_rate
    controller = RateController(offered, bus=bus) if with_controller else None
    peak = [0]
    rates: list[float] = []
    loop = asyncio.get_running_loop()
    await coord.start()
    if controller is not None:
        await controller.start()
    start = loop.time()
    end = start + duration
    tasks = [asyncio.create_task(produce(coord, offered, end, controller, peak))]
    if controller is not None:
        tasks.append(asyncio.create_task(sample_rate(controller, end, rates)))
    await asyncio.sleep(end - loop.time())
    stats = coord.stats()
    await bus.flush()
    hard_sec = levels.seconds_in(BackpressureLevel.HARD, start, end)
    transitions = sum(1 for t, _ in levels.changes if start <= t <= end)
    await asyncio.gather(*tasks)
    if controller is not None:
        await controller.stop()
    await coord.stop(drain=True)
    return RunResult(
        name,
        dropped=sum(stats.dropped.values()),
        peak_queue=peak[0],
        capacity=capacity,
        hard_sec=hard_sec,
        throughput=stats.written / (sink_rate * duration),
        transitions_per_sec=transitions / duration,
        mean_rate=sum(rates) / len(rates) / sink_rate if rates else None,
    )


def report(r: RunResult) -> None:
    full = " (FULL)" if r.peak_queue >= r.capacity else ""
    rate = "" if r.mean_rate is None else f"   mean allowed rate {r.mean_rate:.2f}x sink"
    print(
        f"{r.name:28s} dropped {r.dropped:>7,}   peak queue {r.peak_queue:>6,}/{r.capacity:,}"
        f"{full:7s} HARD {r.hard_sec:5.1f} s   throughput {r.throughput:6.1%}"
        f"   transitions {r.transitions_per_sec:4.2f}/s{rate}"
    )


async def main_async(args: argparse.Namespace) -> list[RunResult]:
    common: dict[str, Any] = {
        "duration": args.duration,
        "sink_rate": args.sink_rate,
        "capacity": args.capacity,
    }
    runs: list[tuple[str, OverflowStrategy, bool]] = [
        ("(a) block", "block", False),
        ("(b) drop_oldest", "drop_oldest", False),
        ("(c) block + RateController", "block", True),
    ]
    results = []
    for name, strategy, with_controller in runs:
        result = await run(name, strategy, with_controller=with_controller, **common)
        report(result)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--sink-rate", type=float, default=5000.0, help="sink items/s")
    parser.add_argument("--capacity", type=int, default=10_000, help="queue capacity")
    args = parser.parse_args()
    logger.remove()
    print(
        f"producer offers {2 * args.sink_rate:,.0f} items/s to a sink of {args.sink_rate:,.0f} "
        f"items/s, queue capacity {args.capacity:,}, {args.duration:g} s per run"
    )
    results = asyncio.run(main_async(args))
    c = results[-1]
    ok = (
        c.dropped == 0
        and c.peak_queue < c.capacity
        and c.throughput >= 0.95
        and c.transitions_per_sec < 1.0
    )
    print(f"goal for (c): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
