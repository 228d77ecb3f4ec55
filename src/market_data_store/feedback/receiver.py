"""The receiving end of the webhook: verified feedback events into the local bus.

``FeedbackReceiver`` turns a webhook delivery (headers and raw body) into a
``FeedbackEvent`` published on a ``FeedbackBus``, so a ``RateController`` in a pipeline
process works exactly as it does next to the coordinator. It is also an ASGI application
(``await receiver(scope, receive, send)``), mountable in any ASGI framework or served alone
by an ASGI server; no web framework is a dependency.

What is accepted, in order:

1. With a secret, the Standard Webhooks signature: ``webhook-id``, ``webhook-timestamp``
   (Unix seconds within ``tolerance_sec`` of now) and ``webhook-signature`` (one or more
   space-separated ``v1,<base64>`` entries, any one an HMAC-SHA256 with the secret over
   ``id.timestamp.body``); else ``WebhookVerificationError`` (HTTP 401).
2. A ``webhook-id`` already accepted within the tolerance window is a duplicate (a retry
   whose answer was lost, or a replay): ``receive`` returns None (HTTP 204). Ids are kept
   for ``tolerance_sec`` at most and ``MAX_REMEMBERED_IDS`` at most.
3. The body must be the broadcaster's JSON event, else ``InvalidFeedbackError`` (HTTP 400).
   ``drain_rate`` and ``arrival_rate`` may be absent (payloads of earlier versions) or null.
4. Ordering per coordinator: an event whose ``seq`` is not newer than the last one accepted
   for its coordinator is stale and dropped (None). A restarted coordinator begins its
   ``seq`` again; its new run is recognised two ways. Its ``stopped`` event (the last of
   every run stopped cleanly) ends the run: the next event is accepted whatever its
   ``seq``. After a crash (no ``stopped``), an event whose ``seq`` falls back but whose
   ``ts`` is later than the last accepted event's is the start of a new run, accepted; an
   old event delivered late has an older ``ts`` and stays dropped. For that crash case the
   receiver first publishes the ``stopped`` event the dead run never sent (level OK, queue
   size 0, ``seq`` one past the old run's, ``ts`` of the new event), so local subscribers
   that compare ``seq`` (``RateController``) forget the old run as after a clean stop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from market_data_store._validation import check_int, check_range
from market_data_store.errors import InvalidFeedbackError, WebhookVerificationError
from market_data_store.feedback import metrics
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import BackpressureLevel, FeedbackEvent
from market_data_store.feedback.settings import FeedbackSettings, secret_key

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_REMEMBERED_IDS = 65_536
"""Webhook ids remembered for replay rejection (oldest forgotten first beyond this)."""
MAX_COORDINATORS = 10_000
"""Coordinators whose last ``seq`` is remembered (least recently seen forgotten first)."""

_outcome = metrics.cached_child(metrics.FEEDBACK_RECEIVED, {})


class _Disconnected(Exception):
    """The client went away before its request body was complete."""


@dataclass(slots=True)
class _Run:
    """The last event accepted from one coordinator."""

    seq: int
    ts: float


class FeedbackReceiver:
    """Verifies webhook deliveries of feedback events and publishes them into a bus.

    Args:
        secret: the Standard Webhooks secret (``whsec_`` + base64 of >= 16 bytes) shared with
            the broadcaster; None (default) accepts unsigned deliveries (trusted network only).
        bus: where accepted events are published (``feedback_bus()`` when None).
        tolerance_sec: how far ``webhook-timestamp`` may be from now, either way, and how
            long a ``webhook-id`` is remembered; seconds, > 0 and finite (default 300.0).
        max_body: the largest body accepted, in bytes, an int >= 1 (default 65536); HTTP
            413 beyond.
        clock: Unix time in seconds (default ``time.time``; tests pass a fake clock).
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        bus: FeedbackBus | None = None,
        tolerance_sec: float = 300.0,
        max_body: int = 65_536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = secret_key(secret)
        check_range("tolerance_sec", tolerance_sec, lo=0, lo_open=True)
        check_int("max_body", max_body, lo=1)
        self._bus = bus if bus is not None else feedback_bus()
        self._tolerance = float(tolerance_sec)
        self._max_body = max_body
        self._clock = clock
        self._seen_ids: OrderedDict[str, float] = OrderedDict()  # id -> forget after (Unix s)
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()  # receive() may be called from several threads

    @classmethod
    def from_settings(
        cls, settings: FeedbackSettings | None = None, *, bus: FeedbackBus | None = None
    ) -> FeedbackReceiver:
        """Build from ``FeedbackSettings`` (``MDS_FB_WEBHOOK_SECRET``; env and .env when None)."""
        if settings is None:
            settings = FeedbackSettings()
        secret = settings.webhook_secret
        return cls(secret.get_secret_value() if secret is not None else None, bus=bus)

    @property
    def max_body(self) -> int:
        """The largest body accepted, in bytes."""
        return self._max_body

    @property
    def verifies(self) -> bool:
        """Whether deliveries must carry a valid signature."""
        return self._key is not None

    def receive(self, headers: Mapping[str, str], body: bytes) -> FeedbackEvent | None:
        """Verify one delivery and publish its event; None for a duplicate or a stale event.

        Raises ``WebhookVerificationError`` or ``InvalidFeedbackError`` (both ``ValueError``).
        Safe to call from any thread.
        """
        try:
            with self._lock:
                events = self._accept(headers, body)
        except WebhookVerificationError as exc:
            _outcome("unauthorized").inc()
            logger.debug("feedback receiver: delivery rejected: {}", exc)
            raise
        except InvalidFeedbackError as exc:
            _outcome("invalid").inc()
            logger.debug("feedback receiver: delivery rejected: {}", exc)
            raise
        for event in events:
            self._bus.publish_nowait(event)
        return events[-1] if events else None

    def _accept(self, headers: Mapping[str, str], body: bytes) -> list[FeedbackEvent]:
        """The events to publish: none, the delivered one, or an old run's end and it."""
        if len(body) > self._max_body:
            raise InvalidFeedbackError(f"body of {len(body)} bytes exceeds max_body")
        lowered = {name.lower(): value for name, value in headers.items()}
        now = self._clock()
        msg_id = lowered.get("webhook-id")
        if self._key is not None:
            msg_id = self._verify(lowered, body, now)
        self._forget_expired_ids(now)
        if msg_id is not None and msg_id in self._seen_ids:
            _outcome("duplicate").inc()
            return []
        event = parse_event(body)
        if msg_id is not None:
            self._remember_id(msg_id, now)
        events = self._order(event)
        _outcome("accepted" if events else "stale").inc()
        return events

    def _verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str:
        assert self._key is not None
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signatures),
        ):
            if not value:
                raise WebhookVerificationError(f"header {name} is missing")
        assert msg_id is not None and timestamp is not None and signatures is not None
        if not timestamp.isascii() or not timestamp.isdigit():
            raise WebhookVerificationError("header webhook-timestamp is not Unix seconds")
        if abs(now - int(timestamp)) > self._tolerance:
            raise WebhookVerificationError(
                f"webhook-timestamp is more than {self._tolerance:g} s from now"
            )
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = hmac.new(self._key, signed, hashlib.sha256).digest()
        for entry in signatures.split():
            version, _, encoded = entry.partition(",")
            if version != "v1":
                continue
            try:
                candidate = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            if hmac.compare_digest(candidate, expected):
                return msg_id
        raise WebhookVerificationError("no webhook-signature entry matches")

    def _forget_expired_ids(self, now: float) -> None:
        seen = self._seen_ids
        while seen:
            oldest_id, forget_after = next(iter(seen.items()))
            if forget_after >= now:
                return
            del seen[oldest_id]

    def _remember_id(self, msg_id: str, now: float) -> None:
        # A delivery older than now - tolerance fails verification, so an id needs keeping
        # only that long; ids arrive in time order, so the oldest sit at the front.
        self._seen_ids[msg_id] = now + self._tolerance
        if len(self._seen_ids) > MAX_REMEMBERED_IDS:
            self._seen_ids.popitem(last=False)

    def _order(self, event: FeedbackEvent) -> list[FeedbackEvent]:
        """Apply the per-coordinator ordering rule (module docstring, point 4)."""
        runs = self._runs
        cid = event.coordinator_id
        last = runs.get(cid)
        published = [event]
        if last is not None and event.seq <= last.seq:
            if event.ts <= last.ts:
                return []  # stale: an old event of the current run
            # A new run after a crash: end the old one as its stop would have.
            ended = FeedbackEvent(
                cid, 0, event.capacity, BackpressureLevel.OK, "stopped", event.ts, last.seq + 1
            )
            published.insert(0, ended)
            logger.info(
                "feedback receiver: coordinator {} restarted (seq {} after {})",
                cid,
                event.seq,
                last.seq,
            )
        if event.reason == "stopped":
            runs.pop(cid, None)  # the run is over: the next seq may start anywhere
            return published
        runs[cid] = _Run(event.seq, event.ts)
        runs.move_to_end(cid)
        if len(runs) > MAX_COORDINATORS:
            runs.popitem(last=False)
        return published

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: POST a delivery; 204 accepted or duplicate, 400, 401, 405, 413."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _respond(send, 405, [(b"allow", b"POST")])
            return
        headers = _headers(scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            _outcome("too_large").inc()
            await _respond(send, 413)  # not one byte read
            return
        try:
            body = await self._read_body(receive)
        except _Disconnected:
            return  # nobody is left to answer
        if body is None:
            _outcome("too_large").inc()
            await _respond(send, 413)
            return
        try:
            self.receive(headers, body)
        except WebhookVerificationError:
            await _respond(send, 401)
        except InvalidFeedbackError:
            await _respond(send, 400)
        else:
            await _respond(send, 204)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The request body, or None as soon as it grows past ``max_body``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def parse_event(body: bytes) -> FeedbackEvent:
    """The ``FeedbackEvent`` a webhook body carries; ``InvalidFeedbackError`` naming the field."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise InvalidFeedbackError("body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidFeedbackError("body must be a JSON object")
    coordinator_id = data.get("coordinator_id")
    if not isinstance(coordinator_id, str) or not coordinator_id:
        raise InvalidFeedbackError("coordinator_id must be a non-empty string")
    queue_size = _count(data, "queue_size")
    capacity = _count(data, "capacity")
    seq = _count(data, "seq")
    try:
        level = BackpressureLevel(data.get("level"))
    except ValueError:
        raise InvalidFeedbackError("level must be one of 'ok', 'soft', 'hard'") from None
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidFeedbackError("reason must be a string or null")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise InvalidFeedbackError("ts must be a finite number (Unix seconds)")
    return FeedbackEvent(
        coordinator_id,
        queue_size,
        capacity,
        level,
        reason,
        float(ts),
        seq,
        _rate(data, "drain_rate"),
        _rate(data, "arrival_rate"),
    )


def _rate(data: Mapping[str, Any], name: str) -> float | None:
    """An optional measured rate: absent or null is None (payloads before the field)."""
    value = data.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidFeedbackError(f"{name} must be a finite number >= 0 (items/s) or null")
    return float(value)


def _count(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidFeedbackError(f"{name} must be an integer >= 0")
    return value


def _headers(scope: Scope) -> dict[str, str]:
    """ASGI headers as a dict of lower-case names; repeated signature headers are joined."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers and name == "webhook-signature":
            headers[name] = f"{headers[name]} {value}"
        else:
            headers[name] = value
    return headers


async def _respond(send: Send, status: int, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"0"), *(extra or [])],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to set up or tear down: acknowledge startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
