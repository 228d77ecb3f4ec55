"""What a FeedbackEvent costs: the producer's hand-over, the loop's fan-out, and the trip to
a pipeline process.

Producer and loop (default): variants ``1 sub`` (one no-op subscriber), ``10 subs`` and
``1 raising`` (one subscriber raising on every event), each run in a fresh event loop, in an
order that alternates from round to round (paired rounds on a shared machine). Per round and
variant: ``producer`` is the median cost of one ``publish_nowait`` (one per loop turn, as the
queue calls it, less the cost of reading the clock); ``loop`` is the fan-out per event,
dispatch plus every subscriber called, timed until ``flush()`` returns, in bursts. Printed:
min / median / max over the rounds, and per round the ratio of the raising subscriber's loop
cost to the healthy one's. The library's logging is as it ships (disabled) unless
``--log-level`` enables it with a handler at that level. Budget (DESIGN.md section 7): the
producer pays < 5 us.

Cross-process (``--cross-process``): starts ``examples/run_feedback_receiver.py`` (uvicorn,
``FeedbackReceiver``, ``RateController``) in another process, enables this process's webhook
by ``MDS_FB_*`` variables only, emits ``--emissions`` level changes from a running
coordinator, ``--gap-ms`` apart, and prints p50 / p99 of the time from emission (the
event's ``ts``) to the pipeline's ``RateController``. Goal: p99 < 20 ms.

    python benchmarks/bench_feedback.py [--rounds 7] [--events 20000]
    python benchmarks/bench_feedback.py --cross-process [--emissions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from _harness import alternating, clock_overhead_ns, spread
from loguru import logger

from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent

BUDGET_US = 5.0
COORDINATORS = ("bench-a", "bench-b", "bench-c")
LEVELS = (BackpressureLevel.SOFT, BackpressureLevel.HARD, BackpressureLevel.OK)
VARIANTS = ("1 sub", "10 subs", "1 raising")
RECEIVER = Path(__file__).resolve().parents[1] / "examples" / "run_feedback_receiver.py"
RECEIVER_ARGS = (
    "--port",
    "0",
    "--quiet",
    "--json",
    "--max-rate",
    "1e5",
    "--exit-after-stopped",
    "1",
)


def make_events(n: int) -> list[FeedbackEvent]:
    """Events built up front: building them is the queue's cost, not the bus's."""
    return [
        FeedbackEvent(COORDINATORS[i % 3], i % 100, 100, LEVELS[i % 3], seq=i + 1) for i in range(n)
    ]


def make_bus(variant: str, max_backlog: int) -> FeedbackBus:
    bus = FeedbackBus(max_backlog=max_backlog)
    count = 10 if variant == "10 subs" else 1
    for _ in range(count):

        async def noop(event: FeedbackEvent) -> None:
            return None

        async def raising(event: FeedbackEvent) -> None:
            raise RuntimeError("subscriber bug")

        bus.subscribe(raising if variant == "1 raising" else noop)
    return bus


async def producer_ns(bus: FeedbackBus, events: list[FeedbackEvent], overhead_ns: float) -> float:
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


async def loop_ns(bus: FeedbackBus, events: list[FeedbackEvent], burst: int) -> float:
    """ns per event of dispatch plus delivery to every subscriber, in bursts."""
    clock = time.perf_counter_ns
    publish = bus.publish_nowait
    total = 0
    for start in range(0, len(events), burst):
        for event in events[start : start + burst]:
            publish(event)
        t0 = clock()
        await bus.flush()
        total += clock() - t0
    return total / len(events)


def one_run(variant: str, args: argparse.Namespace, overhead_ns: float) -> tuple[float, float]:
    """(producer us, loop us) of one variant in a fresh event loop."""
    events = make_events(args.events)

    async def go() -> tuple[float, float]:
        bus = make_bus(variant, max_backlog=args.burst * 2)  # fan-out, not coalescing
        gc.collect()
        producer = await producer_ns(bus, events, overhead_ns)
        fan_out = await loop_ns(bus, events, args.burst)
        return producer / 1000, fan_out / 1000

    return asyncio.run(go())


def columns(values: Sequence[float]) -> str:
    return spread(values, "7.3f", sep=" ")


def in_process(args: argparse.Namespace) -> None:
    overhead_ns = clock_overhead_ns()
    one_run("1 sub", argparse.Namespace(**{**vars(args), "events": 2000}), overhead_ns)  # warm
    runs = alternating(args.rounds, [partial(one_run, v, args, overhead_ns) for v in VARIANTS])
    producer = {v: [p for p, _ in results] for v, results in zip(VARIANTS, runs, strict=True)}
    fan_out = {v: [f for _, f in results] for v, results in zip(VARIANTS, runs, strict=True)}
    print(f"{args.rounds} paired rounds x {args.events} events; us per event, min median max")
    print(f"{'variant':<10} {'producer':>23}   {'loop (fan-out)':>23}")
    ok = True
    for variant in VARIANTS:
        ok = ok and statistics.median(producer[variant]) < BUDGET_US
        print(f"{variant:<10} {columns(producer[variant])}   {columns(fan_out[variant])}")
    ratios = [r / h for r, h in zip(fan_out["1 raising"], fan_out["1 sub"], strict=True)]
    print(f"loop cost, raising / healthy subscriber per round: {columns(ratios)}")
    verdict = "within" if ok else "OVER"
    print(f"producer cost {verdict} the {BUDGET_US:g} us budget (median of every variant)")


async def emit_through_webhook(emissions: int, gap_ms: float) -> None:
    """Run a coordinator auto-wired by MDS_FB_*; emit level changes ``gap_ms`` apart."""
    from market_data_store.coordinator import WriteCoordinator

    class NullSink:
        async def write(self, batch: Sequence[int]) -> None:
            return None

    coordinator: WriteCoordinator[int] = WriteCoordinator(sink=NullSink(), coord_id="bench")
    async with coordinator:
        for i in range(emissions):
            coordinator.queue.emit_feedback(LEVELS[i % 3])  # the queue's own emission path
            await asyncio.sleep(gap_ms / 1000)  # apart, so the outbox coalesces none


def cross_process(args: argparse.Namespace) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDS_")}
    env["MDS_FB_WEBHOOK_SECRET"] = secret
    pipeline = subprocess.Popen(
        [sys.executable, str(RECEIVER), *RECEIVER_ARGS],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert pipeline.stdout is not None
        url = pipeline.stdout.readline().strip().removeprefix("listening on ")
        os.environ.update(
            MDS_FB_ENABLE_HTTP_BROADCAST="true",
            MDS_FB_FEEDBACK_WEBHOOK_URL=url,
            MDS_FB_WEBHOOK_SECRET=secret,
        )
        asyncio.run(emit_through_webhook(args.emissions, args.gap_ms))
        output, _ = pipeline.communicate(timeout=30)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()
    arrived = [
        line["latency_ms"]
        for line in map(json.loads, output.splitlines())
        if "event" in line and line["event"]["reason"] != "stopped"
    ]
    first, latencies = arrived[0], sorted(arrived[1:])  # the first one opens the connection
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    print(
        f"store -> webhook -> FeedbackReceiver -> RateController, {len(arrived)} events of "
        f"{args.emissions} emitted: p50 {statistics.median(latencies):.2f} ms, "
        f"p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms (goal p99 < 20 ms); "
        f"the first, opening the connection: {first:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds")
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--burst", type=int, default=200, help="events per fan-out burst")
    parser.add_argument("--log-level", default=None, help="enable library logging at this level")
    parser.add_argument("--cross-process", action="store_true")
    parser.add_argument("--emissions", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    args = parser.parse_args()
    logger.remove()
    if args.log_level:
        logger.add(sys.stderr, level=args.log_level)
        logger.enable("market_data_store")
    else:
        logger.disable("market_data_store")  # as the library ships
    if args.cross_process:
        cross_process(args)
    else:
        in_process(args)


if __name__ == "__main__":
    main()
