"""Feedback across processes on Redis: two stores, one pipeline, one picture of the pressure.

With no ``--role``, starts a throwaway redis-server on 127.0.0.1 (unless ``--redis-url`` is
given), one pipeline process and then two store processes, and prints what each sees:

- a store process runs a ``WriteCoordinator`` whose sink holds its batches until the queue
  reached HARD, then lets it drain (OK), ``--cycles`` times, and stops (OK, ``stopped``).
  The Redis publisher is started by auto-wiring, from ``MDS_FB_REDIS_URL`` alone;
- the pipeline process runs a ``RedisFeedbackListener`` into its local bus and prints every
  level it receives until it has seen each store stop.

    python examples/run_redis_feedback_demo.py [--redis-url redis://host:6379/0] [--cycles 3]

On several hosts, run ``--role store --coordinator-id NAME`` on each store host and
``--role pipeline --stores NAME,...`` on each pipeline host, all with the same
``--redis-url``. ``--json`` prints one JSON event a line instead (used by the tests).
Needs the redis package (``pip install '.[redis]'``); the default run needs
the redis-server binary. Every run ends within ``--timeout`` seconds (default 12).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import IO, Any

from loguru import logger

from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackEvent,
    RedisFeedbackListener,
    feedback_bus,
)


class GatedSink:
    """Holds every batch until the gate opens: the queue fills while it is shut."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def write(self, batch: Sequence[int]) -> None:
        await self.gate.wait()


def show(role: str, event: FeedbackEvent, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"role": role, "event": event.to_dict()}), flush=True)
    else:
        reason = f" ({event.reason})" if event.reason else ""
        print(
            f"{role:>9} sees {event.coordinator_id}: {event.level.value.upper():4} "
            f"seq={event.seq} queue={event.queue_size}/{event.capacity}{reason}",
            flush=True,
        )


async def run_store(args: argparse.Namespace) -> int:
    """One store: cycles of OK -> SOFT -> HARD -> OK, published on Redis by auto-wiring."""
    os.environ["MDS_FB_REDIS_URL"] = args.redis_url
    os.environ["MDS_FB_REDIS_CHANNEL"] = args.channel
    seen: asyncio.Queue[FeedbackEvent] = asyncio.Queue()

    async def record(event: FeedbackEvent) -> None:
        if event.coordinator_id == args.coordinator_id:
            show("store", event, args.json)
            seen.put_nowait(event)

    async def wait_level(level: BackpressureLevel) -> None:
        while (await seen.get()).level is not level:
            pass

    feedback_bus().subscribe(record)
    sink = GatedSink()
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=sink, capacity=20, workers=1, batch_size=1, coord_id=args.coordinator_id
    )
    async with coordinator:
        item = 0
        for _ in range(args.cycles):
            while coordinator.health().level is not BackpressureLevel.HARD:
                await coordinator.submit(item)
                item += 1
            await wait_level(BackpressureLevel.HARD)
            sink.gate.set()  # the database caught up: the queue drains
            await wait_level(BackpressureLevel.OK)
            sink.gate.clear()
        sink.gate.set()
    await feedback_bus().flush(timeout=2.0)
    return 0


async def run_pipeline(args: argparse.Namespace) -> int:
    """One pipeline: every level of every store, from Redis, until each store stopped."""
    waiting = {name for name in args.stores.split(",") if name}
    done = asyncio.Event()

    async def record(event: FeedbackEvent) -> None:
        show("pipeline", event, args.json)
        if event.reason == "stopped":
            waiting.discard(event.coordinator_id)
            if not waiting:
                done.set()

    feedback_bus().subscribe(record)
    async with RedisFeedbackListener(args.redis_url, channel=args.channel):
        print(json.dumps({"role": "pipeline", "ready": True}) if args.json else "ready", flush=True)
        try:
            async with asyncio.timeout(args.timeout):
                await done.wait()
        except TimeoutError:
            print(f"pipeline: no stop seen from {sorted(waiting)}", file=sys.stderr)
            return 1
    return 0


def spawn(args: argparse.Namespace, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--redis-url", args.redis_url, "--channel", args.channel]
    command += ["--cycles", str(args.cycles), "--timeout", str(args.timeout), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def read_line(stream: IO[str] | None) -> str:
    return stream.readline() if stream is not None else ""


def run_all(args: argparse.Namespace) -> int:
    """Two stores and one pipeline as separate processes on this machine."""
    server: Any = None
    if args.redis_url is None:
        from market_data_store.testing.redis import RedisServer

        server = RedisServer()
        server.start()
        args.redis_url = server.url
        print(f"started redis-server on {server.url}", flush=True)
    try:
        return run_processes(args)
    finally:
        if server is not None:
            server.destroy()


def run_processes(args: argparse.Namespace) -> int:
    stores = ["store-1", "store-2"]
    deadline = time.monotonic() + args.timeout
    pipeline = spawn(args, "--role", "pipeline", "--stores", ",".join(stores))
    read_line(pipeline.stdout)  # "ready": subscribed and the current levels loaded
    procs = [spawn(args, "--role", "store", "--coordinator-id", name) for name in stores]
    procs.append(pipeline)
    codes = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out, end="", flush=True)
        codes.append(proc.returncode)
    return 0 if all(code == 0 for code in codes) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["all", "store", "pipeline"], default="all")
    parser.add_argument("--redis-url", default=None, help="default: a throwaway redis-server")
    parser.add_argument("--channel", default=f"mds:feedback:demo:{uuid.uuid4().hex[:8]}")
    parser.add_argument("--coordinator-id", default="store-1")
    parser.add_argument("--stores", default="store-1,store-2")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=12.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.cycles <= 1000:
        parser.error(f"--cycles must be in 1..1000, got {args.cycles}")
    if not 0 < args.timeout <= 600:
        parser.error(f"--timeout must be in (0, 600] seconds, got {args.timeout}")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("market_data_store")
    if args.role == "all":
        return run_all(args)
    if args.redis_url is None:
        parser.error(f"--role {args.role} needs --redis-url")
    runner = run_store if args.role == "store" else run_pipeline
    return asyncio.run(runner(args))


if __name__ == "__main__":
    sys.exit(main())
