"""The pipeline side of cross-process feedback: receive a store's webhook, pace a producer.

A pipeline in another process (or on another host) serves a ``FeedbackReceiver`` with an
ASGI server. Each verified delivery is published into the pipeline's own
``feedback_bus()``, where a ``RateController`` turns it into an allowed rate, exactly as it
would next to the coordinator. The store process needs no code for this: three environment
variables enable its webhook (see README, "Feedback over HTTP").

    MDS_FB_WEBHOOK_SECRET=whsec_... python examples/run_feedback_receiver.py --port 8787

Prints ``listening on URL`` first, then one line per event with the controller's rate for
that coordinator and the latency from emission (the event's ``ts``) to the controller. With
``--json`` those lines are JSON. ``--exit-after-stopped N`` exits after the ``stopped``
event of N coordinators and prints a latency summary. Needs uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import sys
import time
from typing import Any

from loguru import logger

from market_data_store.feedback import FeedbackEvent, FeedbackReceiver, RateController


class TimedController(RateController):
    """A ``RateController`` that also notes when each event reached it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latencies_ms: list[float] = []
        self.handled: asyncio.Queue[tuple[FeedbackEvent, float]] = asyncio.Queue()

    async def __call__(self, event: FeedbackEvent) -> None:
        await super().__call__(event)
        latency_ms = (time.time() - event.ts) * 1000
        self.latencies_ms.append(latency_ms)
        self.handled.put_nowait((event, latency_ms))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def report(
    controller: TimedController, args: argparse.Namespace, done: asyncio.Event
) -> None:
    stopped: set[str] = set()
    while True:
        event, latency_ms = await controller.handled.get()
        rate = controller.rate_for(event.coordinator_id)
        if args.json:
            line = {"event": event.to_dict(), "rate": rate, "latency_ms": latency_ms}
            print(json.dumps(line), flush=True)
        elif not args.quiet:
            print(
                f"{event.coordinator_id:<10} seq {event.seq:>4}  {event.level.value:<4} "
                f"{event.queue_size:>6}/{event.capacity:<6} {event.reason or '-':<16} "
                f"verified yes  rate {rate:>9.1f}/s  {latency_ms:6.2f} ms",
                flush=True,
            )
        if event.reason == "stopped":
            stopped.add(event.coordinator_id)
            if args.exit_after_stopped and len(stopped) >= args.exit_after_stopped:
                done.set()


def summary(controller: TimedController) -> dict[str, Any]:
    latencies = controller.latencies_ms
    if not latencies:
        return {"events": 0}
    return {
        "events": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


async def main(args: argparse.Namespace) -> int:
    import uvicorn

    receiver = FeedbackReceiver.from_settings()  # MDS_FB_WEBHOOK_SECRET, from env or .env
    if not receiver.verifies:
        logger.warning("MDS_FB_WEBHOOK_SECRET is not set: deliveries are accepted unsigned")
    controller = TimedController(args.max_rate)
    done = asyncio.Event()
    async with controller:  # subscribes to feedback_bus(), where the receiver publishes
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(receiver, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        reporting = asyncio.create_task(report(controller, args, done))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, done.set)
        while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.01)
        print(f"listening on http://127.0.0.1:{port}/feedback", flush=True)
        await asyncio.wait(
            [serving, asyncio.create_task(done.wait())], return_when="FIRST_COMPLETED"
        )
        server.should_exit = True
        await serving
        reporting.cancel()
    result = summary(controller)
    if args.json:
        print(json.dumps({"summary": result}), flush=True)
    elif result["events"]:
        print(
            f"latency from emission to the rate controller: p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms over {result['events']} events",
            flush=True,
        )
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8787, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--max-rate", type=float, default=2000.0, help="producer items/s at OK")
    parser.add_argument("--exit-after-stopped", type=int, default=0, metavar="N")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    return parser.parse_args()


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    logger.enable("market_data_store")
    raise SystemExit(asyncio.run(main(parse_args())))
