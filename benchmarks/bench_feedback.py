"""What handing a FeedbackEvent to the bus costs the producer, with 0, 1 and 10 subscribers.

Measured inside a running event loop, as the queue calls it. Two producer patterns:

  single  one ``publish_nowait`` per loop turn (each call also schedules the dispatch);
          every call is timed on its own, less the cost of reading the clock
  burst   ``--burst`` calls back to back in one turn (the dispatch is scheduled once)

The fan-out runs later on the loop and is not charged to the producer; it is reported too,
per event: ``dispatch`` (inbox -> every mailbox, metrics counted) and ``delivered`` (dispatch
plus every no-op subscriber called, timed until ``flush()`` returns). Figures are the median
over ``--repeat`` runs. Budget (DESIGN.md section 7): < 5 us to the producer.

    python benchmarks/bench_feedback.py [--events 20000] [--burst 200] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from dataclasses import dataclass

from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent

BUDGET_US = 5.0
SUBSCRIBER_COUNTS = (0, 1, 10)
COORDINATORS = ("bench-a", "bench-b", "bench-c")
LEVELS = (BackpressureLevel.SOFT, BackpressureLevel.HARD, BackpressureLevel.OK)


@dataclass
class Figures:
    """Median microseconds per event for one subscriber count."""

    single_us: float
    burst_us: float
    dispatch_us: float
    delivered_us: float


def make_events(n: int) -> list[FeedbackEvent]:
    """Events built up front: building them is the queue's cost, not the bus's."""
    return [
        FeedbackEvent(COORDINATORS[i % 3], i % 100, 100, LEVELS[i % 3], seq=i + 1) for i in range(n)
    ]


def make_bus(subscribers: int, max_backlog: int) -> FeedbackBus:
    bus = FeedbackBus(max_backlog=max_backlog)
    for _ in range(subscribers):

        async def noop(event: FeedbackEvent) -> None:
            return None

        bus.subscribe(noop)
    return bus


def clock_overhead_ns(samples: int = 20_000) -> float:
    """Median cost of two back-to-back perf_counter_ns() reads."""
    clock = time.perf_counter_ns
    deltas = []
    for _ in range(samples):
        t0 = clock()
        deltas.append(clock() - t0)
    return statistics.median(deltas)


async def single_run(bus: FeedbackBus, events: list[FeedbackEvent], overhead_ns: float) -> float:
    """Median ns of one publish_nowait per loop turn, each call timed alone."""
    clock = time.perf_counter_ns
    publish = bus.publish_nowait
    costs = []
    for event in events:
        t0 = clock()
        publish(event)
        costs.append(clock() - t0)
        await asyncio.sleep(0)  # the scheduled dispatch runs here, not on the producer
    await bus.flush()
    return max(statistics.median(costs) - overhead_ns, 0.0)


async def burst_run(
    bus: FeedbackBus, events: list[FeedbackEvent], burst: int
) -> tuple[float, float, float]:
    """ns per event: publish_nowait in bursts, then the dispatch, then dispatch + delivery."""
    clock = time.perf_counter_ns
    publish = bus.publish_nowait
    produce = dispatch = deliver = 0
    for start in range(0, len(events), burst):
        chunk = events[start : start + burst]
        t0 = clock()
        for event in chunk:
            publish(event)
        t1 = clock()
        bus._dispatch()  # what the scheduled call_soon does, timed on its own
        t2 = clock()
        await bus.flush()  # the subscribers' tasks run now
        t3 = clock()
        produce += t1 - t0
        dispatch += t2 - t1
        deliver += t3 - t1
    n = len(events)
    return produce / n, dispatch / n, deliver / n


async def measure(subscribers: int, args: argparse.Namespace, overhead_ns: float) -> Figures:
    events = make_events(args.events)
    single, burst, dispatch, delivered = [], [], [], []
    for _ in range(args.repeat):
        # max_backlog above the burst: measure the fan-out, not coalescing
        bus = make_bus(subscribers, max_backlog=args.burst * 2)
        gc.collect()
        single.append(await single_run(bus, events, overhead_ns))
        produce_ns, dispatch_ns, deliver_ns = await burst_run(bus, events, args.burst)
        burst.append(produce_ns)
        dispatch.append(dispatch_ns)
        delivered.append(deliver_ns)
        for callback in list(bus.subscribers()):
            bus.unsubscribe(callback)
    med = statistics.median
    return Figures(
        med(single) / 1000, med(burst) / 1000, med(dispatch) / 1000, med(delivered) / 1000
    )


async def run(args: argparse.Namespace) -> dict[int, Figures]:
    overhead_ns = clock_overhead_ns()
    await measure(1, argparse.Namespace(**{**vars(args), "repeat": 1}), overhead_ns)  # warm-up
    return {subs: await measure(subs, args, overhead_ns) for subs in SUBSCRIBER_COUNTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--burst", type=int, default=200, help="calls per loop turn in burst")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the median is reported")
    args = parser.parse_args()

    results = asyncio.run(run(args))
    print(f"publish_nowait: {args.events} events x {args.repeat} runs, median (us per event)")
    print(
        f"{'subscribers':>11} {'single':>9} {'burst':>9} {'dispatch':>10} {'delivered':>10}"
        f"   producer budget < {BUDGET_US:g} us"
    )
    ok = True
    for subs, fig in results.items():
        worst = max(fig.single_us, fig.burst_us)
        verdict = "ok" if worst < BUDGET_US else "OVER"
        ok = ok and worst < BUDGET_US
        print(
            f"{subs:>11} {fig.single_us:>9.3f} {fig.burst_us:>9.3f} {fig.dispatch_us:>10.3f}"
            f" {fig.delivered_us:>10.3f}   {verdict}"
        )
    print("producer cost within budget" if ok else "producer cost OVER budget")


if __name__ == "__main__":
    main()
