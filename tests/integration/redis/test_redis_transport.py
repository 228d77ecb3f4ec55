"""Publisher and listeners in one process, each on its own bus, through a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Awaitable, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis_helpers import Recorder

from market_data_store.coordinator import WriteCoordinator
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    RedisFeedbackListener,
    RedisFeedbackPublisher,
    autowire,
    feedback_bus,
)
from market_data_store.feedback.events import encode_event
from market_data_store.testing.redis import RedisServer
from market_data_store.testing.waits import wait_until

FAST = {"backoff_base": 0.01, "backoff_cap": 0.2}


class GatedSink:
    """Holds every batch until ``gate`` is set, so the queue fills."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def write(self, batch: Sequence[int]) -> None:
        await self.gate.wait()


class NullSink:
    """Accepts every batch at once."""

    async def write(self, batch: Sequence[int]) -> None:
        return None


def event(coordinator_id: str, seq: int, level: BackpressureLevel) -> FeedbackEvent:
    return FeedbackEvent(coordinator_id, seq % 10, 10, level, seq=seq)


def gauge(role: str) -> float:
    return REGISTRY.get_sample_value("mds_feedback_redis_connected", {"role": role}) or 0.0


async def fill_to_hard(coordinator: WriteCoordinator[int]) -> None:
    item = 0
    while coordinator.health().level is not BackpressureLevel.HARD:
        await coordinator.submit(item)
        item += 1


async def test_listeners_have_the_latest_level_within_3s_of_a_redis_restart(
    redis_server: RedisServer, channel: str
) -> None:
    """Redis killed mid-run and restarted empty: each listener has the latest levels within 3 s."""
    url, store_bus = redis_server.url, FeedbackBus()
    buses = [FeedbackBus(), FeedbackBus()]
    recorders = [Recorder(bus) for bus in buses]
    last: dict[str, FeedbackEvent] = {}
    levels = itertools.cycle(list(BackpressureLevel))

    def emit(seq: int) -> None:
        for coordinator_id in ("c1", "c2"):
            last[coordinator_id] = event(coordinator_id, seq, next(levels))
            store_bus.publish_nowait(last[coordinator_id])

    def all_latest() -> bool:
        return all(rec.last(c) == e for rec in recorders for c, e in last.items())

    publisher = RedisFeedbackPublisher(url, channel=channel, bus=store_bus, **FAST)
    listeners = [RedisFeedbackListener(url, channel=channel, bus=b, **FAST) for b in buses]
    async with publisher, listeners[0], listeners[1]:
        seq = 1
        emit(seq)
        await wait_until(all_latest, timeout=3.0, what="levels before the outage")
        redis_server.kill()
        while publisher.failures < 3 or not all(lis.outages for lis in listeners):
            seq += 1
            emit(seq)  # the store keeps running: levels change during the outage
            await asyncio.sleep(0.005)
        redis_server.start()
        seq += 1
        emit(seq)
        await wait_until(all_latest, timeout=3.0, what="latest levels after the restart")


async def test_listener_started_after_hard_gets_hard_within_1s(
    redis_server: RedisServer, channel: str
) -> None:
    """A listener started after a coordinator reached HARD has HARD within 1 s of starting."""
    store_bus, late_bus = FeedbackBus(), FeedbackBus()
    sink = GatedSink()
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=sink, capacity=20, workers=1, batch_size=1, coord_id="hard-one", bus=store_bus
    )
    client = Redis.from_url(redis_server.url)
    publisher = RedisFeedbackPublisher(redis_server.url, channel=channel, bus=store_bus)
    async with publisher, coordinator:
        await fill_to_hard(coordinator)
        await wait_until(
            lambda: client.hexists(f"{channel}:latest", "hard-one"), what="HARD in the hash"
        )
        recorder = Recorder(late_bus)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with RedisFeedbackListener(redis_server.url, channel=channel, bus=late_bus):
            got = recorder.last
            await wait_until(
                lambda: (e := got("hard-one")) is not None and e.level is BackpressureLevel.HARD,
                timeout=max(0.0, 1.0 - (loop.time() - started)),
                what="HARD at the late listener",
            )
        sink.gate.set()
    await client.aclose()


async def test_restarted_coordinator_replaces_its_stopped_entry(
    redis_server: RedisServer, channel: str
) -> None:
    """A coordinator restarted with seq from 1 replaces its stopped run in the hash and listener."""
    store_bus, pipeline_bus = FeedbackBus(), FeedbackBus()
    recorder = Recorder(pipeline_bus)
    url = redis_server.url
    async with (
        RedisFeedbackPublisher(url, channel=channel, bus=store_bus),
        RedisFeedbackListener(url, channel=channel, bus=pipeline_bus),
    ):
        for life in (1, 2):
            sink = GatedSink()
            coordinator: WriteCoordinator[int] = WriteCoordinator(
                sink=sink, capacity=20, workers=1, batch_size=1, coord_id="again", bus=store_bus
            )
            async with coordinator:
                await fill_to_hard(coordinator)
                await wait_until(
                    lambda: recorder.events and recorder.events[-1].level is BackpressureLevel.HARD,
                    what=f"HARD of life {life}",
                )
                sink.gate.set()
            await wait_until(
                lambda: recorder.events[-1].reason == "stopped", what=f"stop of life {life}"
            )
    seqs = [e.seq for e in recorder.events]
    restart = seqs.index(1, 1)  # the second life starts again at 1
    assert seqs[:restart] == list(range(1, restart + 1))
    assert seqs[restart:] == list(range(1, len(seqs) - restart + 1))


async def test_idle_publisher_refills_the_hash_of_a_restarted_redis(
    redis_server: RedisServer, channel: str
) -> None:
    """An idle publisher refills a restarted Redis's hash, so a later listener learns the level."""
    store_bus, late_bus = FeedbackBus(), FeedbackBus()
    hard = event("steady", 7, BackpressureLevel.HARD)
    recorder = Recorder(late_bus)
    async with RedisFeedbackPublisher(redis_server.url, channel=channel, bus=store_bus, **FAST):
        await store_bus.publish(hard)
        client = Redis.from_url(redis_server.url)
        await wait_until(lambda: client.hexists(f"{channel}:latest", "steady"), what="written")
        await client.aclose()
        redis_server.restart()
        async with RedisFeedbackListener(redis_server.url, channel=channel, bus=late_bus):
            await wait_until(lambda: recorder.last("steady") == hard, timeout=3.0, what="HARD")


async def test_one_warning_per_outage_and_the_connected_gauge(
    redis_server: RedisServer, channel: str, log_messages: list[str]
) -> None:
    """Two outages give two WARNINGs per client, and the connected gauge drops and comes back."""
    store_bus, bus = FeedbackBus(), FeedbackBus()
    publisher = RedisFeedbackPublisher(redis_server.url, channel=channel, bus=store_bus, **FAST)
    listener = RedisFeedbackListener(redis_server.url, channel=channel, bus=bus, **FAST)
    before = {role: gauge(role) for role in ("publisher", "listener")}
    async with publisher, listener:
        await store_bus.publish(event("w", 1, BackpressureLevel.SOFT))
        await wait_until(lambda: publisher.connected and listener.connected, what="connected")
        assert gauge("publisher") == before["publisher"] + 1
        for outage in (1, 2):
            redis_server.kill()
            for seq in range(2, 40):
                store_bus.publish_nowait(event("w", seq + 100 * outage, BackpressureLevel.HARD))
            await wait_until(
                lambda n=outage: publisher.failures >= 4 and listener.outages == n, what="failures"
            )
            assert gauge("publisher") == before["publisher"]
            assert gauge("listener") == before["listener"]
            redis_server.start()
            await wait_until(lambda: publisher.connected and listener.connected, timeout=3.0)
    warnings = [m for m in log_messages if "cannot reach" in m]
    assert sum("publisher" in m for m in warnings) == 2, warnings
    assert sum("listener" in m for m in warnings) == 2, warnings
    assert all(m.startswith("WARNING") for m in warnings)


def published() -> float:
    return REGISTRY.get_sample_value("mds_feedback_redis_published_total") or 0.0


@pytest.mark.parametrize("outage", ["frozen", "killed"])
async def test_submit_never_waits_on_redis_down_and_the_outbox_stays_bounded(
    redis_server: RedisServer, channel: str, outage: str
) -> None:
    """With Redis frozen or killed, 20,000 submits complete and the outbox stays bounded."""
    store_bus = FeedbackBus()
    publisher = RedisFeedbackPublisher(
        redis_server.url, channel=channel, bus=store_bus, max_pending=256, socket_timeout=3600
    )
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=NullSink(), capacity=10, workers=1, batch_size=5, coord_id="busy", bus=store_bus
    )
    async with publisher:
        await store_bus.publish(event("probe", 1, BackpressureLevel.OK))
        await wait_until(lambda: publisher.connected, what="connected")
        if outage == "frozen":
            redis_server.pause()  # commands hang (no socket timeout to save the sender)
        else:
            redis_server.kill()
        written_before = published()
        peak = 0
        async with coordinator:
            for burst in range(2000):
                await coordinator.submit_many(range(burst * 10, burst * 10 + 10))
                for n in range(3):  # and 300 more coordinators whose levels change
                    other = event(f"other-{burst % 100}-{n}", burst, BackpressureLevel.SOFT)
                    store_bus.publish_nowait(other)
                peak = max(peak, publisher.outbox_size)
        await store_bus.flush(timeout=5.0)
        assert coordinator.stats().submitted == 20_000
        assert published() == written_before  # Redis took nothing meanwhile
        assert 0 < max(peak, publisher.outbox_size) <= 256
        assert store_bus.backlog(publisher) <= store_bus.max_backlog
        await publisher.stop(timeout=0.2)
    redis_server.resume()


@pytest.fixture
def redis_env(
    redis_server: RedisServer, channel: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MDS_FB_REDIS_URL and MDS_FB_REDIS_CHANNEL for this test's server, no other MDS_*."""
    for key in list(os.environ):
        if key.upper().startswith("MDS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MDS_FB_REDIS_URL", redis_server.url)
    monkeypatch.setenv("MDS_FB_REDIS_CHANNEL", channel)


@pytest.mark.usefixtures("redis_env")
async def test_a_running_publisher_for_the_same_url_and_channel_means_no_second(
    redis_server: RedisServer, channel: str
) -> None:
    """A publisher running on the process-wide bus for the URL and channel: no second one."""
    async with RedisFeedbackPublisher(redis_server.url, channel=channel):
        async with WriteCoordinator(sink=NullSink(), coord_id="dedup"):
            assert autowire.active_transports() == ()


@pytest.mark.usefixtures("redis_env")
async def test_env_alone_starts_one_redis_publisher_for_all_coordinators(
    redis_server: RedisServer, channel: str
) -> None:
    """MDS_FB_REDIS_URL alone: one publisher for all coordinators, stopped after the last stop."""
    first: WriteCoordinator[int] = WriteCoordinator(sink=NullSink(), coord_id="auto-1")
    second: WriteCoordinator[int] = WriteCoordinator(sink=NullSink(), coord_id="auto-2")
    async with first:
        async with second:
            publishers = [
                t for t in autowire.active_transports() if isinstance(t, RedisFeedbackPublisher)
            ]
            assert len(publishers) == 1 and publishers[0].channel == channel
            assert publishers[0] in feedback_bus().subscribers()
    assert autowire.active_transports() == ()
    client = Redis.from_url(redis_server.url)
    latest = await client.hgetall(f"{channel}:latest")
    await client.aclose()
    assert {b"auto-1", b"auto-2"} <= set(latest)
    assert all(b'"stopped"' in latest[k] for k in (b"auto-1", b"auto-2"))


async def test_hash_keeps_the_newer_event_by_ts_then_seq(
    redis_server: RedisServer, channel: str
) -> None:
    """The script writes and publishes only newer events: a straggler is skipped, a restart kept."""
    bus = FeedbackBus()
    client = Redis.from_url(redis_server.url)

    async def in_hash() -> tuple[int, float]:
        stored = await client.hget(f"{channel}:latest", "rule")
        assert stored is not None
        event = json.loads(stored)
        return event["seq"], event["ts"]

    def skipped() -> float:
        labels = {"role": "publisher", "reason": "not_newer"}
        return REGISTRY.get_sample_value("mds_feedback_redis_dropped_total", labels) or 0.0

    async with RedisFeedbackPublisher(redis_server.url, channel=channel, bus=bus) as publisher:
        steps = [((5, 5.0), (5, 5.0)), ((4, 4.0), (5, 5.0)), ((4, 6.0), (4, 6.0))]
        steps += [((4, 6.0), (4, 6.0)), ((1, 9.0), (1, 9.0))]
        before = skipped()
        for (seq, ts), expected in steps:
            await publisher(FeedbackEvent("rule", 0, 10, BackpressureLevel.OK, None, ts, seq))
            await wait_until(lambda: publisher.outbox_size == 0 and publisher.connected)
            await wait_until(lambda want=expected: _equals(in_hash(), want), what=f"{expected}")
        await wait_until(lambda: skipped() == before + 2, what="two events skipped")
    await client.aclose()


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_listener_reloads_the_hash_after_a_reconnect(
    redis_server: RedisServer, channel: str
) -> None:
    """An event that reached only the hash while the listener was away is learnt on reconnect."""
    bus = FeedbackBus()
    recorder = Recorder(bus)
    client = Redis.from_url(redis_server.url)
    listener = RedisFeedbackListener(redis_server.url, channel=channel, bus=bus, **FAST)
    async with listener:
        missed = event("away", 3, BackpressureLevel.HARD)
        await client.hset(f"{channel}:latest", "away", encode_event(missed))  # no PUBLISH
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(lambda: listener.outages == 1, what="the listener noticed")
        await wait_until(lambda: recorder.last("away") == missed, timeout=3.0, what="reload")
    await client.aclose()
