"""Feedback over HTTP between two processes: a store enabled by environment alone, a pipeline
receiving its webhook.

1. Starts the pipeline side, ``examples/run_feedback_receiver.py`` (a ``FeedbackReceiver``
   served by uvicorn on 127.0.0.1, feeding a ``RateController``), in its own process.
2. Configures this process, the store, the way a deployment does: three ``MDS_FB_*``
   environment variables and nothing else. The first ``WriteCoordinator`` started then
   starts the webhook broadcaster by itself, and its ``stop()`` flushes it.
3. Drives the coordinator with a slow sink so its queue fills (SOFT, HARD), pauses so it
   drains (OK), stops it (OK, ``stopped``), and prints what the pipeline received: every
   event, verified, with the rate its controller allows.

    python examples/run_http_feedback_demo.py [--duration SECONDS]

Needs httpx and uvicorn (``pip install '.[dev]'``). Exits 0 when the pipeline verified every
event the store sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loguru import logger
from prometheus_client import REGISTRY

from market_data_store.coordinator import WriteCoordinator
from market_data_store.feedback import BackpressureLevel, FeedbackEvent, feedback_bus

RECEIVER = Path(__file__).with_name("run_feedback_receiver.py")


class SlowSink:
    """Stands in for a database that is slower than the producer (about 1,250 items/s)."""

    def __init__(self, seconds_per_batch: float) -> None:
        self.seconds_per_batch = seconds_per_batch
        self.written = 0

    async def write(self, batch: Sequence[int]) -> None:
        await asyncio.sleep(self.seconds_per_batch)
        self.written += len(batch)


def sends(outcome: str) -> int:
    value = REGISTRY.get_sample_value("mds_feedback_webhook_sends_total", {"outcome": outcome})
    return int(value or 0)


async def drive_coordinator(duration: float) -> None:
    """Overload a coordinator until it reports HARD (or ``duration`` passes), let it drain."""
    sink = SlowSink(seconds_per_batch=0.02)
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=sink, capacity=200, workers=1, batch_size=25, flush_interval=0.05, coord_id="demo"
    )
    hard, recovered = asyncio.Event(), asyncio.Event()

    async def watch(event: FeedbackEvent) -> None:
        if event.level is BackpressureLevel.HARD:
            hard.set()
        elif event.reason == "queue_recovered":
            recovered.set()

    feedback_bus().subscribe(watch)
    loop = asyncio.get_running_loop()
    async with coordinator:  # start() auto-wires the webhook from the MDS_FB_* variables
        produce_until = loop.time() + duration
        item = 0
        while not hard.is_set() and loop.time() < produce_until:
            item += await coordinator.submit_many(range(item, item + 20))
            await asyncio.sleep(0.005)  # ~4,000 items/s offered against ~1,250/s written
        # The producer pauses: the queue drains to OK (on a busy machine it may never have
        # left OK within ``duration``; then there is nothing to wait for).
        if coordinator.health().level is not BackpressureLevel.OK:
            async with asyncio.timeout(10.0):
                await recovered.wait()
    # stop() emitted OK ("stopped") and, as the last coordinator, flushed the webhook.
    feedback_bus().unsubscribe(watch)
    print(f"store: {item} items submitted, {sink.written} written by the slow sink")


def start_pipeline(secret: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDS_")}
    env["MDS_FB_WEBHOOK_SECRET"] = secret
    pipeline = subprocess.Popen(
        [sys.executable, str(RECEIVER), "--port", "0", "--exit-after-stopped", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert pipeline.stdout is not None
    first = pipeline.stdout.readline().strip()
    if not first.startswith("listening on "):
        pipeline.kill()
        raise SystemExit(f"the pipeline process did not start: {first!r}")
    return pipeline, first.removeprefix("listening on ")


async def main(duration: float) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    pipeline, url = start_pipeline(secret)
    print(f"pipeline process: FeedbackReceiver + RateController at {url}")
    # What a deployment puts in the store's environment (or .env): nothing else is needed.
    os.environ["MDS_FB_ENABLE_HTTP_BROADCAST"] = "true"
    os.environ["MDS_FB_FEEDBACK_WEBHOOK_URL"] = url
    os.environ["MDS_FB_WEBHOOK_SECRET"] = secret
    try:
        await drive_coordinator(duration)
        output, _ = await asyncio.to_thread(pipeline.communicate, timeout=10)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()
    print("pipeline received (each verified, with the rate its controller now allows):")
    accepted = 0
    for line in output.splitlines():
        print(f"  {line}")
        accepted += " verified yes " in line
    sent = sends("success") + sends("client_error")
    print(f"verified {accepted}/{sent} signatures")
    print("(a gap in seq is an event superseded by a newer one of the same coordinator)")
    return 0 if accepted == sent >= 2 and pipeline.returncode == 0 else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=2.0,
        help="longest the producer overloads the coordinator, in seconds (default 2)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    logger.enable("market_data_store")
    raise SystemExit(asyncio.run(main(parse_args().duration)))
