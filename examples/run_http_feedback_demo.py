"""Feedback over HTTP: a coordinator's pressure levels POSTed, signed, to a webhook receiver.

Starts a webhook receiver on 127.0.0.1 (a free port), enables the broadcaster the way a
deployment would (``MDS_FB_*`` environment variables, then
``HttpFeedbackBroadcaster.from_settings()``), drives a ``WriteCoordinator`` with a slow sink so
its queue fills (SOFT, HARD) and then drains (OK), and prints what the receiver got and
whether each Standard Webhooks signature verified.

    python examples/run_http_feedback_demo.py [--duration SECONDS]

Needs httpx (``pip install 'market-data-store[feedback]'``). Exits 0 when every received
event verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback import FeedbackEvent, feedback_bus
from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster

TOLERANCE_SEC = 300  # Standard Webhooks: reject timestamps more than 5 minutes off


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a Standard Webhooks signature: HMAC-SHA256 over ``id.timestamp.body``."""
    headers = {k.lower(): v for k, v in headers.items()}
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures and timestamp.isdigit()):
        return False
    if abs(time.time() - int(timestamp)) > TOLERANCE_SEC:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return True
    return False


def verify_with_standardwebhooks(secret: str, headers: dict[str, str], body: bytes) -> str:
    """Second opinion from the standardwebhooks package, when it is installed."""
    try:
        from standardwebhooks import Webhook
    except ImportError:
        return "n/a"
    try:
        Webhook(secret).verify(body, headers)
    except Exception:
        return "no"
    return "yes"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on loopback, recording every POST."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        lock = threading.Lock()
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    deliveries.append(Delivery(dict(self.headers.items()), body))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/mds-feedback"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class SlowSink:
    """Stands in for a database that is slower than the producer."""

    def __init__(self, seconds_per_batch: float) -> None:
        self.seconds_per_batch = seconds_per_batch
        self.written = 0

    async def write(self, batch: Sequence[int]) -> None:
        await asyncio.sleep(self.seconds_per_batch)
        self.written += len(batch)


async def drive_coordinator(duration: float) -> int:
    """Overload a coordinator for about half of ``duration``, then let it drain and stop."""
    sink = SlowSink(seconds_per_batch=0.02)  # 25 items per 20 ms: about 1,250 items/s
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=sink, capacity=200, workers=1, batch_size=25, flush_interval=0.05, coord_id="demo"
    )
    recovered = asyncio.Event()

    async def watch(event: FeedbackEvent) -> None:
        if event.coordinator_id == "demo" and event.reason == "queue_recovered":
            recovered.set()

    feedback_bus().subscribe(watch)
    loop = asyncio.get_running_loop()
    async with coordinator:
        produce_until = loop.time() + duration / 2
        item = 0
        while loop.time() < produce_until:
            # ~2,000 items/s against ~1,250/s written: the queue climbs through SOFT to HARD,
            # where submit_many() blocks until the sink makes room.
            item += await coordinator.submit_many(range(item, item + 20))
            await asyncio.sleep(0.01)
        # The producer pauses; wait (at most the other half) for the coordinator to say OK.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recovered.wait(), timeout=duration / 2)
    feedback_bus().unsubscribe(watch)
    print(f"coordinator: {item} items submitted, {sink.written} written by the slow sink")
    return item


def report(secret: str, deliveries: list[Delivery]) -> bool:
    """Print each received event and whether its signature verified; True if all did."""
    print(f"receiver got {len(deliveries)} webhook requests:")
    print(f"  {'seq':>3}  {'level':<5} {'queue':>9}  {'reason':<16} {'verified':<8} stdwh")
    all_ok = bool(deliveries)
    for delivery in deliveries:
        event = json.loads(delivery.body)
        ok = verify_signature(secret, delivery.headers, delivery.body)
        second = verify_with_standardwebhooks(secret, delivery.headers, delivery.body)
        all_ok = all_ok and ok and second != "no"
        queue = f"{event['queue_size']}/{event['capacity']}"
        print(
            f"  {event['seq']:>3}  {event['level']:<5} {queue:>9}  {event['reason'] or '-':<16} "
            f"{'yes' if ok else 'NO':<8} {second}"
        )
    verified = sum(verify_signature(secret, d.headers, d.body) for d in deliveries)
    print(f"verified {verified}/{len(deliveries)} signatures")
    print("(a gap in seq is an event superseded by a newer one of the same coordinator)")
    return all_ok


async def main(duration: float) -> int:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with Receiver() as receiver:
        os.environ["MDS_FB_ENABLE_HTTP_BROADCAST"] = "true"
        os.environ["MDS_FB_FEEDBACK_WEBHOOK_URL"] = receiver.url
        os.environ["MDS_FB_WEBHOOK_SECRET"] = secret
        os.environ["MDS_FB_HTTP_TIMEOUT"] = "2.0"
        broadcaster = HttpFeedbackBroadcaster.from_settings()
        if broadcaster is None or not broadcaster.enabled:
            print("the HTTP broadcast is unavailable (is httpx installed?)")
            return 1
        print(f"webhook receiver listening on {receiver.url}")
        async with broadcaster:
            await drive_coordinator(duration)
            await feedback_bus().flush()  # hand the final "stopped" event to the broadcaster
        # leaving the block stopped the broadcaster, which sends what was pending first
        return 0 if report(secret, receiver.deliveries) else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=2.0,
        help="seconds to run: half overloading the coordinator, half draining (default 2)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args().duration)))
