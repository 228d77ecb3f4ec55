"""The Redis transport without a server: the newer-event rule, the outbox bound, one WARNING
per outage, and every argument and setting checked at construction."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

from market_data_store.errors import ConfigError
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    FeedbackSettings,
    RedisFeedbackListener,
    RedisFeedbackPublisher,
    redis_transport,
)
from market_data_store.feedback._redis_wire import decode_event, is_newer
from market_data_store.feedback.events import encode_event
from market_data_store.testing.postgres import free_port
from market_data_store.testing.waits import wait_until

SOFT, HARD, OK = BackpressureLevel.SOFT, BackpressureLevel.HARD, BackpressureLevel.OK
PASSWORD = "s3cr3t-pass"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MDS_* variable from outside, and a cwd without a .env file."""
    for key in list(os.environ):
        if key.upper().startswith("MDS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dead_url() -> str:
    """A Redis URL (with a password) where nothing listens: every connect is refused."""
    return f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"


def ev(
    seq: int, ts: float, level: BackpressureLevel = SOFT, reason: str | None = None
) -> FeedbackEvent:
    return FeedbackEvent("c", 5, 10, level, reason, ts, seq)


class Recorder:
    """Keeps every event it gets."""

    def __init__(self, bus: FeedbackBus) -> None:
        self.events: list[FeedbackEvent] = []
        bus.subscribe(self)

    async def __call__(self, event: FeedbackEvent) -> None:
        self.events.append(event)


@pytest.mark.parametrize(
    ("new", "last", "expected"),
    [
        (ev(2, 100.0), None, True),
        (ev(3, 101.0), ev(2, 100.0), True),
        (ev(2, 100.0), ev(2, 100.0), False),  # a repeat
        (ev(1, 99.0), ev(2, 100.0), False),  # older, same life
        (ev(1, 200.0), ev(9, 100.0, OK, "stopped"), True),  # restarted after a stop
        (ev(1, 200.0), ev(9, 100.0, HARD), True),  # restarted after a crash
        (ev(9, 100.0, HARD), ev(1, 200.0), False),  # the old life's straggler
        (ev(3, 100.0), ev(2, 100.0), True),  # same instant: seq decides
    ],
)
def test_is_newer_orders_by_ts_then_seq_so_a_restart_is_recognised(
    new: FeedbackEvent, last: FeedbackEvent | None, expected: bool
) -> None:
    """Newer is a later (ts, seq): repeats and old-life stragglers stale, restarts newer."""
    assert is_newer(new, last) is expected


def test_payload_round_trips_the_webhook_json() -> None:
    """decode_event(encode_event(e)) == e, and the payload is FeedbackEvent.to_dict()."""
    event = FeedbackEvent("c-1", 7, 10, HARD, "circuit_open", 1234.5, 42)
    assert decode_event(encode_event(event)) == event
    assert '"utilization":0.7' in encode_event(event)
    measured = FeedbackEvent("c-1", 7, 10, HARD, None, 1234.5, 43, 480.0, 1010.25)
    assert decode_event(encode_event(measured)) == measured


async def test_listener_passes_on_newer_events_only(dead_url: str) -> None:
    """The listener drops repeats, older seq and old-life stragglers; passes a restart on."""
    bus = FeedbackBus()
    recorder = Recorder(bus)
    listener = RedisFeedbackListener(dead_url, bus=bus)
    arriving = [
        ev(1, 1.0),
        ev(3, 3.0, HARD),
        ev(2, 2.0),
        ev(3, 3.0, HARD),
        ev(4, 4.0, OK, "stopped"),
    ]
    arriving += [ev(1, 9.0), ev(4, 4.0)]
    for event in arriving:
        listener._accept(encode_event(event))  # what a pub/sub message or the hash hands in
    await bus.flush()
    assert [(e.seq, e.ts) for e in recorder.events] == [(1, 1.0), (3, 3.0), (4, 4.0), (1, 9.0)]


async def test_listener_forgets_the_least_recently_heard_coordinator_beyond_its_bound(
    dead_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_COORDINATORS the listener forgets the quietest one, so a busy coordinator's
    stale repeat is still dropped and memory stays bounded."""
    monkeypatch.setattr(redis_transport, "MAX_COORDINATORS", 3)
    bus = FeedbackBus()
    recorder = Recorder(bus)
    listener = RedisFeedbackListener(dead_url, bus=bus)

    def of(cid: str, seq: int) -> FeedbackEvent:
        return FeedbackEvent(cid, 5, 10, SOFT, None, float(seq), seq)

    for event in [of("a", 1), of("b", 1), of("c", 1), of("a", 2), of("d", 1), of("a", 2)]:
        listener._accept(encode_event(event))
    await bus.flush()
    assert [(e.coordinator_id, e.seq) for e in recorder.events] == [
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("a", 2),
        ("d", 1),
    ]
    assert sorted(listener._last) == ["a", "c", "d"]


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[]", b'{"coordinator_id": "c"}', b'{"coordinator_id": 1, "level": "ok"}'],
)
async def test_listener_drops_invalid_payloads(dead_url: str, payload: bytes) -> None:
    """A message that is not an event is dropped, the listener keeps going."""
    bus = FeedbackBus()
    recorder = Recorder(bus)
    listener = RedisFeedbackListener(dead_url, bus=bus)
    listener._accept(payload)
    listener._accept(encode_event(ev(1, 1.0)))
    await bus.flush()
    assert [e.seq for e in recorder.events] == [1]


async def test_outbox_keeps_every_event_until_full_then_the_latest_per_coordinator(
    dead_url: str,
) -> None:
    """Redis down: at most max_pending events wait, each coordinator's latest among them."""
    bus = FeedbackBus()
    publisher = RedisFeedbackPublisher(dead_url, bus=bus, max_pending=1000, backoff_base=0.01)
    async with publisher:
        for event in [ev(1, 1.0)] * 10:
            await publisher(event)
        assert publisher.outbox_size == 10  # room: nothing coalesced
        latest = {}
        for seq in range(1, 51):
            for c in range(100):
                latest[f"c{c}"] = FeedbackEvent(f"c{c}", seq, 100, SOFT, seq=seq)
                await publisher(latest[f"c{c}"])
                assert publisher.outbox_size <= 1000
        queued = list(publisher._outbox)
        assert all(e in queued for e in latest.values())
        await wait_until(lambda: publisher.failures >= 2, what="failed attempts")
        assert publisher.outbox_size <= 1000
        assert all(e in publisher._outbox for e in latest.values())
        await publisher.stop(timeout=0)


async def test_outbox_with_more_coordinators_than_room_keeps_the_newest(dead_url: str) -> None:
    """More coordinators than max_pending: the outbox stays bounded, the newest events stay."""
    publisher = RedisFeedbackPublisher(dead_url, bus=FeedbackBus(), max_pending=100)
    async with publisher:
        events = [FeedbackEvent(f"c{i}", 1, 10, HARD, seq=1) for i in range(1000)]
        for event in events:
            await publisher(event)
        assert 0 < publisher.outbox_size <= 100
        assert events[-1] in publisher._outbox
        await publisher.stop(timeout=0)


async def test_one_warning_for_many_failed_attempts_without_the_password(
    dead_url: str, log_messages: list[str]
) -> None:
    """Dozens of refused attempts log one WARNING per client, the password masked."""
    bus = FeedbackBus()
    fast = {"backoff_base": 0.001, "backoff_cap": 0.002}
    publisher = RedisFeedbackPublisher(dead_url, bus=bus, **fast)
    listener = RedisFeedbackListener(dead_url, bus=FeedbackBus(), start_timeout=0, **fast)
    async with publisher, listener:
        for seq in range(1, 200):
            bus.publish_nowait(ev(seq, float(seq)))
        await wait_until(lambda: publisher.failures >= 20, what="publisher attempts")
        await wait_until(lambda: listener._outage.failures >= 20, what="listener attempts")
        await publisher.stop(timeout=0)
    assert len(log_messages) == 2, log_messages
    assert all("cannot reach" in m and "***" in m for m in log_messages)
    assert not any(PASSWORD in m for m in log_messages)


async def test_stopped_transport_cannot_restart_and_stops_idempotently(dead_url: str) -> None:
    """stop() twice is fine; start() after stop() raises; stop() unsubscribes from the bus."""
    bus = FeedbackBus()
    publisher = RedisFeedbackPublisher(dead_url, bus=bus)
    await publisher.start()
    assert publisher in bus.subscribers()
    await publisher.stop(timeout=0)
    await publisher.stop(timeout=0)
    assert publisher not in bus.subscribers()
    with pytest.raises(RuntimeError, match="restarted"):
        await publisher.start()
    listener = RedisFeedbackListener(dead_url, bus=bus, start_timeout=0)
    await listener.start()
    await listener.stop()
    await listener.stop()
    with pytest.raises(RuntimeError, match="restarted"):
        await listener.start()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"url": "redis://"}, "url"),
        ({"url": "redis://host :6379"}, "url"),
        ({"url": "redis://127.0.0.1:99999"}, "url"),
        ({"url": "redis://127.0.0.1:0"}, "url"),
        ({"url": 6379}, "url"),
        ({"channel": ""}, "channel"),
        ({"channel": "has space"}, "channel"),
        ({"channel": "x" * 257}, "channel"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"socket_timeout": math.nan}, "socket_timeout"),
        ({"backoff_base": -1.0}, "backoff_base"),
        ({"backoff_cap": math.inf}, "backoff_cap"),
    ],
)
@pytest.mark.parametrize("cls", [RedisFeedbackPublisher, RedisFeedbackListener])
def test_bad_arguments_name_themselves(
    cls: type[RedisFeedbackPublisher | RedisFeedbackListener], kwargs: dict[str, object], name: str
) -> None:
    """A bad argument raises ConfigError at construction, naming the argument."""
    arguments: dict[str, object] = {"url": "redis://127.0.0.1:6379/0", **kwargs}
    with pytest.raises(ConfigError, match=rf"^{name} "):
        cls(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_pending", [0, -1, 1.5, True])
def test_publisher_max_pending_must_be_a_positive_integer(max_pending: object) -> None:
    """max_pending outside 1.. raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"^max_pending "):
        RedisFeedbackPublisher("redis://127.0.0.1:6379/0", max_pending=max_pending)  # type: ignore[arg-type]


def test_url_errors_never_show_the_password() -> None:
    """A rejected URL is shown with its password masked."""
    with pytest.raises(ConfigError) as caught:
        RedisFeedbackPublisher(f"redis://u:{PASSWORD}@host:99999/0")
    assert PASSWORD not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MDS_FB_REDIS_URL", f"http://u:{PASSWORD}@127.0.0.1:6379"),
        ("MDS_FB_REDIS_URL", f"redis://u:{PASSWORD}@127.0.0.1:70000"),
        ("MDS_FB_REDIS_URL", "redis://127.0.0.1:6379/0\n"),
        ("MDS_FB_REDIS_CHANNEL", "two words"),
        ("MDS_FB_REDIS_CHANNEL", ""),
    ],
)
def test_bad_redis_settings_name_the_variable_and_hide_the_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad MDS_FB_REDIS_* value raises ConfigError naming the variable, never the password."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable) as caught:
        FeedbackSettings()
    assert PASSWORD not in str(caught.value)


def test_redis_settings_build_both_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_FB_REDIS_URL and MDS_FB_REDIS_CHANNEL reach from_settings(); the password stays
    out of repr(); without a URL from_settings() returns None."""
    assert RedisFeedbackPublisher.from_settings() is None
    assert RedisFeedbackListener.from_settings() is None
    monkeypatch.setenv("MDS_FB_REDIS_URL", f"redis://u:{PASSWORD}@10.0.0.5:6380/2")
    monkeypatch.setenv("MDS_FB_REDIS_CHANNEL", "prod:feedback")
    settings = FeedbackSettings()
    assert PASSWORD not in repr(settings)
    publisher = RedisFeedbackPublisher.from_settings(settings)
    listener = RedisFeedbackListener.from_settings()
    assert publisher is not None and listener is not None
    assert publisher.channel == listener.channel == "prod:feedback"
    assert publisher.url == listener.url == "redis://***@10.0.0.5:6380/2"


def test_without_the_redis_package_construction_says_to_install_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without redis installed, building a publisher or listener raises ConfigError naming
    the [redis] extra (importing market_data_store.feedback still works)."""
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    for cls in (RedisFeedbackPublisher, RedisFeedbackListener):
        with pytest.raises(ConfigError, match=r"market-data-store-asyncio\[redis\]"):
            cls("redis://127.0.0.1:6379/0")
