"""The pressure-level state machine (DESIGN.md section 4) against a model, over random ops."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.types import OVERFLOW_STRATEGIES, ConfigError, QueueFullError
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD

Op = tuple[str, int]
Scenario = tuple[int, int, int, int | None, str, list[Op]]


@dataclass
class Model:
    """What the queue should hold, report and emit."""

    capacity: int
    high: int
    low: int
    recover: int
    strategy: str
    items: deque[int] = field(default_factory=deque)
    level: BackpressureLevel = OK
    dropped: int = 0
    events: list[tuple[BackpressureLevel, str | None, int]] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)

    def settle_level(self) -> None:
        """Apply section 4 once, after an operation, to the size it left."""
        size, old = len(self.items), self.level
        if old in (SOFT, HARD) and size <= self.recover:
            new = OK
        elif old is HARD:
            new = HARD
        elif size >= self.high:
            new = HARD
        elif old is SOFT or size > self.low:
            new = SOFT
        else:
            new = OK
        if new is old:
            return
        self.level = new
        self.events.append((new, "queue_recovered" if new is OK else None, size))
        if new is HARD:
            self.callbacks.append("high")
        elif old is HARD:
            self.callbacks.append("low")


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    capacity = draw(st.integers(1, 20))
    high = draw(st.integers(1, capacity))
    low = draw(st.integers(0, high - 1))
    # None: the default band; low: the round-one machine without a band.
    recover = draw(st.none() | st.just(low) | st.integers(0, low))
    strategy = draw(st.sampled_from(OVERFLOW_STRATEGIES))
    # Mostly one item at a time, so that sizes walk through every band between the watermarks.
    names = ["put"] * 4 + ["put_nowait", "put_many", "get", "get", "get", "get_nowait", "get_batch"]
    op = st.tuples(st.sampled_from(names), st.integers(0, capacity + 3)) | st.just(("drain", 0))
    ops = draw(st.lists(op, min_size=20, max_size=100))
    return capacity, high, low, recover, strategy, ops


async def run_ops(
    capacity: int, high: int, low: int, recover: int | None, strategy: str, ops: list[Op]
) -> None:
    bus = FeedbackBus(max_backlog=10_000)  # large enough that nothing is coalesced
    received: list[FeedbackEvent] = []

    async def subscriber(event: FeedbackEvent) -> None:
        received.append(event)

    bus.subscribe(subscriber)
    calls: list[str] = []

    async def on_high() -> None:
        calls.append("high")

    async def on_low() -> None:
        calls.append("low")

    q: BoundedQueue[int] = BoundedQueue(
        capacity,
        high,
        low,
        recover_watermark=recover,
        coord_id="levels",
        overflow_strategy=strategy,  # type: ignore[arg-type]
        on_high=on_high,
        on_low=on_low,
        bus=bus,
    )
    default_recover = max(0, low - max(1, capacity // 20))
    m = Model(capacity, high, low, default_recover if recover is None else recover, strategy)
    assert q.recover_watermark == m.recover
    next_item = 0
    for name, n in ops:
        size = len(m.items)
        if name in ("put", "put_nowait", "put_many"):
            count = n if name == "put_many" else 1
            if name == "put_many" and strategy == "block":
                count = min(count, capacity - size)  # a larger one would wait forever
            new = list(range(next_item, next_item + count))
            fits = size + count <= capacity
            if not fits and strategy == "block" and name != "put_nowait":
                continue  # would wait forever: nobody else runs
            next_item += count
            if not fits and strategy != "drop_oldest":
                with pytest.raises(QueueFullError):
                    if name == "put_many":
                        await q.put_many(new)
                    elif name == "put":
                        await q.put(new[0])
                    else:
                        q.put_nowait(new[0])
                continue
            if name == "put_many":
                assert await q.put_many(new) == count
            elif name == "put":
                await q.put(new[0])
            else:
                q.put_nowait(new[0])
            m.items.extend(new)
            while len(m.items) > capacity:
                m.items.popleft()
                m.dropped += 1
        elif name in ("get", "get_nowait"):
            if not size:
                with pytest.raises(asyncio.QueueEmpty):
                    q.get_nowait()
                continue
            got = await q.get() if name == "get" else q.get_nowait()
            assert got == m.items.popleft()
        elif name == "get_batch":
            if not size:
                continue
            want = max(n, 1)
            expected = [m.items.popleft() for _ in range(min(want, size))]
            assert await q.get_batch(want) == expected
        else:
            assert q.drain_nowait() == list(m.items)
            m.items.clear()
        m.settle_level()
        assert (q.size, q.level, q.stats().dropped) == (len(m.items), m.level, m.dropped)

    await bus.flush()
    await q.join_callbacks()
    assert [(e.level, e.reason, e.queue_size) for e in received] == m.events
    assert [e.seq for e in received] == list(range(1, len(m.events) + 1))
    assert {(e.coordinator_id, e.capacity) for e in received} <= {("levels", capacity)}
    assert calls == m.callbacks
    assert q.stats().seq == len(m.events)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_levels_events_and_callbacks_follow_the_state_machine(
    scenario: Scenario,
) -> None:
    """Random put/get sequences: level, events (one per transition, seq +1) and callbacks match."""
    asyncio.run(run_ops(*scenario))


async def test_hard_drains_through_the_band_without_flapping() -> None:
    """Draining from HARD through the band down to recover emits nothing until recover."""
    bus = FeedbackBus()
    received: list[FeedbackEvent] = []

    async def subscriber(event: FeedbackEvent) -> None:
        received.append(event)

    bus.subscribe(subscriber)
    q: BoundedQueue[int] = BoundedQueue(10, 8, 5, recover_watermark=3, bus=bus)
    await q.put_many(range(8))
    for op in ("get", "get", "put", "get", "put", "get", "get", "get", "get"):
        await (q.put(0) if op == "put" else q.get())
        if q.size > 3:
            assert q.level is HARD
    await bus.flush()
    assert [(e.level, e.reason, e.queue_size, e.seq) for e in received] == [
        (HARD, None, 8, 1),
        (OK, "queue_recovered", 3, 2),
    ]


async def record_events(q: BoundedQueue[int], bus: FeedbackBus) -> list[FeedbackEvent]:
    received: list[FeedbackEvent] = []

    async def subscriber(event: FeedbackEvent) -> None:
        received.append(event)

    bus.subscribe(subscriber)
    return received


async def move_to(q: BoundedQueue[int], size: int) -> None:
    """Put or take items until the queue holds ``size``."""
    if size > q.size:
        await q.put_many(range(size - q.size))
    elif size < q.size:
        await q.get_batch(q.size - size)
    assert q.size == size


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_oscillating_around_low_emits_at_most_two_events_after_the_first_crossing(
    seed: int,
) -> None:
    """Size swinging by up to +-200 around low for 2,000 steps: <= 2 events after the crossing."""
    bus = FeedbackBus(max_backlog=10_000)
    q: BoundedQueue[int] = BoundedQueue(10_000, bus=bus)  # high 8,000, low 5,000, recover 4,500
    received = await record_events(q, bus)
    rng = random.Random(seed)
    await move_to(q, q.low_watermark + 1)  # the first crossing: OK -> SOFT
    for _ in range(2_000):
        await move_to(q, q.low_watermark + rng.randint(-200, 200))
    await bus.flush()
    assert received[0].level is SOFT
    assert len(received) - 1 <= 2, [(e.level, e.queue_size) for e in received]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_oscillating_around_high_while_draining_from_hard_emits_at_most_two_events(
    seed: int,
) -> None:
    """Size swinging by up to +-200 around high after HARD for 2,000 steps: <= 2 more events."""
    bus = FeedbackBus(max_backlog=10_000)
    q: BoundedQueue[int] = BoundedQueue(10_000, bus=bus)
    received = await record_events(q, bus)
    rng = random.Random(seed)
    await move_to(q, q.high_watermark)  # the first crossing: OK -> HARD
    for _ in range(2_000):
        await move_to(q, q.high_watermark + rng.randint(-200, 200))
    await bus.flush()
    assert received[0].level is HARD
    assert len(received) - 1 <= 2, [(e.level, e.queue_size) for e in received]


async def test_without_a_band_the_same_oscillation_flaps() -> None:
    """recover_watermark=low restores the round-one machine: the oscillation above flaps."""
    bus = FeedbackBus(max_backlog=10_000)
    q: BoundedQueue[int] = BoundedQueue(10_000, recover_watermark=5_000, bus=bus)
    received = await record_events(q, bus)
    rng = random.Random(1)
    await move_to(q, q.low_watermark + 1)
    for _ in range(2_000):
        await move_to(q, q.low_watermark + rng.randint(-200, 200))
    await bus.flush()
    assert len(received) > 100  # the oscillation tests above do exercise the band


def test_default_recover_watermark_is_low_minus_five_percent_of_capacity() -> None:
    """The default recover watermark is max(0, low - max(1, capacity // 20))."""
    assert BoundedQueue(10_000, bus=FeedbackBus()).recover_watermark == 4_500
    assert BoundedQueue(10, bus=FeedbackBus()).recover_watermark == 4
    assert BoundedQueue(2, 2, 0, bus=FeedbackBus()).recover_watermark == 0


@pytest.mark.parametrize("recover", [-1, 6, 2.5, True])
def test_recover_watermark_outside_zero_to_low_is_a_config_error(recover: object) -> None:
    """A recover watermark below 0, above low, or not an int names the argument and range."""
    with pytest.raises(ConfigError, match=r"recover_watermark must .*0 <= recover_watermark <="):
        BoundedQueue(10, 8, 5, recover_watermark=recover, bus=FeedbackBus())  # type: ignore[arg-type]


@pytest.mark.parametrize("recover", [0, 5])
def test_recover_watermark_may_be_zero_or_low(recover: int) -> None:
    """Both ends of 0 <= recover_watermark <= low are accepted."""
    q: BoundedQueue[int] = BoundedQueue(10, 8, 5, recover_watermark=recover, bus=FeedbackBus())
    assert q.recover_watermark == recover
