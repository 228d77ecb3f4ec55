"""Closed-loop simulation: producers paced by RateControllers against a sink of known capacity.

Everything runs on a virtual clock (``market_data_store.testing.virtual_time``): an asyncio
event loop whose ``time()`` only moves when every task is waiting, and then jumps straight to
the next timer. The real ``WriteCoordinator``, ``BoundedQueue``, ``FeedbackBus`` and
``RateController`` run unchanged on it (the controller's clock is ``loop.time`` and its sleep
``asyncio.sleep``); only the sink and the producers are simulated. Results therefore do not
depend on how busy the machine is, and a 30 s scenario takes well under a second of CPU.
Events are stamped with the virtual time (``LoopTimeBus`` rewrites ``ts`` on publish), as a
coordinator's wall clock would stamp them.

The sink is a single server: a batch of n items completes n / capacity seconds after the
previous one, however many workers call it. Producers together offer twice the sink's initial
capacity, in chunks of 10 ms of it, and do not make up time they spent waiting.

Default run (the round-one scenario): a 5,000 items/s sink, queue capacity 10,000, batch 500,
one producer, 20 s. Matrix (``--matrix``): sink 1,000 / 10,000 / 100,000 items/s, queue of 1 s
or 10 s of sink capacity, batch 100 / 1,000, 1 or 4 producers; the sink halves its capacity at
10 s and doubles it back at 20 s; 30 s each. Goals per run: nothing dropped and the queue never
full; >= 98 % of the sink's capacity used from 3 s after start and after each step to the end;
< 0.5 level changes per second over the whole run; with 4 producers each gets 25 % +- 5 %.
``--batch-band`` runs with ``recover_watermark = low - the largest batch a worker takes``
(a queue-side proposal: the default band, capacity // 20, is narrower than that batch in most
scenarios, so one take can end SOFT). ``--jitter 0.3`` makes each sink batch take its time
x uniform(0.7, 1.3) (seeded by ``--seed``): a sink whose writes vary as a database's do.

    python benchmarks/closed_loop_sim.py [--matrix [--batch-band]] [--jitter 0.3 [--seed 1]] ...
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from loguru import logger

from market_data_store.coordinator.write_coordinator import DEFAULT_MAX_BATCH_SIZE, WriteCoordinator
from market_data_store.feedback import BackpressureLevel, FeedbackEvent
from market_data_store.feedback.rate_controller import RateController
from market_data_store.testing.virtual_time import LoopTimeBus, run_virtual

SETTLE_SEC = 3.0  # throughput is judged from this long after the start and after each step
GOAL_UTILIZATION = 0.98
GOAL_CHANGES_PER_SEC = 0.5
GOAL_SHARE_TOLERANCE = 0.05  # each of 4 producers gets 25 % +- 5 %


# -- the simulated parts -----------------------------------------------------------------------


class SimulatedSink:
    """Writes ``items_per_sec`` items per second, serially; records when it was busy.

    With ``jitter`` j > 0 each batch takes its time times a factor drawn uniformly from
    [1 - j, 1 + j] (seeded: runs stay deterministic), the mean unchanged."""

    def __init__(self, items_per_sec: float, jitter: float = 0.0, seed: int = 0) -> None:
        self.items_per_sec = items_per_sec
        self._jitter = jitter
        self._random = random.Random(seed)
        self._free_at = 0.0
        self.busy: list[tuple[float, float]] = []

    async def write(self, batch: Sequence[int]) -> None:
        now = asyncio.get_running_loop().time()
        start = max(self._free_at, now)
        factor = 1.0 + self._jitter * (2 * self._random.random() - 1) if self._jitter else 1.0
        self._free_at = start + len(batch) / self.items_per_sec * factor
        self.busy.append((start, self._free_at))
        await asyncio.sleep(self._free_at - now)

    def busy_fraction(self, start: float, end: float) -> float:
        busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.busy)
        return busy / (end - start)


@dataclass
class LevelLog:
    """Subscriber recording (loop time, level) at every level change."""

    changes: list[tuple[float, BackpressureLevel]] = field(default_factory=list)

    async def __call__(self, event: FeedbackEvent) -> None:
        if event.reason == "stopped":
            return
        last = self.changes[-1][1] if self.changes else BackpressureLevel.OK
        if event.level is not last:
            self.changes.append((asyncio.get_running_loop().time(), event.level))


@dataclass(frozen=True)
class Scenario:
    sink_rate: float
    capacity: int
    batch_size: int
    producers: int = 1
    duration: float = 20.0
    steps: tuple[tuple[float, float], ...] = ()  # (time, factor applied to the sink's rate)
    batch_band: bool = False  # recover_watermark = low - largest batch (default: low - cap/20)
    no_deep_batches: bool = False  # max_batch_size = batch_size
    jitter: float = 0.0  # each batch's write time varies by up to this fraction
    seed: int = 0

    @property
    def label(self) -> str:
        queue_sec = self.capacity / self.sink_rate
        return (
            f"{self.sink_rate:>7,.0f} {self.capacity:>9,} ({queue_sec:>2.0f} s) "
            f"{self.batch_size:>5,} {self.producers:>3}"
        )


@dataclass
class Result:
    scenario: Scenario
    dropped: int
    peak_queue: int
    utilization: float  # worst window: from SETTLE_SEC after start / after each step
    changes_per_sec: float
    shares: list[float]  # each producer's fraction of what all submitted after SETTLE_SEC

    @property
    def goals(self) -> dict[str, bool]:
        n = len(self.shares)
        return {
            "no drop": self.dropped == 0 and self.peak_queue < self.scenario.capacity,
            "use": self.utilization >= GOAL_UTILIZATION,
            "quiet": self.changes_per_sec < GOAL_CHANGES_PER_SEC,
            "fair": all(abs(s - 1 / n) <= GOAL_SHARE_TOLERANCE for s in self.shares),
        }


async def produce(
    coord: WriteCoordinator[int],
    controller: RateController,
    offered_rate: float,
    chunk: int,
    end: float,
    counts: list[tuple[float, int]],
    peak: list[int],
) -> None:
    """Offer ``offered_rate`` items/s until ``end``, recording (time, items) per chunk."""
    loop = asyncio.get_running_loop()
    items = list(range(chunk))
    next_at = loop.time()
    while loop.time() < end:
        await controller.acquire(chunk)
        await coord.submit_many(items)
        counts.append((loop.time(), chunk))
        peak[0] = max(peak[0], coord.queue.size)  # the queue only grows here
        next_at = max(next_at + chunk / offered_rate, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def change_capacity(sink: SimulatedSink, steps: tuple[tuple[float, float], ...]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, factor in steps:
        await asyncio.sleep(start + at - loop.time())
        sink.items_per_sec *= factor


async def run(scenario: Scenario) -> Result:
    """One scenario on the running (virtual-time) loop."""
    loop = asyncio.get_running_loop()
    bus = LoopTimeBus()
    levels = LevelLog()
    bus.subscribe(levels)
    sink = SimulatedSink(scenario.sink_rate, scenario.jitter, scenario.seed)
    recover = None
    if scenario.batch_band:  # the band below low at least one (largest) batch wide: a proposal
        low = scenario.capacity // 2
        largest = max(scenario.batch_size, min(DEFAULT_MAX_BATCH_SIZE, scenario.capacity))
        if scenario.no_deep_batches:
            largest = scenario.batch_size
        recover = max(0, low - max(largest, scenario.capacity // 20))
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=sink,
        capacity=scenario.capacity,
        batch_size=scenario.batch_size,
        recover_watermark=recover,
        max_batch_size=scenario.batch_size if scenario.no_deep_batches else None,
        bus=bus,
    )
    offered = 2 * scenario.sink_rate / scenario.producers
    chunk = max(1, round(scenario.sink_rate / 100))
    controllers = [
        RateController(offered, bus=bus, clock=loop.time) for _ in range(scenario.producers)
    ]
    counts: list[list[tuple[float, int]]] = [[] for _ in controllers]
    peak = [0]
    await coord.start()
    for controller in controllers:
        await controller.start()
    start = loop.time()
    end = start + scenario.duration
    tasks = [
        asyncio.create_task(produce(coord, c, offered, chunk, end, n, peak))
        for c, n in zip(controllers, counts, strict=True)
    ]
    tasks.append(asyncio.create_task(change_capacity(sink, scenario.steps)))
    await asyncio.gather(*tasks)
    stats = coord.stats()
    await bus.flush()
    # The run ends here: what stop() does to the queue (dropping what is left, a last
    # queue_recovered) is not the controllers' doing and is not counted as a level change.
    bus.unsubscribe(levels)
    for controller in controllers:
        await controller.stop()
    await coord.stop(drain=False, timeout=1.0)

    marks = [start, *(start + at for at, _ in scenario.steps), end]
    utilization = min(sink.busy_fraction(a + SETTLE_SEC, b) for a, b in pairwise(marks))
    submitted = [sum(n for t, n in c if t >= start + SETTLE_SEC) for c in counts]
    total = sum(submitted) or 1
    return Result(
        scenario,
        dropped=sum(stats.dropped.values()),
        peak_queue=peak[0],
        utilization=utilization,
        changes_per_sec=len(levels.changes) / scenario.duration,
        shares=[s / total for s in submitted],
    )


def simulate(scenario: Scenario) -> Result:
    """Run one scenario in a fresh virtual-time event loop."""
    return run_virtual(run(scenario))


# -- reporting ---------------------------------------------------------------------------------

HEADER = (
    "   sink/s  queue cap.        batch prod | dropped peak queue  use   changes/s shares"
    "           | goals"
)


def row(r: Result) -> str:
    shares = " ".join(f"{s:.0%}" for s in r.shares) if len(r.shares) > 1 else "-"
    goals = " ".join(f"{name}:{'ok' if held else 'MISS'}" for name, held in r.goals.items())
    return (
        f"{r.scenario.label} | {r.dropped:>7,} {r.peak_queue / r.scenario.capacity:>9.0%}"
        f" {r.utilization:>6.1%} {r.changes_per_sec:>6.2f}    {shares:<16s} | {goals}"
    )


def matrix(
    batch_band: bool = False, no_deep_batches: bool = False, jitter: float = 0.0, seed: int = 0
) -> list[Scenario]:
    steps = ((10.0, 0.5), (20.0, 2.0))
    return [
        Scenario(
            rate,
            int(rate * queue_sec),
            batch,
            producers,
            30.0,
            steps,
            batch_band,
            no_deep_batches,
            jitter,
            seed,
        )
        for rate in (1_000, 10_000, 100_000)
        for queue_sec in (1, 10)
        for batch in (100, 1_000)
        for producers in (1, 4)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", action="store_true", help="also run the scenario matrix")
    parser.add_argument(
        "--batch-band",
        action="store_true",
        help="recover_watermark = low - the largest batch (a queue-side proposal)",
    )
    parser.add_argument(
        "--no-deep-batches",
        action="store_true",
        help="max_batch_size = batch_size (workers never take more than one batch)",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="each sink batch takes its time x uniform(1 - j, 1 + j) (default 0: exact)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the jitter's random seed")
    parser.add_argument("--duration", type=float, default=20.0, help="default run, seconds")
    parser.add_argument("--sink-rate", type=float, default=5000.0, help="default run, items/s")
    parser.add_argument("--capacity", type=int, default=10_000, help="default run, queue size")
    parser.add_argument("--batch-size", type=int, default=500, help="default run, batch")
    parser.add_argument("--producers", type=int, default=1, help="default run, producers")
    args = parser.parse_args(argv)
    logger.remove()
    default = Scenario(
        args.sink_rate,
        args.capacity,
        args.batch_size,
        args.producers,
        duration=args.duration,
        batch_band=args.batch_band,
        no_deep_batches=args.no_deep_batches,
        jitter=args.jitter,
        seed=args.seed,
    )
    scenarios: list[Any] = [
        default,
        *(
            matrix(args.batch_band, args.no_deep_batches, args.jitter, args.seed)
            if args.matrix
            else []
        ),
    ]
    print(HEADER)
    results = []
    for scenario in scenarios:
        result = simulate(scenario)
        results.append(result)
        print(row(result), flush=True)
    held = sum(all(r.goals.values()) for r in results)
    print(f"all goals held in {held} of {len(results)} runs")


if __name__ == "__main__":
    main()
