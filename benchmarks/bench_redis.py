"""Feedback across processes on Redis: delivery latency, and memory and correctness under load.

Starts a throwaway redis-server on 127.0.0.1 (unless ``--redis-url``), then runs two phases,
each with one store process (a ``RedisFeedbackPublisher`` on its bus) and one pipeline process
(a ``RedisFeedbackListener`` into its bus):

  latency  ``--latency-events`` events, one per millisecond; the pipeline's subscriber takes
           ``time.time() - event.ts`` for each: emission in the store process to delivery
           in the pipeline process. p50 and p99 (goal: p99 < 10 ms).
  load     ``--rate`` events/s from ``--coordinators`` coordinators for ``--seconds`` (default
           10,000/s from 100 for 30 s). RSS growth in both processes from the end of the
           first tenth of the run (warm-up) to the end (goal: < 20 MB each), and every
           coordinator's latest level at the pipeline equal to the store's at the end.
  submit   ``WriteCoordinator.submit()`` throughput (``--submit-items`` items into a no-op
           sink, many level changes) with the publisher's Redis up, down (nothing listens)
           and hung (SIGSTOP), each run in a fresh event loop, the order alternating over
           ``--rounds`` rounds; the figure is the median per-round ratio to "up", with min
           and max (goal: > 0.9 while Redis is down or hung).

    python benchmarks/bench_redis.py [--seconds 30] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import REGISTRY

from market_data_store.coordinator import WriteCoordinator
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    RedisFeedbackListener,
    RedisFeedbackPublisher,
)

P99_GOAL_MS = 10.0
SUBMIT_RATIO_GOAL = 0.9
RSS_GOAL_MB = 20.0
LEVELS = list(BackpressureLevel)
FINAL = "final"


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counter(name: str, **labels: str) -> int:
    """A counter of this process's default registry (0 when never incremented)."""
    return int(REGISTRY.get_sample_value(name, labels) or 0)


def report(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


# -- the two processes ---------------------------------------------------------------------


async def store_latency(args: argparse.Namespace) -> None:
    bus = FeedbackBus()
    async with RedisFeedbackPublisher(args.redis_url, channel=args.channel, bus=bus):
        for seq in range(1, args.latency_events + 1):
            bus.publish_nowait(FeedbackEvent("latency", seq % 10, 10, LEVELS[seq % 3], seq=seq))
            await asyncio.sleep(0.001)
        await bus.flush(timeout=5.0)
    report({"sent": args.latency_events})


async def pipeline_latency(args: argparse.Namespace) -> None:
    bus = FeedbackBus()
    latencies: list[float] = []
    done = asyncio.Event()

    async def measure(event: FeedbackEvent) -> None:
        latencies.append((time.time() - event.ts) * 1000)
        if event.seq == args.latency_events:
            done.set()

    bus.subscribe(measure)
    async with RedisFeedbackListener(args.redis_url, channel=args.channel, bus=bus):
        report({"ready": True})
        try:
            async with asyncio.timeout(args.latency_events / 1000 + 20):
                await done.wait()
        except TimeoutError:
            pass
    report({"latencies_ms": latencies})


async def store_load(args: argparse.Namespace) -> None:
    bus = FeedbackBus()
    names = [f"coord-{i:03d}" for i in range(args.coordinators)]
    seqs = dict.fromkeys(names, 0)
    truth: dict[str, tuple[int, str]] = {}
    per_tick = max(1, round(args.rate * 0.01))  # one batch of events every 10 ms
    loop = asyncio.get_running_loop()
    async with RedisFeedbackPublisher(args.redis_url, channel=args.channel, bus=bus) as pub:
        start = loop.time()
        warm_until, end = start + args.seconds / 10, start + args.seconds
        rss_start = None
        sent, tick, turn = 0, 0, 0
        while loop.time() < end:
            for _ in range(per_tick):
                name = names[turn % len(names)]
                turn += 1
                seqs[name] += 1
                level = random.choice(LEVELS)
                bus.publish_nowait(FeedbackEvent(name, 0, 100, level, seq=seqs[name]))
                truth[name] = (seqs[name], level.value)
                sent += 1
            if rss_start is None and loop.time() >= warm_until:
                rss_start = rss_mb()
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * 0.01 - loop.time()))
        elapsed = loop.time() - start
        await bus.flush(timeout=10.0)
        rss_end = rss_mb()
        for name in names:  # tell the pipeline the run is over, one marker per coordinator
            seqs[name] += 1
            bus.publish_nowait(
                FeedbackEvent(name, 0, 100, BackpressureLevel.OK, FINAL, seq=seqs[name])
            )
            truth[name] = (seqs[name], "ok")
        await bus.flush(timeout=10.0)
        outbox_left = pub.outbox_size
    report(
        {
            "sent": sent,
            "rate": sent / elapsed,
            "rss_growth_mb": rss_end - (rss_start or rss_end),
            "truth": truth,
            "outbox_left": outbox_left,
            "published": counter("mds_feedback_redis_published_total"),
            "dropped": {
                reason: counter("mds_feedback_redis_dropped_total", role="publisher", reason=reason)
                for reason in ("coalesced", "outbox_full", "not_newer", "stopped")
            },
        }
    )


async def pipeline_load(args: argparse.Namespace) -> None:
    bus = FeedbackBus()
    latest: dict[str, tuple[int, str]] = {}
    finished: set[str] = set()
    done = asyncio.Event()
    received = 0

    async def keep(event: FeedbackEvent) -> None:
        nonlocal received
        received += 1
        latest[event.coordinator_id] = (event.seq, event.level.value)
        if event.reason == FINAL:
            finished.add(event.coordinator_id)
            if len(finished) == args.coordinators:
                done.set()

    bus.subscribe(keep)
    loop = asyncio.get_running_loop()
    async with RedisFeedbackListener(args.redis_url, channel=args.channel, bus=bus):
        report({"ready": True})
        start = loop.time()
        await asyncio.sleep(args.seconds / 10)  # warm-up, as the store measures it
        rss_start = rss_mb()
        try:
            async with asyncio.timeout(args.seconds + 30 - (loop.time() - start)):
                await done.wait()
        except TimeoutError:
            pass
        rss_end = rss_mb()
    report(
        {
            "received": received,
            "passed_on": counter("mds_feedback_redis_received_total"),
            "stale": counter("mds_feedback_redis_dropped_total", role="listener", reason="stale"),
            "rss_growth_mb": rss_end - rss_start,
            "latest": latest,
        }
    )


class NullSink:
    """Accepts every batch at once."""

    async def write(self, batch: Any) -> None:
        return None


async def submit_run(url: str, items: int) -> tuple[float, int]:
    """Items/s through ``submit()`` with a publisher to ``url`` on the bus; events emitted."""
    bus = FeedbackBus()
    events = 0

    async def count(event: FeedbackEvent) -> None:
        nonlocal events
        events += 1

    bus.subscribe(count)
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=NullSink(), capacity=200, workers=2, batch_size=50, coord_id="submit", bus=bus
    )
    publisher = RedisFeedbackPublisher(url, channel=f"mds:bench:{uuid.uuid4().hex[:8]}", bus=bus)
    async with publisher, coordinator:
        started = time.perf_counter()
        for item in range(items):
            await coordinator.submit(item)
        elapsed = time.perf_counter() - started
        await publisher.stop(timeout=0.1)
    return items / elapsed, events


def submit_ratios(args: argparse.Namespace) -> bool:
    from market_data_store.testing.postgres import free_port
    from market_data_store.testing.redis import RedisServer

    with RedisServer() as hung_server:
        hung_server.pause()
        urls = {
            "up": args.redis_url,
            "down": f"redis://127.0.0.1:{free_port()}/0",
            "hung": hung_server.url,
        }
        rounds: list[dict[str, tuple[float, int]]] = []
        for round_no in range(args.rounds):
            order = list(urls) if round_no % 2 == 0 else list(reversed(urls))
            rounds.append({v: asyncio.run(submit_run(urls[v], args.submit_items)) for v in order})
        hung_server.resume()
    ok = True
    up = statistics.median(r["up"][0] for r in rounds)
    print(f"submit   {args.submit_items} items x {args.rounds} rounds; Redis up: {up:,.0f} items/s")
    for variant in ("down", "hung"):
        ratios = [r[variant][0] / r["up"][0] for r in rounds]
        median = statistics.median(ratios)
        events = statistics.median(r[variant][1] for r in rounds)
        ok &= median > SUBMIT_RATIO_GOAL
        print(
            f"         Redis {variant}: {median:.2f}x of up (min {min(ratios):.2f}, max "
            f"{max(ratios):.2f}), {events:,.0f} level events a run (goal > {SUBMIT_RATIO_GOAL})"
        )
    return ok


ROLES = {
    "store-latency": store_latency,
    "pipeline-latency": pipeline_latency,
    "store-load": store_load,
    "pipeline-load": pipeline_load,
}


# -- the conductor -------------------------------------------------------------------------


def spawn(args: argparse.Namespace, role: str) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", role, "--redis-url", args.redis_url]
    command += ["--channel", args.channel, "--seconds", str(args.seconds), "--rate"]
    command += [str(args.rate), "--coordinators", str(args.coordinators), "--latency-events"]
    command += [str(args.latency_events)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def run_pair(args: argparse.Namespace, phase: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the pipeline, wait until it listens, run the store; both reports."""
    args.channel = f"mds:bench:{uuid.uuid4().hex[:8]}"
    pipeline = spawn(args, f"pipeline-{phase}")
    assert pipeline.stdout is not None
    json.loads(pipeline.stdout.readline())  # {"ready": true}
    store = spawn(args, f"store-{phase}")
    store_out, _ = store.communicate(timeout=args.seconds + 60)
    pipe_out, _ = pipeline.communicate(timeout=args.seconds + 60)
    return json.loads(store_out.splitlines()[-1]), json.loads(pipe_out.splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def conduct(args: argparse.Namespace) -> int:
    ok = True
    _, pipe = run_pair(args, "latency")
    lat = pipe["latencies_ms"]
    p50, p99 = statistics.median(lat), percentile(lat, 0.99)
    ok &= p99 < P99_GOAL_MS and len(lat) == args.latency_events
    print(f"latency  {len(lat)}/{args.latency_events} events delivered, p50 {p50:.2f} ms, ", end="")
    print(f"p99 {p99:.2f} ms, max {max(lat):.2f} ms (goal p99 < {P99_GOAL_MS} ms)")

    store, pipe = run_pair(args, "load")
    truth = {k: tuple(v) for k, v in store["truth"].items()}
    latest = {k: tuple(v) for k, v in pipe["latest"].items()}
    wrong = [k for k in truth if latest.get(k) != truth[k]]
    print(
        f"load     {store['sent']} events in {args.seconds} s from {args.coordinators} "
        f"coordinators ({store['rate']:.0f}/s); written to Redis {store['published']}, "
        f"dropped by the publisher {store['dropped']}"
    )
    print(
        f"         listener passed on {pipe['passed_on']} (stale {pipe['stale']}); the "
        f"pipeline's subscriber got {pipe['received']} (a bus coalesces behind a slow one)"
    )
    print(
        f"         RSS growth: store {store['rss_growth_mb']:.1f} MB, pipeline "
        f"{pipe['rss_growth_mb']:.1f} MB (goal < {RSS_GOAL_MB} MB each)"
    )
    print(f"         latest level correct for {len(truth) - len(wrong)}/{len(truth)} coordinators")
    ok &= not wrong and max(store["rss_growth_mb"], pipe["rss_growth_mb"]) < RSS_GOAL_MB
    ok &= submit_ratios(args)
    print("within goals" if ok else "OUTSIDE goals")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis-url", default=None, help="default: a throwaway redis-server")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=10_000, help="events/s in the load phase")
    parser.add_argument("--coordinators", type=int, default=100)
    parser.add_argument("--latency-events", type=int, default=2000)
    parser.add_argument("--submit-items", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--role", choices=sorted(ROLES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--channel", default="mds:bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()  # the library logs nothing unless asked; the figures are the output
    if not 0 < args.seconds <= 3600:
        parser.error(f"--seconds must be in (0, 3600], got {args.seconds}")
    for name in ("rate", "coordinators", "latency_events", "submit_items", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.role is not None:
        asyncio.run(ROLES[args.role](args))
        return 0
    if args.redis_url is not None:
        return conduct(args)
    from market_data_store.testing.redis import RedisServer

    with RedisServer() as server:
        args.redis_url = server.url
        return conduct(args)


if __name__ == "__main__":
    sys.exit(main())
