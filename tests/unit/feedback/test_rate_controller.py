"""RateController: AIMD on feedback levels, and its token bucket, on a fake clock."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from market_data_store.errors import ConfigError
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
from market_data_store.feedback.rate_controller import (
    BURST_SEC,
    PROBE_DOUBLING_SEC,
    RateController,
)

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD


class FakeClock:
    """A clock that only moves when the controller sleeps (or the test moves it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, max_rate: float = 1000, **kwargs: Any) -> RateController:
    return RateController(max_rate, clock=clock, sleep=clock.sleep, bus=FeedbackBus(), **kwargs)


def event(level: BackpressureLevel, seq: int, cid: str = "a", reason: str | None = None):
    return FeedbackEvent(cid, 0, 100, level, reason=reason, seq=seq)


async def produce(rc: RateController, clock: FakeClock, seconds: float, n: float = 1) -> float:
    """A producer held back by the controller for ``seconds``; returns the items acquired."""
    end = clock.now + seconds
    items = 0.0
    while clock.now < end:
        await rc.acquire(n)
        items += n
    return items


async def test_soft_multiplies_rate_by_soft_factor(clock: FakeClock) -> None:
    """SOFT cuts the rate to soft_factor times what it was."""
    rc = make(clock)
    await rc(event(SOFT, 1))
    assert rc.rate == pytest.approx(800)


async def test_hard_multiplies_rate_by_hard_factor(clock: FakeClock) -> None:
    """HARD cuts the rate to hard_factor times what it was."""
    rc = make(clock, hard_factor=0.25)
    await rc(event(HARD, 1))
    assert rc.rate == pytest.approx(250)


async def test_rate_never_falls_below_min_rate(clock: FakeClock) -> None:
    """Repeated HARD cuts stop at the min_rate floor."""
    rc = make(clock, min_rate=300)
    for seq in range(1, 10):
        await rc(event(HARD if seq % 2 else OK, seq))
        clock.now += 2  # past min_decrease_interval, so every HARD cuts
    assert rc.rate == 300


async def test_default_floor_is_one_percent_of_max_rate(clock: FakeClock) -> None:
    """Without min_rate, cuts stop at 1 % of max_rate."""
    rc = make(clock)
    for seq in range(1, 30):
        await rc(event(HARD if seq % 2 else OK, seq))
        clock.now += 2
    assert rc.rate == pytest.approx(10)


def probed(start: float, increase_per_sec: float, seconds: float) -> float:
    """The rate after ``seconds`` held back: start + the integral of the doubling probe."""
    d = PROBE_DOUBLING_SEC
    return start + increase_per_sec * (2 ** (seconds / d) - 1) * d / math.log(2)


async def test_ok_probe_starts_at_increase_per_sec_and_doubles(clock: FakeClock) -> None:
    """After OK the rate grows from increase_per_sec per second, doubling every
    PROBE_DOUBLING_SEC held back."""
    rc = make(clock, increase_per_sec=50)
    await rc(event(HARD, 1))
    await rc(event(OK, 2))
    assert rc.rate == pytest.approx(500)
    await produce(rc, clock, 0.5)
    assert rc.rate == pytest.approx(probed(500, 50, 0.5), abs=2)
    await produce(rc, clock, 0.5)
    assert rc.rate == pytest.approx(probed(500, 50, 1.0), abs=2)
    assert rc.rate - 500 > 50 * 1.0  # more than a constant increase_per_sec would give


async def test_default_probe_starts_at_1_5_percent_of_max_rate(clock: FakeClock) -> None:
    """Without increase_per_sec the probe starts at 1.5 % of max_rate per second held back."""
    rc = make(clock)
    await rc(event(HARD, 1))
    await rc(event(OK, 2))
    await produce(rc, clock, 1.0)
    assert rc.rate == pytest.approx(probed(500, 15, 1.0), abs=2)


async def test_rate_never_exceeds_max_rate(clock: FakeClock) -> None:
    """Growth stops at the max_rate ceiling."""
    rc = make(clock, increase_per_sec=200)
    await rc(event(HARD, 1))
    await rc(event(OK, 2))
    await produce(rc, clock, 10.0, n=20)
    assert rc.rate == 1000


async def test_no_growth_while_soft_or_hard(clock: FakeClock) -> None:
    """The rate holds while the coordinator is SOFT or HARD, however busy the producer."""
    rc = make(clock)
    await rc(event(HARD, 1))
    await produce(rc, clock, 3.0)
    assert rc.rate == pytest.approx(500)


async def test_no_growth_while_producer_is_idle(clock: FakeClock) -> None:
    """An idle producer earns no headroom: the rate does not grow after OK."""
    rc = make(clock)
    await rc(event(HARD, 1))
    await rc(event(OK, 2))
    clock.now += 60
    assert rc.rate == pytest.approx(500)


async def test_no_growth_while_producer_uses_part_of_its_allowance(clock: FakeClock) -> None:
    """A producer asking for half its allowance never waits, so the rate does not grow."""
    rc = make(clock)
    await rc(event(HARD, 1))
    await rc(event(OK, 2))
    clock.now += 1  # fill the bucket
    for _ in range(1000):  # 250 items/s against an allowance of 500 items/s
        await rc.acquire(1)
        clock.now += 1 / 250
    assert clock.slept == 0
    assert rc.rate == pytest.approx(500)


async def test_stale_seq_is_ignored(clock: FakeClock) -> None:
    """An event older than the last one seen for its coordinator changes nothing."""
    rc = make(clock)
    await rc(event(HARD, 5))
    clock.now += 5
    await rc(event(OK, 4))
    await produce(rc, clock, 1.0)
    assert rc.rate == pytest.approx(500)  # still HARD: the stale OK did not start growth
    await rc(event(SOFT, 3))
    assert rc.rate == pytest.approx(500)  # the stale SOFT did not cut


async def test_equal_seq_is_not_stale(clock: FakeClock) -> None:
    """Events without a seq (all 0) are all applied."""
    rc = make(clock)
    await rc(event(SOFT, 0))
    await rc(event(HARD, 0))
    assert rc.rate == pytest.approx(400)


async def test_coordinators_are_kept_apart_and_rate_is_their_minimum(clock: FakeClock) -> None:
    """Each coordinator has its own rate and seq; the effective rate is the minimum."""
    rc = make(clock)
    await rc(event(HARD, 7, cid="a"))
    await rc(event(SOFT, 1, cid="b"))  # a lower seq than a's: not stale for b
    assert rc.rate_for("a") == pytest.approx(500)
    assert rc.rate_for("b") == pytest.approx(800)
    assert rc.rate_for("c") == 1000
    assert rc.rate == pytest.approx(500)


async def test_unwatched_coordinators_are_ignored(clock: FakeClock) -> None:
    """With coordinator_ids given, events from other coordinators change nothing."""
    rc = make(clock, coordinator_ids=["a"])
    await rc(event(HARD, 1, cid="other"))
    assert rc.rate == 1000
    await rc(event(HARD, 1, cid="a"))
    assert rc.rate == pytest.approx(500)


async def test_flapping_soft_cuts_once_per_episode(clock: FakeClock) -> None:
    """SOFT after an OK shorter than min_decrease_interval does not cut; after a long OK it does."""
    rc = make(clock, min_decrease_interval=2.0)
    for seq in range(1, 9):
        await rc(event(SOFT if seq % 2 else OK, seq))
        clock.now += 0.5
    assert rc.rate == pytest.approx(800)
    clock.now += 1.5  # OK (seq 8) has now lasted 2 s
    await rc(event(SOFT, 9))
    assert rc.rate == pytest.approx(640)


async def test_soft_reemitted_while_soft_does_not_cut(clock: FakeClock) -> None:
    """A SOFT lifecycle event (e.g. circuit_closed) while already SOFT changes nothing."""
    rc = make(clock)
    await rc(event(SOFT, 1))
    clock.now += 5
    await rc(event(SOFT, 2, reason="circuit_closed"))
    assert rc.rate == pytest.approx(800)


async def test_hard_after_recent_soft_still_cuts(clock: FakeClock) -> None:
    """A HARD right after a SOFT cut is an escalation and cuts again."""
    rc = make(clock)
    await rc(event(SOFT, 1))
    await rc(event(HARD, 2))
    assert rc.rate == pytest.approx(400)


async def test_repeated_hard_within_interval_cuts_once(clock: FakeClock) -> None:
    """A second HARD (e.g. circuit_open) within min_decrease_interval does not cut again."""
    rc = make(clock)
    await rc(event(HARD, 1))
    await rc(event(HARD, 2, reason="circuit_open"))
    assert rc.rate == pytest.approx(500)
    clock.now += 1.0
    await rc(event(HARD, 3, reason="circuit_open"))
    assert rc.rate == pytest.approx(250)


async def test_stopped_event_forgets_the_coordinator(clock: FakeClock) -> None:
    """After reason "stopped" the coordinator no longer limits the rate and its seq restarts."""
    rc = make(clock)
    await rc(event(HARD, 9))
    await rc(event(OK, 10, reason="stopped"))
    assert rc.rate == 1000
    await rc(event(SOFT, 1))
    assert rc.rate == pytest.approx(800)


@pytest.mark.parametrize("n", [1, 7])
async def test_token_bucket_holds_rate_within_5_percent_over_2s(clock: FakeClock, n: int) -> None:
    """Over 2 s a saturating producer gets the current rate, within 5 %."""
    rc = make(clock, max_rate=500)
    items = await produce(rc, clock, 2.0, n=n)
    assert items / clock.now == pytest.approx(500, rel=0.05)


async def test_token_bucket_follows_a_cut_rate(clock: FakeClock) -> None:
    """After a HARD cut the bucket paces at the new rate, within 5 % over 2 s."""
    rc = make(clock, max_rate=500)
    await rc(event(HARD, 1))
    start = clock.now
    items = await produce(rc, clock, 2.0)
    assert items / (clock.now - start) == pytest.approx(250, rel=0.05)


async def test_acquire_larger_than_burst_waits_proportionally(clock: FakeClock) -> None:
    """acquire(n) with n far above the burst returns after n / rate seconds."""
    rc = make(clock, max_rate=100)  # burst: 10 items
    await rc.acquire(250)
    assert clock.now == pytest.approx(2.5)
    await rc.acquire(250)
    assert clock.now == pytest.approx(5.0)


async def test_idle_time_banks_at_most_a_short_burst(clock: FakeClock) -> None:
    """After a long idle spell only BURST_SEC worth of items pass without waiting."""
    rc = make(clock, max_rate=100)
    clock.now += 60
    await rc.acquire(100 * BURST_SEC)
    assert clock.slept == 0
    await rc.acquire(1)
    assert clock.slept == pytest.approx(0.01)


async def test_cancelled_acquire_gives_its_tokens_back(clock: FakeClock) -> None:
    """A caller cancelled while waiting leaves no debt for the next one."""

    async def hang(seconds: float) -> None:
        await asyncio.Event().wait()

    rc = RateController(10, clock=clock, sleep=hang, bus=FeedbackBus())
    waiter = asyncio.create_task(rc.acquire(100))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.now += 0.1  # one token at 10 items/s
    await asyncio.wait_for(rc.acquire(1), timeout=1)


async def test_acquire_rejects_negative_n(clock: FakeClock) -> None:
    """acquire(n) with n < 0 is a ValueError naming n."""
    with pytest.raises(ValueError, match="n must satisfy"):
        await make(clock).acquire(-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rate": 0}, "0 < max_rate < inf, got 0"),
        ({"max_rate": math.inf}, "0 < max_rate < inf, got inf"),
        ({"max_rate": math.nan}, "max_rate must be a finite number"),
        ({"min_rate": 0}, "0 < min_rate <= 1000.0, got 0"),
        ({"min_rate": 2000}, "0 < min_rate <= 1000.0, got 2000"),
        ({"soft_factor": 0}, "0 < soft_factor <= 1, got 0"),
        ({"soft_factor": 1.5}, "0 < soft_factor <= 1, got 1.5"),
        ({"hard_factor": 0.9}, "0 < hard_factor <= 0.8, got 0.9"),
        ({"increase_per_sec": 0}, "0 < increase_per_sec < inf, got 0"),
        ({"min_decrease_interval": -1}, "0 <= min_decrease_interval < inf, got -1"),
        ({"coordinator_ids": []}, "coordinator_ids must be None"),
        ({"coordinator_ids": "a"}, "coordinator_ids must be None"),
    ],
)
def test_validation_errors_name_the_parameter_and_range(kwargs: Any, message: str) -> None:
    """Each bad argument raises ConfigError naming it and its allowed range."""
    args = {"max_rate": 1000, **kwargs}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RateController(args.pop("max_rate"), **args)


async def test_start_and_stop_subscribe_and_unsubscribe() -> None:
    """start() subscribes to the given bus, stop() unsubscribes; events flow only in between."""
    bus = FeedbackBus()
    rc = RateController(1000, bus=bus)
    await rc.start()
    await rc.start()
    assert list(bus.subscribers()) == [rc]
    await bus.publish(event(HARD, 1))
    assert rc.rate == pytest.approx(500)
    await rc.stop()
    await rc.stop()
    assert bus.subscriber_count == 0
    await bus.publish(event(HARD, 2))
    assert rc.rate == pytest.approx(500)


async def test_async_with_subscribes_and_unsubscribes() -> None:
    """``async with`` subscribes on entry and unsubscribes on exit."""
    bus = FeedbackBus()
    async with RateController(1000, bus=bus) as rc:
        assert bus.subscriber_count == 1
        await bus.publish(event(SOFT, 1))
    assert bus.subscriber_count == 0
    assert rc.rate == pytest.approx(800)
