"""FeedbackBus: isolated, ordered, bounded fan-out of FeedbackEvents, across event loops."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client import REGISTRY

from market_data_store.errors import ConfigError
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    feedback_bus,
)

DEADLINE = 2.0  # seconds; every wait below is bounded by it


def new_id() -> str:
    return f"coord-{uuid.uuid4().hex[:8]}"


def ev(
    coordinator_id: str, seq: int, level: BackpressureLevel = BackpressureLevel.HARD
) -> FeedbackEvent:
    return FeedbackEvent(coordinator_id, seq, 100, level, seq=seq)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class Recorder:
    """A subscriber that records what it receives and can wait for a count."""

    def __init__(self) -> None:
        self.events: list[FeedbackEvent] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: FeedbackEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def on_event(self, event: FeedbackEvent) -> None:
        await self(event)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]


# --- subscribe / unsubscribe -----------------------------------------------------------------


async def test_unsubscribed_callback_no_longer_receives_events() -> None:
    """subscribe() starts delivery and unsubscribe() stops it; subscriber_count follows."""
    bus = FeedbackBus()
    rec = Recorder()
    bus.subscribe(rec)
    assert bus.subscriber_count == 1
    await bus.publish(ev("a", 1))
    bus.unsubscribe(rec)
    assert bus.subscriber_count == 0
    await bus.publish(ev("a", 2))
    assert rec.seqs == [1]


async def test_unsubscribe_of_unknown_callback_is_a_noop() -> None:
    """unsubscribe() of a callable that never subscribed changes nothing and does not raise."""
    bus = FeedbackBus()
    rec = Recorder()
    bus.subscribe(rec)
    bus.unsubscribe(Recorder())
    bus.unsubscribe(rec)
    bus.unsubscribe(rec)
    assert bus.subscriber_count == 0


async def test_subscribe_twice_delivers_once() -> None:
    """Subscribing the same callable twice registers it once and delivers each event once."""
    bus = FeedbackBus()
    rec = Recorder()
    bus.subscribe(rec)
    bus.subscribe(rec)
    assert bus.subscriber_count == 1
    await bus.publish(ev("a", 1))
    assert rec.seqs == [1]


async def test_subscribe_same_bound_method_twice_delivers_once() -> None:
    """Two bound-method objects of the same method on the same instance are one subscriber."""
    bus = FeedbackBus()
    rec = Recorder()
    bus.subscribe(rec.on_event)
    bus.subscribe(rec.on_event)
    assert bus.subscriber_count == 1
    await bus.publish(ev("a", 1))
    assert rec.seqs == [1]
    bus.unsubscribe(rec.on_event)
    assert bus.subscriber_count == 0


async def test_unhashable_subscriber_can_subscribe_and_unsubscribe() -> None:
    """A callable object without __hash__ (an eq dataclass) is registered by identity."""

    @dataclasses.dataclass
    class Listener:
        seqs: list[int] = dataclasses.field(default_factory=list)

        async def __call__(self, event: FeedbackEvent) -> None:
            self.seqs.append(event.seq)

    bus = FeedbackBus()
    first, second = Listener(), Listener()  # equal to each other, yet two subscribers
    bus.subscribe(first)
    bus.subscribe(first)
    bus.subscribe(second)
    assert bus.subscriber_count == 2
    await bus.publish(ev("a", 1))
    assert first.seqs == [1] and second.seqs == [1]
    bus.unsubscribe(first)
    assert bus.subscriber_count == 1


async def test_subscribe_rejects_a_non_callable() -> None:
    """subscribe() of something that cannot be called raises TypeError at once."""
    with pytest.raises(TypeError, match="async callable"):
        FeedbackBus().subscribe(42)  # type: ignore[arg-type]


# --- publish ---------------------------------------------------------------------------------


async def test_publish_returns_after_every_subscriber_handled_the_event() -> None:
    """publish() fans one event out to all subscribers and returns once each has it."""
    bus = FeedbackBus()
    recorders = [Recorder() for _ in range(3)]
    for rec in recorders:
        bus.subscribe(rec)
    event = ev("a", 1)
    async with asyncio.timeout(DEADLINE):
        await bus.publish(event)
    assert [rec.events for rec in recorders] == [[event]] * 3


async def test_publish_with_no_subscribers_returns_and_counts_the_event() -> None:
    """publish() with nobody subscribed returns at once and still counts the event."""
    cid = new_id()
    async with asyncio.timeout(DEADLINE):
        await FeedbackBus().publish(ev(cid, 1))
    assert sample("mds_feedback_events_total", {"coordinator_id": cid, "level": "hard"}) == 1


async def test_publish_after_publish_nowait_keeps_emission_order() -> None:
    """Events handed over by publish_nowait() earlier reach a subscriber before publish()'s."""
    bus = FeedbackBus()
    rec = Recorder()
    bus.subscribe(rec)
    bus.publish_nowait(ev("a", 1))
    bus.publish_nowait(ev("a", 2))
    await bus.publish(ev("a", 3))
    assert rec.seqs == [1, 2, 3]


async def test_raising_subscriber_is_isolated_and_counted() -> None:
    """A subscriber's exception reaches neither the publisher nor other subscribers; counted."""

    async def boom(event: FeedbackEvent) -> None:
        raise RuntimeError("subscriber bug")

    bus = FeedbackBus()
    before, after = Recorder(), Recorder()
    bus.subscribe(before)
    bus.subscribe(boom)
    bus.subscribe(after)
    labels = {"subscriber": boom.__qualname__}
    errors = sample("mds_feedback_subscriber_errors_total", labels)
    async with asyncio.timeout(DEADLINE):
        await bus.publish(ev("a", 1))
        bus.publish_nowait(ev("a", 2))
        await bus.flush()
    assert before.seqs == [1, 2] and after.seqs == [1, 2]
    assert sample("mds_feedback_subscriber_errors_total", labels) == errors + 2


async def test_subscriber_raising_cancelled_error_keeps_receiving() -> None:
    """A CancelledError raised by the subscriber itself is an error, not the end of delivery."""
    seqs: list[int] = []

    async def flaky(event: FeedbackEvent) -> None:
        seqs.append(event.seq)
        if event.seq == 1:
            raise asyncio.CancelledError

    bus = FeedbackBus()
    bus.subscribe(flaky)
    labels = {"subscriber": flaky.__qualname__}
    errors = sample("mds_feedback_subscriber_errors_total", labels)
    bus.publish_nowait(ev("a", 1))
    bus.publish_nowait(ev("a", 2))
    async with asyncio.timeout(DEADLINE):
        await bus.flush()
    assert seqs == [1, 2]
    assert sample("mds_feedback_subscriber_errors_total", labels) == errors + 1


async def test_subscriber_publishing_from_its_callback_does_not_deadlock() -> None:
    """A subscriber awaiting publish() inside its callback is not made to wait for itself."""
    bus = FeedbackBus()
    seqs: list[int] = []

    async def relay(event: FeedbackEvent) -> None:
        seqs.append(event.seq)
        if event.seq == 1:
            await bus.publish(ev("a", 2))
            await bus.flush()

    bus.subscribe(relay)
    async with asyncio.timeout(DEADLINE):
        await bus.publish(ev("a", 1))
        await bus.flush()
    assert seqs == [1, 2]


def test_feedback_bus_returns_the_process_wide_singleton() -> None:
    """feedback_bus() returns the same FeedbackBus on every call."""
    bus = feedback_bus()
    assert isinstance(bus, FeedbackBus)
    assert feedback_bus() is bus


# --- isolation, ordering, bounds -------------------------------------------------------------


async def test_hung_subscriber_delays_neither_producer_nor_other_subscribers() -> None:
    """A subscriber stuck on a never-set future does not hold up publish_nowait or the others."""
    bus = FeedbackBus()
    entered = asyncio.Event()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hung(event: FeedbackEvent) -> None:
        entered.set()
        await never

    fast = Recorder()
    bus.subscribe(hung)
    bus.subscribe(fast)
    bus.publish_nowait(ev("a", 0))
    async with asyncio.timeout(DEADLINE):
        await entered.wait()

    # publish_nowait is synchronous: these 100 hand-overs return without yielding to the
    # loop, so the hung subscriber cannot hold them up (its cost is bench_throughput's).
    for seq in range(1, 101):
        bus.publish_nowait(ev("a", seq))
    await fast.wait_for(101)
    assert fast.seqs == list(range(101))
    assert not never.done() and bus.backlog(hung) == 100
    bus.unsubscribe(hung)


async def test_unsubscribe_cancels_a_hung_subscribers_delivery() -> None:
    """unsubscribe() cancels the delivery in progress to a hung subscriber (no leaked task)."""
    bus = FeedbackBus()
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def hung(event: FeedbackEvent) -> None:
        entered.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bus.subscribe(hung)
    bus.publish_nowait(ev("a", 1))
    async with asyncio.timeout(DEADLINE):
        await entered.wait()
        bus.unsubscribe(hung)
        await cancelled.wait()


async def test_unsubscribing_a_hung_subscriber_releases_publish() -> None:
    """publish() waiting on a subscriber returns once that subscriber is unsubscribed."""
    bus = FeedbackBus()
    entered = asyncio.Event()

    async def hung(event: FeedbackEvent) -> None:
        entered.set()
        await asyncio.get_running_loop().create_future()

    bus.subscribe(hung)
    publishing = asyncio.create_task(bus.publish(ev("a", 1)))
    async with asyncio.timeout(DEADLINE):
        await entered.wait()
    assert not publishing.done()
    bus.unsubscribe(hung)
    async with asyncio.timeout(DEADLINE):
        await publishing


async def test_each_subscriber_gets_each_coordinators_events_in_emission_order() -> None:
    """Interleaved events of three coordinators reach fast and slow subscribers in order."""
    bus = FeedbackBus(max_backlog=10_000)
    fast = Recorder()
    slow_events: list[FeedbackEvent] = []

    async def slow(event: FeedbackEvent) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        slow_events.append(event)

    bus.subscribe(fast)
    bus.subscribe(slow)
    coordinators = [new_id() for _ in range(3)]
    for seq in range(1, 301):
        bus.publish_nowait(ev(coordinators[seq % 3], seq))
        if seq % 7 == 0:
            await asyncio.sleep(0)
    async with asyncio.timeout(DEADLINE):
        await bus.flush()
    for received in (fast.events, slow_events):
        assert len(received) == 300
        for cid in coordinators:
            seqs = [e.seq for e in received if e.coordinator_id == cid]
            assert seqs == [s for s in range(1, 301) if coordinators[s % 3] == cid]


async def test_slow_subscriber_backlog_is_bounded_and_keeps_latest_per_coordinator() -> None:
    """A backlog never exceeds max_backlog; coalescing keeps each coordinator's latest event."""
    bound = 8
    bus = FeedbackBus(max_backlog=bound)
    received: list[FeedbackEvent] = []
    backlog_seen: list[int] = []

    async def slow(event: FeedbackEvent) -> None:
        backlog_seen.append(bus.backlog(slow))
        for _ in range(5):
            await asyncio.sleep(0)
        received.append(event)

    bus.subscribe(slow)
    coordinators = [new_id() for _ in range(3)]
    coalesced = sample("mds_feedback_coalesced_total")
    latest: dict[str, int] = {}
    for seq in range(1, 1001):
        cid = coordinators[seq % 3]
        bus.publish_nowait(ev(cid, seq))
        latest[cid] = seq
        if seq % 4 == 0:
            await asyncio.sleep(0)
            backlog_seen.append(bus.backlog(slow))
    async with asyncio.timeout(DEADLINE):
        await bus.flush()

    assert max(backlog_seen) <= bound
    assert len(received) < 1000  # intermediates were coalesced away
    assert sample("mds_feedback_coalesced_total") - coalesced == 1000 - len(received)
    last_received = {e.coordinator_id: e.seq for e in received}
    assert last_received == latest
    per_coordinator: dict[str, list[int]] = defaultdict(list)
    for e in received:
        per_coordinator[e.coordinator_id].append(e.seq)
    assert all(seqs == sorted(seqs) for seqs in per_coordinator.values())


async def test_producer_burst_without_yielding_stays_bounded() -> None:
    """publish_nowait() in a loop that never yields keeps at most max_backlog events waiting."""
    bound = 16
    bus = FeedbackBus(max_backlog=bound)
    rec = Recorder()
    bus.subscribe(rec)
    coordinators = [new_id() for _ in range(3)]
    for seq in range(1, 10_001):
        bus.publish_nowait(ev(coordinators[seq % 3], seq))
        assert len(bus._inbox) <= bound  # what waits for the next dispatch is bounded too
    async with asyncio.timeout(DEADLINE):
        await bus.flush()
    assert len(rec.events) <= bound
    assert {e.coordinator_id: e.seq for e in rec.events} == {
        cid: max(s for s in range(1, 10_001) if coordinators[s % 3] == cid) for cid in coordinators
    }


async def test_publish_whose_event_is_coalesced_waits_for_the_superseding_event() -> None:
    """publish() of an event coalesced away returns only once its successor was handled."""
    bus = FeedbackBus(max_backlog=2)
    gate = asyncio.Event()
    entered = asyncio.Event()
    seqs: list[int] = []

    async def gated(event: FeedbackEvent) -> None:
        entered.set()
        await gate.wait()
        seqs.append(event.seq)

    bus.subscribe(gated)
    bus.publish_nowait(ev("other", 0))
    async with asyncio.timeout(DEADLINE):
        await entered.wait()
    publishing = asyncio.create_task(bus.publish(ev("a", 1)))
    await asyncio.sleep(0)
    bus.publish_nowait(ev("a", 2))
    bus.publish_nowait(ev("a", 3))
    await asyncio.sleep(0)  # dispatch: the backlog [1, 2, 3] of "a" is coalesced to [3]
    assert bus.backlog(gated) == 1
    assert not publishing.done()
    gate.set()
    async with asyncio.timeout(DEADLINE):
        await publishing
    assert seqs == [0, 3]


async def test_flush_waits_until_handed_over_events_are_delivered() -> None:
    """flush() returns only after every event handed over before it was delivered."""
    bus = FeedbackBus()
    gate = asyncio.Event()
    seqs: list[int] = []

    async def gated(event: FeedbackEvent) -> None:
        await gate.wait()
        seqs.append(event.seq)

    bus.subscribe(gated)
    for seq in (1, 2, 3):
        bus.publish_nowait(ev("a", seq))
    flushing = asyncio.create_task(bus.flush())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not flushing.done() and seqs == []
    gate.set()
    async with asyncio.timeout(DEADLINE):
        await flushing
    assert seqs == [1, 2, 3]


async def test_flush_with_nothing_pending_returns() -> None:
    """flush() with an idle subscriber (or none) returns at once."""
    bus = FeedbackBus()
    async with asyncio.timeout(DEADLINE):
        await bus.flush()
        bus.subscribe(Recorder())
        await bus.flush()


# --- across event loops ----------------------------------------------------------------------


def test_work_left_by_a_closed_loop_is_delivered_on_the_next_loop() -> None:
    """Events pending when loop 1 closed, and those published on loop 2, arrive on loop 2."""
    bus = FeedbackBus()
    seqs: list[int] = []
    loops: list[asyncio.AbstractEventLoop] = []
    entered = asyncio.Event()

    async def sub(event: FeedbackEvent) -> None:
        seqs.append(event.seq)
        loops.append(asyncio.get_running_loop())
        if len(seqs) == 1:
            entered.set()
            await asyncio.Event().wait()  # in flight when loop 1 shuts down

    async def on_loop_1() -> None:
        bus.subscribe(sub)
        bus.publish_nowait(ev("a", 1))
        bus.publish_nowait(ev("a", 2))
        await entered.wait()

    async def on_loop_2() -> asyncio.AbstractEventLoop:
        bus.publish_nowait(ev("a", 3))
        async with asyncio.timeout(DEADLINE):
            await bus.flush()
        return asyncio.get_running_loop()

    asyncio.run(on_loop_1())
    assert seqs == [1]
    loop_2 = asyncio.run(on_loop_2())
    # The event cut short by the shutdown is delivered again: at least once.
    assert seqs == [1, 1, 2, 3]
    assert loops[1:] == [loop_2] * 3


def test_flush_on_a_new_loop_delivers_backlog_left_by_a_closed_loop() -> None:
    """flush() on loop 2 with nothing new published still delivers loop 1's leftover backlog."""
    bus = FeedbackBus()
    seqs: list[int] = []
    entered = asyncio.Event()

    async def sub(event: FeedbackEvent) -> None:
        if not seqs:
            seqs.append(0)
            entered.set()
            await asyncio.Event().wait()
        seqs.append(event.seq)

    async def on_loop_1() -> None:
        bus.subscribe(sub)
        for seq in (1, 2):
            bus.publish_nowait(ev("a", seq))
        await entered.wait()

    async def on_loop_2() -> None:
        async with asyncio.timeout(DEADLINE):
            await bus.flush()

    asyncio.run(on_loop_1())
    asyncio.run(on_loop_2())
    assert seqs == [0, 1, 2]


def test_delivery_stranded_on_a_loop_closed_without_cleanup_is_taken_over() -> None:
    """A delivery task left pending on a loop closed without cancelling it is replaced."""
    bus = FeedbackBus()
    seqs: list[int] = []
    entered = asyncio.Event()

    async def sub(event: FeedbackEvent) -> None:
        seqs.append(event.seq)
        if len(seqs) == 1:
            entered.set()
            await asyncio.Event().wait()

    async def on_loop_1() -> None:
        bus.subscribe(sub)
        bus.publish_nowait(ev("a", 1))
        await entered.wait()

    async def on_loop_2() -> None:
        async with asyncio.timeout(DEADLINE):
            await bus.publish(ev("a", 2))

    loop_1 = asyncio.new_event_loop()
    try:
        loop_1.run_until_complete(on_loop_1())
    finally:
        loop_1.close()  # the delivery task is still pending on it
    asyncio.run(on_loop_2())
    assert seqs == [1, 1, 2]


def test_publish_nowait_without_a_loop_keeps_events_until_the_next_publish() -> None:
    """Events handed over with no running loop are delivered, in order, by the next publish."""
    bus = FeedbackBus()
    seqs: list[int] = []

    async def sub(event: FeedbackEvent) -> None:
        seqs.append(event.seq)

    bus.subscribe(sub)
    bus.publish_nowait(ev("a", 1))
    bus.publish_nowait(ev("a", 2))
    assert seqs == []
    asyncio.run(bus.publish(ev("a", 3)))
    assert seqs == [1, 2, 3]


def test_publish_nowait_without_a_loop_is_bounded() -> None:
    """Without a loop, kept events are coalesced past max_backlog, latest per coordinator kept."""
    bus = FeedbackBus(max_backlog=4)
    seqs: list[int] = []

    async def sub(event: FeedbackEvent) -> None:
        seqs.append(event.seq)

    bus.subscribe(sub)
    cid = new_id()
    for seq in range(1, 1001):
        bus.publish_nowait(ev(cid, seq))
    asyncio.run(bus.flush())
    assert len(seqs) <= 4
    assert seqs[-1] == 1000
    assert sample("mds_feedback_events_total", {"coordinator_id": cid, "level": "hard"}) == 1000


# --- FeedbackEvent and BackpressureLevel ------------------------------------------------------


def test_feedback_event_is_frozen() -> None:
    """Assigning to a FeedbackEvent field raises: events are immutable."""
    event = ev("a", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.queue_size = 3  # type: ignore[misc]


def test_feedback_event_fields_are_in_contract_order() -> None:
    """FeedbackEvent's fields and positional order are those of DESIGN.md section 3."""
    names = [f.name for f in dataclasses.fields(FeedbackEvent)]
    assert names == [
        "coordinator_id",
        "queue_size",
        "capacity",
        "level",
        "reason",
        "ts",
        "seq",
        "drain_rate",
        "arrival_rate",
    ]
    before = time.time()
    event = FeedbackEvent("c", 5, 10, BackpressureLevel.SOFT)
    assert (event.reason, event.seq, event.drain_rate, event.arrival_rate) == (None, 0, None, None)
    assert before <= event.ts <= time.time()


def test_feedback_event_utilization() -> None:
    """utilization is queue_size / capacity, and 0.0 when capacity is 0."""
    assert FeedbackEvent("c", 5, 10, BackpressureLevel.SOFT).utilization == 0.5
    assert FeedbackEvent("c", 5, 0, BackpressureLevel.HARD).utilization == 0.0


def test_backpressure_level_compares_equal_to_its_string() -> None:
    """BackpressureLevel members equal their str values, so event.level == "hard" holds."""
    assert [level.value for level in BackpressureLevel] == ["ok", "soft", "hard"]
    assert ev("a", 1).level == "hard"
    assert BackpressureLevel("soft") is BackpressureLevel.SOFT
    assert isinstance(BackpressureLevel.OK, str)


def test_feedback_event_to_dict_adds_utilization() -> None:
    """to_dict() holds every field, the level as its string, and utilization."""
    data = FeedbackEvent("c", 5, 10, BackpressureLevel.SOFT, "r", ts=1.0, seq=7).to_dict()
    assert data == {
        "coordinator_id": "c",
        "queue_size": 5,
        "capacity": 10,
        "level": "soft",
        "reason": "r",
        "ts": 1.0,
        "seq": 7,
        "drain_rate": None,
        "arrival_rate": None,
        "utilization": 0.5,
    }


# --- metrics ---------------------------------------------------------------------------------


async def test_events_counter_counts_each_event_by_coordinator_and_level() -> None:
    """mds_feedback_events_total grows by one per event handed over, by coordinator and level."""
    bus = FeedbackBus()
    bus.subscribe(Recorder())
    cid = new_id()
    bus.publish_nowait(ev(cid, 1, BackpressureLevel.SOFT))
    bus.publish_nowait(ev(cid, 2, BackpressureLevel.HARD))
    await bus.publish(ev(cid, 3, BackpressureLevel.HARD))
    await bus.flush()
    labels = {"coordinator_id": cid}
    assert sample("mds_feedback_events_total", {**labels, "level": "soft"}) == 1
    assert sample("mds_feedback_events_total", {**labels, "level": "hard"}) == 2
    assert sample("mds_feedback_events_total", {**labels, "level": "ok"}) == 0


async def test_subscribers_gauge_follows_subscribe_and_unsubscribe() -> None:
    """mds_feedback_subscribers goes up on a new subscriber and back down on unsubscribe."""
    bus = FeedbackBus()
    rec = Recorder()
    start = sample("mds_feedback_subscribers")
    bus.subscribe(rec)
    bus.subscribe(rec)
    assert sample("mds_feedback_subscribers") == start + 1
    bus.unsubscribe(rec)
    bus.unsubscribe(rec)
    assert sample("mds_feedback_subscribers") == start


def test_max_backlog_below_one_is_rejected() -> None:
    """FeedbackBus(max_backlog=0) raises ConfigError (a ValueError) naming the argument."""
    with pytest.raises(ConfigError, match="max_backlog"):
        FeedbackBus(max_backlog=0)
    assert issubclass(ConfigError, ValueError)


# --- subscribers must be async (issue 13 item 5) ---------------------------------------------


def plain(event: FeedbackEvent) -> None:
    """A sync function: what subscribe() must refuse."""


class SyncCall:
    def __call__(self, event: FeedbackEvent) -> None:
        pass


@pytest.mark.parametrize(
    "callback",
    [plain, lambda event: None, SyncCall(), functools.partial(plain)],
    ids=["def", "lambda", "sync __call__", "partial of def"],
)
def test_subscribe_rejects_a_sync_callable_saying_make_it_async_def(callback: object) -> None:
    """A plain function (or object with a sync __call__) is a TypeError telling to use async def."""
    bus = FeedbackBus()
    with pytest.raises(TypeError, match="async def"):
        bus.subscribe(callback)  # type: ignore[arg-type]
    assert bus.subscriber_count == 0


async def test_subscribe_accepts_async_callables_of_every_shape() -> None:
    """async def functions, bound methods, async __call__ objects and partials all subscribe."""

    async def with_tag(tag: str, event: FeedbackEvent) -> None:
        got.append(tag)

    got: list[str] = []
    rec = Recorder()
    bus = FeedbackBus()
    for callback in (rec, rec.on_event, functools.partial(with_tag, "partial")):
        bus.subscribe(callback)
    await bus.publish(ev("a", 1), timeout=DEADLINE)
    assert bus.subscriber_count == 3
    assert len(rec.events) == 2 and got == ["partial"]


# --- raising subscribers: counted, DEBUG traceback, one WARNING a minute ----------------------


async def test_raising_subscriber_warns_once_a_minute_and_logs_each_traceback_at_debug(
    log_messages: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 failures: 20 counted, 20 DEBUG tracebacks, 1 WARNING; one more WARNING after 60 s."""
    from loguru import logger

    from market_data_store.feedback import bus as bus_module

    now = [1000.0]
    monkeypatch.setattr(bus_module, "_clock", lambda: now[0])
    debug: list[str] = []
    handler = logger.add(
        lambda m: debug.append(str(m)),
        level="DEBUG",
        format="{message}\n{exception}",
        filter=lambda r: r["level"].name == "DEBUG",
    )

    async def failing_subscriber(event: FeedbackEvent) -> None:
        raise RuntimeError(f"bad {event.seq}")

    bus = FeedbackBus()
    bus.subscribe(failing_subscriber)
    labels = {"subscriber": failing_subscriber.__qualname__}
    errors = sample("mds_feedback_subscriber_errors_total", labels)
    try:
        for seq in range(1, 21):
            await bus.publish(ev("a", seq), timeout=DEADLINE)
        now[0] += 61.0
        await bus.publish(ev("a", 21), timeout=DEADLINE)
    finally:
        logger.remove(handler)
    assert sample("mds_feedback_subscriber_errors_total", labels) == errors + 21
    warnings = [m for m in log_messages if m.startswith("WARNING") and "failing_subscriber" in m]
    assert len(warnings) == 2
    assert "RuntimeError: bad 1 (1 times" in warnings[0]
    assert "RuntimeError: bad 21 (20 times" in warnings[1]
    assert len(debug) == 21
    assert all("Traceback" in d and "RuntimeError" in d for d in debug)


# --- timeouts -----------------------------------------------------------------------------------


async def test_publish_and_flush_with_timeout_raise_timeout_error_on_a_hung_subscriber() -> None:
    """publish(timeout=) and flush(timeout=) give up with TimeoutError; the bus keeps working."""
    bus = FeedbackBus()
    hang = asyncio.Event()
    rec = Recorder()

    async def hung(event: FeedbackEvent) -> None:
        await hang.wait()

    bus.subscribe(hung)
    bus.subscribe(rec)
    with pytest.raises(TimeoutError):
        await bus.publish(ev("a", 1), timeout=0.05)
    with pytest.raises(TimeoutError):
        await bus.flush(timeout=0.05)
    assert rec.seqs == [1]
    hang.set()
    await bus.flush(timeout=DEADLINE)


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
async def test_publish_and_flush_reject_a_bad_timeout(timeout: float) -> None:
    """A negative or NaN timeout is a ConfigError naming timeout."""
    bus = FeedbackBus()
    with pytest.raises(ConfigError, match="timeout"):
        await bus.publish(ev("a", 1), timeout=timeout)
    with pytest.raises(ConfigError, match="timeout"):
        await bus.flush(timeout=timeout)


def test_feedback_event_create_stamps_now_and_accepts_a_level_string() -> None:
    """FeedbackEvent.create(id, size, capacity, level, reason) builds the event the plan shows."""
    before = time.time()
    event = FeedbackEvent.create("bars", 90, 100, "hard", reason="queue_full")
    after = time.time()
    assert (event.coordinator_id, event.queue_size, event.capacity) == ("bars", 90, 100)
    assert event.level is BackpressureLevel.HARD and event.reason == "queue_full"
    assert event.seq == 0 and before <= event.ts <= after
    assert FeedbackEvent.create("q", 1, 2, BackpressureLevel.OK).reason is None
    with pytest.raises(ValueError):
        FeedbackEvent.create("q", 1, 2, "panic")


async def test_a_backlog_of_more_coordinators_than_max_backlog_is_not_rescanned_per_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With more coordinators waiting than max_backlog, coalescing drops nothing; the next
    one waits until the backlog has doubled, so an event costs O(1), not a scan of the
    whole backlog, and the backlog stays within twice the coordinators waiting."""
    from market_data_store.feedback import bus as bus_module

    scans = 0
    real_coalesce = bus_module.coalesce

    def counting(pending: Any) -> Any:
        nonlocal scans
        scans += 1
        return real_coalesce(pending)

    monkeypatch.setattr(bus_module, "coalesce", counting)
    bus = FeedbackBus(max_backlog=8)
    hold = asyncio.Event()
    got: list[FeedbackEvent] = []

    async def stuck(event: FeedbackEvent) -> None:
        await hold.wait()
        got.append(event)

    bus.subscribe(stuck)
    coordinators = [new_id() for _ in range(100)]
    bus.publish_nowait(ev(coordinators[0], 0))
    await asyncio.sleep(0)  # delivery of the first event starts and hangs
    for seq in range(1, 2001):
        bus.publish_nowait(ev(coordinators[seq % 100], seq))
        await asyncio.sleep(0)
        assert bus.backlog(stuck) <= 2 * 100 + 1
    # a scan per ~100 events once 100 coordinators wait (plus a few while the threshold
    # doubles up to that), not one per event as with a fixed threshold (about 1,990)
    assert scans <= 2000 // 100 + 8, scans
    hold.set()
    async with asyncio.timeout(DEADLINE):
        await bus.flush()
    assert {e.coordinator_id: e.seq for e in got if e.seq} == {
        cid: max(s for s in range(1, 2001) if s % 100 == i) for i, cid in enumerate(coordinators)
    }
