"""Feedback events through a real FeedbackBus to a real HTTP server on loopback, signed."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    feedback_bus,
)
from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster
from market_data_store.testing.waits import wait_until

SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-of-32-bytes!!").decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback webhook endpoint; ``fail_first`` requests get a 503, ``hang`` blocks."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    fail_first: int = 0
    hang: threading.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.received.append(Received(headers, body))
            return 503 if len(self.received) <= self.fail_first else 204


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if state.hang is not None:
                state.hang.wait(10)
            status = state.record(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/feedback"
    try:
        yield state
    finally:
        if state.hang is not None:
            state.hang.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def event(coordinator_id: str, level: BackpressureLevel, seq: int) -> FeedbackEvent:
    sizes = {BackpressureLevel.OK: 10, BackpressureLevel.SOFT: 60, BackpressureLevel.HARD: 90}
    return FeedbackEvent(coordinator_id, sizes[level], 100, level, seq=seq)


async def test_published_events_arrive_signed_and_verify(receiver: Receiver) -> None:
    """Each event published on the bus reaches the server with a verifying signature."""
    bus = FeedbackBus()
    levels = [BackpressureLevel.SOFT, BackpressureLevel.HARD, BackpressureLevel.OK]
    published = [
        event(cid, level, seq) for cid in ("bars", "quotes") for seq, level in enumerate(levels)
    ]
    async with HttpFeedbackBroadcaster(receiver.url, secret=SECRET, bus=bus):
        for sent, item in enumerate(published, start=1):
            await bus.publish(item)
            await wait_until(lambda n=sent: len(receiver.received) == n)
    verifier = Webhook(SECRET)
    payloads = [verifier.verify(r.body, r.headers) for r in receiver.received]
    assert payloads == [e.to_dict() for e in published]
    assert [p["level"] for p in payloads] == ["soft", "hard", "ok"] * 2
    assert len({r.headers["webhook-id"] for r in receiver.received}) == len(published)


async def test_burst_delivers_latest_event_of_each_coordinator(receiver: Receiver) -> None:
    """After a burst on the default bus, the last event of every coordinator arrives, verified."""
    caster = HttpFeedbackBroadcaster(receiver.url, secret=SECRET)
    bus = feedback_bus()
    async with caster:
        for seq in range(20):
            for cid in ("a", "b", "c"):
                await bus.publish(event(cid, BackpressureLevel.HARD, seq))
        await wait_until(
            lambda: (
                {(r.payload["coordinator_id"], r.payload["seq"]) for r in receiver.received}
                >= {("a", 19), ("b", 19), ("c", 19)}
            )
        )
    assert caster not in bus.subscribers()
    verifier = Webhook(SECRET)
    for item in receiver.received:
        verifier.verify(item.body, item.headers)
    for cid in ("a", "b", "c"):
        seqs = [r.payload["seq"] for r in receiver.received if r.payload["coordinator_id"] == cid]
        assert seqs == sorted(seqs)


async def test_retry_after_503_keeps_webhook_id_and_verifies(receiver: Receiver) -> None:
    """A 503 from the server is retried; both attempts carry one webhook-id and verify."""
    receiver.fail_first = 1
    bus = FeedbackBus()
    async with HttpFeedbackBroadcaster(receiver.url, secret=SECRET, bus=bus, backoff_base=0.0):
        await bus.publish(event("bars", BackpressureLevel.HARD, 1))
        await wait_until(lambda: len(receiver.received) == 2)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    verifier = Webhook(SECRET)
    assert verifier.verify(first.body, first.headers) == verifier.verify(
        second.body, second.headers
    )


async def test_hung_server_blocks_neither_publish_nor_stop(receiver: Receiver) -> None:
    """A server that never answers: publish returns at once, stop(timeout) returns on time."""
    receiver.hang = threading.Event()
    bus = FeedbackBus()
    caster = HttpFeedbackBroadcaster(receiver.url, bus=bus, timeout=30.0)
    await caster.start()
    for seq in range(50):
        await asyncio.wait_for(bus.publish(event("bars", BackpressureLevel.HARD, seq)), 1.0)
    assert caster.outbox_size <= 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(caster.stop(timeout=0.2), timeout=5.0)
    assert loop.time() - started < 2.5
    assert caster.state == "stopped"
