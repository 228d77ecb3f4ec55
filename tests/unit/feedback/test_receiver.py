"""FeedbackReceiver: Standard Webhooks verification, replay and seq rules, its ASGI statuses."""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from market_data_store.errors import ConfigError, InvalidFeedbackError, WebhookVerificationError
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    RateController,
    receiver,
)
from market_data_store.feedback.http_broadcast import sign_webhook
from market_data_store.feedback.receiver import FeedbackReceiver
from market_data_store.feedback.settings import FeedbackSettings

SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-32-bytes!!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-of-32-bytes!!!").decode()
NOW = 1_800_000_000.0
DEADLINE = 2.0

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD


def event(
    seq: int,
    level: BackpressureLevel = HARD,
    *,
    cid: str = "bars",
    ts: float | None = None,
    reason: str | None = None,
) -> FeedbackEvent:
    return FeedbackEvent(cid, 90, 100, level, reason, NOW - 10 + seq if ts is None else ts, seq)


def body_of(item: FeedbackEvent) -> bytes:
    return json.dumps(item.to_dict(), separators=(",", ":")).encode()


def signed(
    body: bytes,
    *,
    msg_id: str = "msg_1",
    timestamp: float = NOW,
    secret: str = SECRET,
) -> dict[str, str]:
    """Headers signed by the standardwebhooks package (not by the code under test); it takes
    text only, so a body that is not UTF-8 is signed by the broadcaster's function."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    try:
        signature = Webhook(secret).sign(msg_id, when, body.decode())
    except UnicodeDecodeError:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signature = sign_webhook(key, msg_id, math.floor(timestamp), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(timestamp)),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


@dataclass
class Published:
    """A bus subscriber keeping what the receiver published."""

    events: list[FeedbackEvent] = field(default_factory=list)

    async def __call__(self, item: FeedbackEvent) -> None:
        self.events.append(item)


@pytest.fixture
def bus() -> FeedbackBus:
    return FeedbackBus()


@pytest.fixture
def published(bus: FeedbackBus) -> Published:
    sink = Published()
    bus.subscribe(sink)
    return sink


def make(bus: FeedbackBus, secret: str | None = SECRET, **kwargs: Any) -> FeedbackReceiver:
    return FeedbackReceiver(secret, bus=bus, clock=lambda: NOW, **kwargs)


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    messages_read: int


async def call(
    app: FeedbackReceiver,
    body_chunks: Iterable[bytes],
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Answer:
    """Drive the ASGI app with one HTTP request, counting the body messages it reads."""
    chunks: Iterator[bytes] = iter(body_chunks)
    pending: bytes | None = next(chunks, None)
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pending, read
        read += 1
        chunk, pending = pending, next(chunks, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": pending is not None}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": "/feedback",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start" and sent[-1]["type"] == "http.response.body"
    return Answer(start["status"], dict(start["headers"]), read)


# --- accepted ------------------------------------------------------------------------------


async def test_good_signature_is_accepted_published_and_answered_204(
    bus: FeedbackBus, published: Published
) -> None:
    """A delivery signed by standardwebhooks is parsed, published on the bus, answered 204."""
    sent = event(3)
    body = body_of(sent)
    answer = await call(make(bus), [body], signed(body))
    assert answer.status == 204
    await bus.flush(timeout=DEADLINE)
    assert published.events == [sent]


def test_receive_returns_the_event_and_accepts_one_good_signature_among_several(
    bus: FeedbackBus,
) -> None:
    """webhook-signature may hold several entries (key rotation): one valid entry suffices."""
    body = body_of(event(1))
    headers = signed(body)
    wrong = signed(body, secret=OTHER_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"v2,abc {wrong} v1,not-base64! {headers['webhook-signature']}"
    assert make(bus).receive(headers, body) == event(1)


# --- rejected: 401 ---------------------------------------------------------------------------


def tampered(body: bytes) -> tuple[dict[str, str], bytes]:
    return signed(body), body.replace(b'"hard"', b'"ok"')


@pytest.mark.parametrize(
    "case",
    ["tampered body", "wrong secret", "too old", "too far ahead", "no signature", "no id"],
)
async def test_inauthentic_delivery_is_rejected_401_and_not_published(
    case: str, bus: FeedbackBus, published: Published
) -> None:
    """Tampered body, wrong secret, timestamp outside the window, missing headers: 401."""
    body = body_of(event(1))
    headers = signed(body)
    if case == "tampered body":
        headers, body = tampered(body)
    elif case == "wrong secret":
        headers = signed(body, secret=OTHER_SECRET)
    elif case == "too old":
        headers = signed(body, timestamp=NOW - 301)
    elif case == "too far ahead":
        headers = signed(body, timestamp=NOW + 301)
    elif case == "no signature":
        del headers["webhook-signature"]
    else:
        del headers["webhook-id"]
    app = make(bus)
    assert (await call(app, [body], headers)).status == 401
    with pytest.raises(WebhookVerificationError) as raised:
        app.receive(headers, body)
    assert isinstance(raised.value, ValueError)
    assert SECRET not in str(raised.value) and SECRET[6:] not in str(raised.value)
    await bus.flush(timeout=DEADLINE)
    assert published.events == []


def test_timestamp_at_the_edge_of_the_window_is_accepted(bus: FeedbackBus) -> None:
    """A webhook-timestamp exactly tolerance_sec old still verifies."""
    body = body_of(event(1))
    assert make(bus).receive(signed(body, timestamp=NOW - 300), body) is not None


# --- duplicates and replays ------------------------------------------------------------------


async def test_replayed_webhook_id_is_answered_204_but_not_republished(
    bus: FeedbackBus, published: Published
) -> None:
    """The same signed delivery twice (a retry, or a replay): 204 both times, published once."""
    body = body_of(event(1))
    headers = signed(body)
    app = make(bus)
    assert (await call(app, [body], headers)).status == 204
    assert (await call(app, [body], headers)).status == 204
    assert app.receive(headers, body) is None
    await bus.flush(timeout=DEADLINE)
    assert published.events == [event(1)]


async def test_an_accepted_webhook_id_is_a_duplicate_even_when_its_seq_would_pass(
    bus: FeedbackBus, published: Published
) -> None:
    """A replay of an accepted delivery is dropped by its webhook-id alone: after a
    'stopped' event the seq rule would take seq 1 again, the id rule must not."""
    app = make(bus)
    first_body = body_of(event(1))
    first_headers = signed(first_body, msg_id="msg-1")
    assert app.receive(first_headers, first_body) == event(1)
    stopped = event(2, OK, reason="stopped")
    stopped_body = body_of(stopped)
    assert app.receive(signed(stopped_body, msg_id="msg-2"), stopped_body) == stopped
    assert app.receive(dict(first_headers), bytes(first_body)) is None  # byte for byte
    await bus.flush(timeout=DEADLINE)
    assert published.events == [event(1), stopped]


def test_remembered_ids_are_bounded_by_time_and_by_count(
    bus: FeedbackBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids are forgotten once their window has passed, and beyond MAX_REMEMBERED_IDS."""
    now = [NOW]
    app = FeedbackReceiver(SECRET, bus=bus, clock=lambda: now[0], tolerance_sec=10)
    monkeypatch.setattr(receiver, "MAX_REMEMBERED_IDS", 5)
    for seq in range(1, 9):
        body = body_of(event(seq, ts=now[0]))
        assert app.receive(signed(body, msg_id=f"id{seq}", timestamp=now[0]), body) is not None
    assert len(app._seen_ids) == 5
    now[0] += 11
    body = body_of(event(20, ts=now[0]))
    app.receive(signed(body, msg_id="late", timestamp=now[0]), body)
    assert list(app._seen_ids) == ["late"]


# --- payloads: 400 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field_name"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"queue_size": 1}', "coordinator_id"),
        (json.dumps({**event(1).to_dict(), "level": "panic"}).encode(), "level"),
        (json.dumps({**event(1).to_dict(), "queue_size": -1}).encode(), "queue_size"),
        (json.dumps({**event(1).to_dict(), "seq": True}).encode(), "seq"),
        (json.dumps({**event(1).to_dict(), "capacity": "100"}).encode(), "capacity"),
        (json.dumps({**event(1).to_dict(), "ts": None}).encode(), "ts"),
        (json.dumps({**event(1).to_dict(), "reason": 5}).encode(), "reason"),
        (json.dumps({**event(1).to_dict(), "drain_rate": -1.0}).encode(), "drain_rate"),
        (json.dumps({**event(1).to_dict(), "drain_rate": "5"}).encode(), "drain_rate"),
        (json.dumps({**event(1).to_dict(), "arrival_rate": True}).encode(), "arrival_rate"),
        (
            b'{"coordinator_id":"c","queue_size":1,"capacity":2,"level":"ok","ts":1.0,"seq":1,'
            b'"arrival_rate":Infinity}',
            "arrival_rate",
        ),
        (b"\xff\xfe", "JSON"),
    ],
)
async def test_invalid_payload_is_rejected_400_naming_the_field(
    payload: bytes, field_name: str, bus: FeedbackBus
) -> None:
    """A verified body that is not a valid event: 400, InvalidFeedbackError naming the field."""
    app = make(bus)
    assert (await call(app, [payload], signed(payload, msg_id="a"))).status == 400
    with pytest.raises(InvalidFeedbackError, match=field_name) as raised:
        app.receive(signed(payload, msg_id="b"), payload)
    assert isinstance(raised.value, ValueError)


# --- seq: stale dropped, restarted coordinator recognised ------------------------------------


def test_measured_rates_are_parsed_and_payloads_without_them_still_accepted() -> None:
    """drain_rate / arrival_rate parse as floats or null; an older payload lacks them: None."""
    measured = FeedbackEvent("c", 9, 10, SOFT, None, NOW, 3, drain_rate=950.5, arrival_rate=1900)
    assert receiver.parse_event(body_of(measured)) == measured
    unmeasured = FeedbackEvent("c", 9, 10, SOFT, None, NOW, 4)
    assert receiver.parse_event(body_of(unmeasured)) == unmeasured
    old = {k: v for k, v in unmeasured.to_dict().items() if not k.endswith("_rate")}
    parsed = receiver.parse_event(json.dumps(old).encode())
    assert (parsed.drain_rate, parsed.arrival_rate) == (None, None)
    assert parsed == unmeasured


async def test_stale_seq_is_not_republished(bus: FeedbackBus, published: Published) -> None:
    """An event whose seq is not newer than the last accepted one is answered but dropped."""
    app = make(bus, secret=None)
    for seq in (1, 3, 2, 3):
        app.receive({}, body_of(event(seq)))
    await bus.flush(timeout=DEADLINE)
    assert [e.seq for e in published.events] == [1, 3]


def test_restarted_coordinator_after_stopped_starts_a_new_run(bus: FeedbackBus) -> None:
    """After a coordinator's 'stopped' event, its next run's seq 1 is accepted."""
    app = make(bus, secret=None)
    assert app.receive({}, body_of(event(40))) is not None
    assert app.receive({}, body_of(event(41, OK, reason="stopped"))) is not None
    assert app.receive({}, body_of(event(1, SOFT, ts=NOW - 100))) is not None
    assert app.receive({}, body_of(event(2, HARD, ts=NOW - 99))) is not None


def test_coordinators_remembered_for_ordering_are_bounded(
    bus: FeedbackBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond MAX_COORDINATORS the least recently heard coordinator's last seq is forgotten."""
    monkeypatch.setattr(receiver, "MAX_COORDINATORS", 3)
    app = make(bus, secret=None)
    for n in range(5):
        assert app.receive({}, body_of(event(1, cid=f"c{n}"))) is not None
    assert list(app._runs) == ["c2", "c3", "c4"]


def test_restarted_coordinator_after_a_crash_is_not_ignored(bus: FeedbackBus) -> None:
    """After a crash a lower seq with a later ts starts a new run; a late old event stays out."""
    app = make(bus, secret=None)
    assert app.receive({}, body_of(event(500, ts=NOW - 60))) is not None
    assert app.receive({}, body_of(event(499, ts=NOW - 61))) is None
    assert app.receive({}, body_of(event(1, SOFT, ts=NOW - 5))) is not None
    assert app.receive({}, body_of(event(2, HARD, ts=NOW - 4))) is not None
    assert app.receive({}, body_of(event(2, HARD, ts=NOW - 4))) is None


async def test_crash_restart_ends_the_old_run_so_a_rate_controller_follows_the_new_one(
    bus: FeedbackBus, published: Published
) -> None:
    """A new run after a crash: a 'stopped' for the old run first, then the new event."""
    controller = RateController(1000.0, bus=bus)
    async with controller:
        app = make(bus, secret=None)
        app.receive({}, body_of(event(500, HARD, ts=NOW - 60)))
        await bus.flush(timeout=DEADLINE)
        assert controller.rate_for("bars") == pytest.approx(500.0)
        assert app.receive({}, body_of(event(1, SOFT, ts=NOW - 5))) == event(1, SOFT, ts=NOW - 5)
        await bus.flush(timeout=DEADLINE)
        assert controller.rate_for("bars") == pytest.approx(800.0)  # cut from max, not 500
    ended = published.events[1]
    assert (ended.level, ended.reason, ended.seq, ended.queue_size) == (OK, "stopped", 501, 0)
    assert [e.seq for e in published.events] == [500, 501, 1]


# --- ASGI: methods, sizes, lifespan ------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_methods_other_than_post_get_405_with_allow(method: str, bus: FeedbackBus) -> None:
    """Anything but POST: 405 and an allow: POST header."""
    answer = await call(make(bus), [b""], method=method)
    assert answer.status == 405 and answer.headers[b"allow"] == b"POST"


async def test_body_declared_over_max_body_gets_413_unread(bus: FeedbackBus) -> None:
    """content-length over max_body: 413 without reading one body message."""
    body = body_of(event(1))
    headers = {**signed(body), "content-length": str(10**9)}
    answer = await call(make(bus, max_body=1024), iter(lambda: b"x" * 1024, None), headers)
    assert answer.status == 413 and answer.messages_read == 0


async def test_streamed_body_over_max_body_gets_413_and_reading_stops(bus: FeedbackBus) -> None:
    """An endless chunked body: 413 once past max_body, after reading just past the limit."""
    endless = iter(lambda: b"x" * 1000, None)
    answer = await call(make(bus, max_body=4096), endless, signed(b"{}"))
    assert answer.status == 413 and answer.messages_read == 5


async def test_client_gone_before_the_body_ends_gets_no_answer(bus: FeedbackBus) -> None:
    """An http.disconnect while reading the body: nothing published, nothing sent."""
    incoming = iter([{"type": "http.request", "body": b"{", "more_body": True}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await make(bus)({"type": "http", "method": "POST", "headers": []}, receive, send)
    assert sent == []


async def test_lifespan_startup_and_shutdown_are_acknowledged(bus: FeedbackBus) -> None:
    """An ASGI server's lifespan protocol gets startup.complete and shutdown.complete."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await make(bus)({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"secret": "plain"}, "secret"),
        ({"secret": b"whsec_abc"}, "secret"),
        ({"tolerance_sec": 0}, "tolerance_sec"),
        ({"tolerance_sec": -1.0}, "tolerance_sec"),
        ({"tolerance_sec": math.nan}, "tolerance_sec"),
        ({"tolerance_sec": math.inf}, "tolerance_sec"),
        ({"max_body": 0}, "max_body"),
        ({"max_body": 1.5}, "max_body"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(kwargs: dict[str, Any], name: str) -> None:
    """Bad secret, tolerance_sec or max_body: ConfigError naming it, never echoing a secret."""
    with pytest.raises(ConfigError, match=rf"\b{name}\b") as raised:
        FeedbackReceiver(**kwargs)
    assert "plain" not in str(raised.value)


def test_from_settings_reads_the_webhook_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bus: FeedbackBus
) -> None:
    """from_settings() takes MDS_FB_WEBHOOK_SECRET; without it deliveries are not verified."""
    for key in list(os.environ):
        if key.upper().startswith("MDS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    assert FeedbackReceiver.from_settings(bus=bus).verifies is False
    monkeypatch.setenv("MDS_FB_WEBHOOK_SECRET", SECRET)
    built = FeedbackReceiver.from_settings(bus=bus)
    assert built.verifies is True
    assert FeedbackReceiver.from_settings(FeedbackSettings(), bus=bus).verifies is True
