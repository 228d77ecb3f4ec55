"""RateController's drain estimate and the closed loop it drives, on fake and virtual clocks.

Synthetic event sequences pin the estimate itself (FakeClock, events stamped with its time);
closed loops run the real BoundedQueue, FeedbackBus and controllers on a virtual-time event
loop (``market_data_store.testing.virtual_time``): no real sleeping anywhere.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
from market_data_store.feedback.rate_controller import (
    FAIR_PULL,
    REPORT_MARGIN,
    RateController,
    _toward_equal,
)
from market_data_store.testing.virtual_time import LoopTimeBus, run_virtual

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD


class FakeClock:
    """A clock that only moves when the controller sleeps (or the test moves it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, max_rate: float = 1000, **kwargs: Any) -> RateController:
    return RateController(max_rate, clock=clock, sleep=clock.sleep, bus=FeedbackBus(), **kwargs)


def at(
    clock: FakeClock, level: BackpressureLevel, seq: int, size: float, cid: str = "a"
) -> FeedbackEvent:
    """An event emitted now (by the fake clock) with the given queue size."""
    return FeedbackEvent(cid, round(size), 100_000, level, ts=clock.now, seq=seq)


async def produce(rc: RateController, clock: FakeClock, seconds: float, n: int = 10) -> int:
    """A producer held back by the controller for ``seconds``; returns the items admitted."""
    end = clock.now + seconds
    items = 0
    while clock.now < end:
        await rc.acquire(n)
        items += n
    return items


# -- the estimate from synthetic event sequences --------------------------------------------


@pytest.mark.parametrize("batch", [1, 100])
@pytest.mark.parametrize("drain", [300, 700, 2000])
async def test_drain_estimate_is_within_10_percent_of_the_true_drain(
    clock: FakeClock, drain: float, batch: int
) -> None:
    """Two events and the producer's own admissions estimate the drain within 10 %."""
    rc = make(clock)
    await rc(at(clock, SOFT, 1, 20_000))  # no estimate yet: the fallback cut to 800/s
    start = clock.now
    admitted = await produce(rc, clock, 2.05)
    taken = batch * math.floor(drain * (clock.now - start) / batch)  # whole batches only
    level = HARD if admitted > taken else OK
    await rc(at(clock, level, 2, 20_000 + admitted - taken))
    estimate = rc.drain_estimate("a")
    assert estimate == pytest.approx(drain, rel=0.1)


async def test_four_producers_each_estimate_a_quarter_of_the_drain(clock: FakeClock) -> None:
    """With the queue fed by four like producers, each controller's share is drain / 4."""
    rc = make(clock)
    drain, size = 2000.0, 5000.0
    await rc(at(clock, SOFT, 1, size))
    admitted = await produce(rc, clock, 1.0)  # at 800/s, as are the three others
    size += 4 * admitted - drain * 1.0
    await rc(at(clock, HARD, 2, size))  # the queue grows faster than this one sends
    assert rc.rate < 250  # so it cut deeper than hard_factor: the others must cut too
    start = clock.now
    admitted = await produce(rc, clock, 1.0)
    size += 4 * admitted - drain * (clock.now - start)
    await rc(at(clock, OK, 3, size))
    assert rc.drain_estimate("a") == pytest.approx(drain / 4, rel=0.1)


async def test_soft_with_an_estimate_cuts_to_it_not_by_soft_factor(clock: FakeClock) -> None:
    """SOFT after a measured interval sets the rate from the estimate, not rate * 0.8."""
    rc = make(clock)
    await rc(at(clock, HARD, 1, 8000))  # fallback: 500/s
    admitted = await produce(rc, clock, 2.0)
    size = 8000 + admitted - 300 * 2.0  # the sink drains 300/s
    await rc(at(clock, OK, 2, size))
    await rc(at(clock, SOFT, 3, size))  # too close to measure: the OK interval still holds
    assert rc.drain_estimate("a") == pytest.approx(300, rel=0.1)
    assert 150 <= rc.rate <= 450  # the estimate plus a move of at most 50 %, not 400


async def test_an_estimate_never_raises_a_producer_not_using_its_allowance(
    clock: FakeClock,
) -> None:
    """A producer sending 100/s of a 500/s allowance gets no raise however fast the queue
    drains."""
    rc = make(clock)
    await rc(at(clock, HARD, 1, 8000))
    for _ in range(20):
        clock.now += 0.1
        await rc.acquire(10)
    await rc(at(clock, OK, 2, 8000 + 200 - 2000 * 2.0))  # drained at 2000/s
    assert rc.drain_estimate("a") == pytest.approx(2000, rel=0.1)
    assert rc.rate == pytest.approx(500)


async def test_a_stale_event_does_not_move_the_estimate(clock: FakeClock) -> None:
    """An event with an older seq is not a measurement: the estimate spans the fresh ones."""
    rc = make(clock)
    await rc(at(clock, SOFT, 5, 20_000))
    admitted = await produce(rc, clock, 1.0)
    await rc(at(clock, HARD, 3, 99_999))  # stale
    admitted += await produce(rc, clock, 1.0)
    await rc(at(clock, HARD, 6, 20_000 + admitted - 500 * clock.now))
    assert rc.drain_estimate("a") == pytest.approx(500, rel=0.1)


async def test_a_non_finite_ts_or_a_clock_stepped_back_measures_nothing(
    clock: FakeClock,
) -> None:
    """Events stamped NaN or inf measure nothing; after the coordinator's clock steps back,
    measuring starts again from the first event on the new clock."""
    rc = make(clock)
    drain, size = 400.0, 20_000.0
    await rc(at(clock, SOFT, 1, size))
    for seq, ts in [(2, math.nan), (3, math.inf)]:
        await rc(FeedbackEvent("a", 0, 100_000, HARD, ts=ts, seq=seq))
    assert rc.drain_estimate("a") is None
    start = clock.now
    size += await produce(rc, clock, 1.0) - drain * (clock.now - start)
    stepped = FeedbackEvent("a", round(size), 100_000, HARD, ts=clock.now - 100, seq=4)
    await rc(stepped)  # 101 s before the first event: not a measurement
    assert rc.drain_estimate("a") is None
    start = clock.now
    size += await produce(rc, clock, 1.0) - drain * (clock.now - start)
    await rc(FeedbackEvent("a", round(size), 100_000, OK, ts=clock.now - 100, seq=5))
    assert rc.drain_estimate("a") == pytest.approx(drain, rel=0.1)


async def test_estimates_of_two_coordinators_are_kept_apart(clock: FakeClock) -> None:
    """Each coordinator's events measure its own queue: b's events leave a's estimate alone."""
    rc = make(clock)
    await rc(at(clock, SOFT, 1, 20_000, cid="a"))
    await rc(at(clock, SOFT, 9, 50_000, cid="b"))
    admitted = await produce(rc, clock, 1.0)
    await rc(at(clock, HARD, 10, 50_000 + admitted - 100 * clock.now, cid="b"))
    admitted += await produce(rc, clock, 1.0)
    await rc(at(clock, HARD, 2, 20_000 + admitted - 600 * clock.now, cid="a"))
    assert rc.drain_estimate("a") == pytest.approx(600, rel=0.1)
    assert rc.drain_estimate("b") == pytest.approx(100, rel=0.1)
    assert rc.drain_estimate("c") is None


async def test_an_estimate_above_max_rate_is_capped(clock: FakeClock) -> None:
    """However fast the queue drains, the rate an estimate sets stops at max_rate."""
    rc = make(clock)
    await rc(at(clock, SOFT, 1, 50_000))
    admitted = await produce(rc, clock, 1.0)
    await rc(at(clock, OK, 2, 50_000 + admitted - 40_000))
    assert rc.drain_estimate("a") == pytest.approx(40_000, rel=0.1)
    assert rc.rate == 1000


async def test_an_estimate_below_min_rate_is_floored(clock: FakeClock) -> None:
    """However slowly the queue drains, the rate a HARD estimate sets stops at min_rate."""
    rc = make(clock, min_rate=100)
    await rc(at(clock, SOFT, 1, 5000))
    admitted = await produce(rc, clock, 1.0)
    await rc(at(clock, HARD, 2, 5000 + admitted - 150))  # the sink drains 150/s
    assert rc.drain_estimate("a") == pytest.approx(150, rel=0.1)
    assert rc.rate == 100


# -- closed loops: real queue and bus, virtual time -----------------------------------------


@dataclass
class Loop:
    """What a closed-loop run recorded."""

    admissions: list[list[tuple[float, int]]] = field(default_factory=list)  # per producer
    rates: list[tuple[float, float]] = field(default_factory=list)  # producer 0's allowance
    levels: list[BackpressureLevel] = field(default_factory=list)
    dropped: int = 0
    peak: int = 0

    def admitted(self, producer: int, start: float, end: float) -> int:
        return sum(n for t, n in self.admissions[producer] if start <= t < end)


async def closed_loop(
    producers: int,
    capacity: int,
    sink_rates: list[tuple[float, float]],
    duration: float,
    *,
    max_rate: float,
    batch: int = 50,
    chunk: int = 10,
    stagger: float = 0.0,
) -> Loop:
    """Producers paced by their own controllers feed one real BoundedQueue; a sink takes
    batches at ``sink_rates`` ((from time, items/s), ...). Producer i starts ``i * stagger``
    seconds in."""
    loop = asyncio.get_running_loop()
    bus = LoopTimeBus()
    run = Loop(admissions=[[] for _ in range(producers)])

    async def record(event: FeedbackEvent) -> None:
        run.levels.append(event.level)

    bus.subscribe(record)
    queue: BoundedQueue[int] = BoundedQueue(
        capacity, coord_id="a", overflow_strategy="drop_oldest", bus=bus
    )
    controllers = [RateController(max_rate, bus=bus, clock=loop.time) for _ in range(producers)]
    for controller in controllers:
        await controller.start()
    end = loop.time() + duration

    async def produce_into_queue(i: int) -> None:
        await asyncio.sleep(i * stagger)
        while loop.time() < end:
            await controllers[i].acquire(chunk)
            await queue.put_many(range(chunk))
            run.admissions[i].append((loop.time(), chunk))
            run.peak = max(run.peak, queue.size)
            if i == 0:
                run.rates.append((loop.time(), controllers[0].rate))

    async def sink() -> None:
        while loop.time() < end:
            items = await queue.get_batch(batch, linger=0.01)
            now = loop.time()
            rate = [r for t, r in sink_rates if t <= now][-1]
            await asyncio.sleep(len(items) / rate)

    await asyncio.gather(sink(), *(produce_into_queue(i) for i in range(producers)))
    await bus.flush()
    run.dropped = queue.stats().dropped
    return run


def test_rate_settles_within_10_percent_of_a_halved_capacity_within_3_s() -> None:
    """After the sink halves, the rate is within 10 % of the new capacity 3 s later, stays so
    (5 s averages), and never drops below half of it."""
    halved_at, new_capacity = 10.0, 500.0
    run = run_virtual(
        closed_loop(1, 1000, [(0.0, 1000.0), (halved_at, new_capacity)], 30.0, max_rate=2000)
    )
    assert run.dropped == 0 and run.peak < 1000
    after = [rate for t, rate in run.rates if t >= halved_at]
    assert min(after) >= new_capacity / 2
    settled = [rate for t, rate in run.rates if halved_at + 3 <= t < halved_at + 3.1]
    assert settled and all(abs(r - new_capacity) <= 0.1 * new_capacity for r in settled)
    for start in range(int(halved_at) + 3, 26):
        sent = run.admitted(0, start, start + 5) / 5
        assert sent == pytest.approx(new_capacity, rel=0.1), f"{start}-{start + 5} s"


def test_four_controllers_share_one_queue_fairly_without_oscillating() -> None:
    """Four producers starting 0.5 s apart, each with its own controller, get within 20 % of
    each other, use >= 98 % of the sink, and the level changes less than once every 2 s."""
    capacity, duration = 10_000.0, 20.0
    run = run_virtual(
        closed_loop(
            4, 10_000, [(0.0, capacity)], duration, max_rate=capacity / 2, chunk=25, stagger=0.5
        )
    )
    assert run.dropped == 0 and run.peak < 10_000
    sent = [run.admitted(i, 3.0, duration) for i in range(4)]
    assert max(sent) <= 1.2 * min(sent)
    assert sum(sent) / (duration - 3.0) >= 0.98 * capacity
    changes = sum(1 for a, b in zip([OK, *run.levels], run.levels, strict=False) if a is not b)
    assert changes / duration < 0.5


def test_a_producer_starting_5_s_after_another_gets_an_equal_share() -> None:
    """The first producer has the whole sink when the second starts 5 s later at full speed;
    from 5 s after that the two get within 20 % of each other (proportional shares alone
    kept 43 % / 57 %), the sink stays used and nothing is dropped."""
    capacity, duration = 10_000.0, 20.0
    run = run_virtual(
        closed_loop(
            2, 10_000, [(0.0, capacity)], duration, max_rate=capacity, chunk=50, stagger=5.0
        )
    )
    assert run.dropped == 0 and run.peak < 10_000
    first, late = run.admitted(0, 10.0, duration), run.admitted(1, 10.0, duration)
    assert max(first, late) <= 1.2 * min(first, late), (first, late)
    assert (first + late) / (duration - 10.0) >= 0.98 * capacity


def test_the_pull_toward_an_equal_split_needs_a_whole_number_of_producers() -> None:
    """A share moves FAIR_PULL of the way to drain / n only when arrivals / own rate is
    close to a whole n >= 2; alone, or far from a whole number, it is left as it is."""
    assert _toward_equal(4_000.0, 2.2, 10_000.0) == pytest.approx(4_000 + FAIR_PULL * 1_000)
    assert _toward_equal(6_000.0, 1.8, 10_000.0) == pytest.approx(6_000 - FAIR_PULL * 1_000)
    assert _toward_equal(10_000.0, 1.0, 10_000.0) == 10_000.0  # alone: drain / 1 is the share
    assert _toward_equal(8_333.0, 1.2, 10_000.0) == 8_333.0  # another sends 1/5 of this rate
    assert _toward_equal(4_000.0, 2.5, 10_000.0) == 4_000.0  # 2.5 producers: no equal split
    assert _toward_equal(4_000.0, 2.2, None) == 4_000.0  # no measured drain


def _small(clock: FakeClock, level: BackpressureLevel, seq: int, size: float) -> FeedbackEvent:
    """An event of a 1,000-item queue (low 500, high 800, recover 450)."""
    reason = "queue_recovered" if level is OK else None
    return FeedbackEvent("a", round(size), 1000, level, reason, ts=clock.now, seq=seq)


async def _lift_then_hard(clock: FakeClock, hard_after: float) -> RateController:
    """Four like producers feed a queue draining 1,600/s; this controller sees SOFT, an OK a
    take caused, a SOFT that starts a lift into the band (its allowance above its share),
    then HARD ``hard_after`` seconds later at the size the four of them carried it to."""
    rc = make(clock, max_rate=500)
    size = 510.0
    await rc(_small(clock, SOFT, 1, size))  # fallback: 400/s, four of them: no growth
    await produce(rc, clock, 1.0)
    await rc(_small(clock, OK, 2, 440))  # one take from 510: share measured, about 470
    size = 440 + 4 * await produce(rc, clock, 0.2) - 1600 * 0.2
    await rc(_small(clock, SOFT, 3, size))  # the lift: 500/s each, ~30/s above the share
    assert 0 < rc.rate - (rc.drain_estimate("a") or 0) < 100
    start = clock.now
    admitted = await produce(rc, clock, hard_after)
    size += 4 * admitted - 1600 * (clock.now - start)
    await rc(_small(clock, HARD, 4, size))
    return rc


async def test_a_lift_that_overshoots_to_hard_learns_that_others_lifted_too(
    clock: FakeClock,
) -> None:
    """HARD arriving while a planned lift into the SOFT band is still under way: the queue
    rose many times faster than this producer's own excess, so others lifted on the same
    event. The controller counts them (its share of the growth shrinks) before the slope of
    two intervals could tell it, and its next lift is smaller."""
    rc = await _lift_then_hard(clock, 0.5)
    learned = rc.drain_estimate("a")
    # with one producer assumed the queue's growth exceeds this one's whole admitted rate
    # (no estimate); counting the others leaves most of its own rate as its share
    assert learned is not None and 300 < learned <= 500


async def _measured_lift(clock: FakeClock) -> tuple[RateController, float]:
    """One producer, a 1,000-item queue draining 1,200/s: HARD, an OK 2 s later (the
    estimate), then SOFT 1 s after that: a lift into the SOFT band. Returns the SOFT's size."""
    rc = make(clock, max_rate=2000)
    await rc(_small(clock, HARD, 1, 800))  # fallback: 1,000/s
    admitted = await produce(rc, clock, 2.0)
    size = 800 + admitted - 1200 * 2.0
    await rc(_small(clock, OK, 2, size))
    start = clock.now
    admitted = await produce(rc, clock, 1.0)
    size += admitted - 1200 * (clock.now - start)
    await rc(_small(clock, SOFT, 3, size))
    return rc, size


async def test_an_ok_right_after_soft_while_lifting_keeps_the_lift(clock: FakeClock) -> None:
    """An OK 0.1 s after the SOFT that started a lift is one worker's take crossing the whole
    recover band (a batch wider than the band), not the queue falling: the lift goes on."""
    rc, size = await _measured_lift(clock)
    lifting = rc.rate
    share = rc.drain_estimate("a")
    assert share is not None and lifting > share
    clock.now += 0.1
    await rc(_small(clock, OK, 4, size - 100))
    assert rc.rate == pytest.approx(lifting)
    clock.now += 2.0  # the planned hold at the share is off: the lift ends at the next SOFT
    assert rc.rate == pytest.approx(lifting)


async def test_after_a_take_crossed_the_band_lifts_are_quicker(clock: FakeClock) -> None:
    """Once a take has crossed the whole recover band, a lift into the SOFT band is planned
    over WIDE_MOVE_SEC, not MOVE_SEC: a slow lift would hover where each take flips the
    level."""
    narrow, size = await _measured_lift(clock)
    share = narrow.drain_estimate("a")
    assert share is not None
    slow = narrow.rate - share
    clock.now += 0.1
    await narrow(_small(clock, OK, 4, size - 100))  # the flap
    clock.now += 0.05
    await narrow(_small(clock, SOFT, 5, size))  # the same lift again
    assert narrow.rate - share > 2 * slow


# -- the sawtooth: sizes caught before or after a take ---------------------------------------


def _big(clock: FakeClock, level: BackpressureLevel, seq: int, size: float) -> FeedbackEvent:
    """An event of a 100,000-item queue; an OK is one a take caused (``queue_recovered``)."""
    reason = "queue_recovered" if level is OK else None
    return FeedbackEvent("a", round(size), 100_000, level, reason, ts=clock.now, seq=seq)


async def paced(rc: RateController, clock: FakeClock, seconds: float, rate: float = 800) -> int:
    """A producer sending ``rate`` items/s (below its allowance) for ``seconds``."""
    end, items = clock.now + seconds, 0
    while clock.now < end - 1e-9:
        clock.now += 10 / rate
        await rc.acquire(10)
        items += 10
    return items


async def test_a_run_of_agreeing_intervals_is_measured_as_one(clock: FakeClock) -> None:
    """Sizes caught 50 above, at, 50 below and 50 above the queue's average level, 1 s apart:
    each interval is off by up to 100/s, but over the run only the two ends count and they
    cancel (the last two intervals alone would say 2 % low)."""
    rc = make(clock, max_rate=2000)
    drain, level = 1200.0, 20_000.0
    for seq, (kind, error) in enumerate([(SOFT, 50), (HARD, 0), (OK, -50), (SOFT, 50)], 1):
        if seq > 1:
            start = clock.now
            level += await paced(rc, clock, 1.0) - drain * (clock.now - start)
        await rc(at(clock, kind, seq, level + error))
    assert rc.drain_estimate("a") == pytest.approx(drain, rel=0.01)


async def test_an_event_too_soon_to_measure_extends_the_interval(clock: FakeClock) -> None:
    """An event 0.05 s after the last measured one is too short an interval by itself, but it
    moves the estimate's end to its own size: a HARD caught 50 above the average level, then
    an OK caught at it, measure the drain exactly (the HARD alone: 4 % low)."""
    rc = make(clock, max_rate=2000)
    drain, level = 1200.0, 20_000.0
    await rc(at(clock, SOFT, 1, level))
    for seq, (kind, seconds, error) in enumerate([(HARD, 1.0, 50), (OK, 0.05, 0)], 2):
        start = clock.now
        level += await paced(rc, clock, seconds) - drain * (clock.now - start)
        await rc(at(clock, kind, seq, level + error))
    assert rc.drain_estimate("a") == pytest.approx(drain, rel=0.01)


async def test_after_a_flap_an_ok_after_a_take_counts_half_a_take_higher(
    clock: FakeClock,
) -> None:
    """A SOFT caught 50 above the average level and an OK a take of 100 later (a flap) show
    the take; the OK that a take caused sits at the sawtooth's trough, so the next interval
    starts from half a take above its size and measures the new drain exactly (from the OK's
    own size: 4 % low)."""
    rc = make(clock, max_rate=2000)
    level = 20_000.0
    await rc(_big(clock, HARD, 1, level))
    start = clock.now
    level += await paced(rc, clock, 1.0) - 2000 * (clock.now - start)
    await rc(_big(clock, OK, 2, level - 50))  # a take's trough
    await rc(_big(clock, SOFT, 3, level + 50))  # the top, just before the next take
    await rc(_big(clock, OK, 4, level - 50))  # the flap: a take of 100
    start = clock.now
    drain = 1200.0  # the sink slowed: the interval before no longer agrees
    level += await paced(rc, clock, 1.0) - drain * (clock.now - start)
    await rc(_big(clock, HARD, 5, level))
    assert rc.drain_estimate("a") == pytest.approx(drain, rel=0.01)


async def test_a_lift_that_overshoots_recounts_producers_a_slope_counted_too_low(
    clock: FakeClock,
) -> None:
    """Four producers in step; the sink slows between the first two intervals, so their slope
    counts 1.2 producers. A planned lift into the SOFT band then reaches HARD many times
    faster than 1.2 producers' excess explains: the count is redone, and the share of the
    drain comes near a quarter (with 1.2 producers it would be under a third of it)."""
    rc = make(clock, max_rate=2000)
    level = 20_000.0

    async def four_send(seconds: float, drain: float, pace: float | None = None) -> None:
        nonlocal level
        start = clock.now
        if pace is None:
            sent = await produce(rc, clock, seconds)
        else:
            sent = await paced(rc, clock, seconds, pace)
        level += 4 * sent - drain * (clock.now - start)

    await rc(at(clock, SOFT, 1, level))
    await four_send(1.0, 6000)
    await rc(at(clock, HARD, 2, level))
    await four_send(1.0, 3200)  # the sink slowed: the slope of the two says 1.2 producers
    await rc(at(clock, OK, 3, level))
    await four_send(1.0, 3200, pace=650)  # near the last interval's rate: no new slope
    await rc(at(clock, SOFT, 4, level))  # a lift into the SOFT band, planned for 1.2
    assert rc.rate > (rc.drain_estimate("a") or 0)
    await four_send(0.3, 3200)  # all four lift
    await rc(at(clock, HARD, 5, level))
    share = rc.drain_estimate("a")
    assert share is not None and 0.5 * 800 < share < 1.5 * 800


async def test_a_producer_waiting_for_its_next_acquire_is_using_its_allowance(
    clock: FakeClock,
) -> None:
    """Admissions come in acquire() steps: at 50/s in steps of 10, an event 0.15 s into the
    wait for the third step finds 20 of 27.5 items admitted. That producer uses its
    allowance (one step is under way), so a fast drain raises it."""
    rc = make(clock, max_rate=100)
    await rc(at(clock, HARD, 1, 8000))  # fallback: 50/s
    admitted = await produce(rc, clock, 0.4)
    clock.now += 0.15  # the third acquire(10) is waiting
    await rc(at(clock, OK, 2, 8000 + admitted - 2000 * clock.now))
    assert rc.rate > 50


# -- rates the queue measured -----------------------------------------------------------------


def _rated(
    clock: FakeClock,
    level: BackpressureLevel,
    seq: int,
    size: float,
    drain: float,
    arrival: float,
    reason: str | None = None,
) -> FeedbackEvent:
    """An event of a 100,000-item queue (SOFT band 50,000-80,000) carrying measured rates."""
    return FeedbackEvent("a", round(size), 100_000, level, reason, clock.now, seq, drain, arrival)


@pytest.mark.parametrize(("own", "arrival"), [(400.0, 400.0), (250.0, 1_000.0)])
async def test_a_share_from_measured_rates_is_the_drain_times_own_fraction_of_arrivals(
    clock: FakeClock, own: float, arrival: float
) -> None:
    """A first SOFT with rates: the share is drain * own / arrival (one producer, or one of
    four), with no producers to count and no earlier event; the rate moves from it."""
    rc = make(clock, max_rate=2_000)
    await paced(rc, clock, 1.0, rate=own)
    await rc(_rated(clock, SOFT, 1, 50_001, drain=800, arrival=arrival))
    share = 800 * own / arrival
    assert rc.drain_estimate("a") == pytest.approx(share, rel=0.02)
    assert share < rc.rate <= 1.5 * share + 1e-6  # a lift to the band's middle


async def test_measured_reports_while_hard_re_aim_but_never_cut_by_hard_factor(
    clock: FakeClock,
) -> None:
    """HARD reports (reason "measured") a second apart, past min_decrease_interval: the rate
    re-aims at the measured share less REPORT_MARGIN instead of halving each time, and a
    report after the sink slowed re-aims lower."""
    rc = make(clock, max_rate=2_000)
    await paced(rc, clock, 1.0, rate=400)
    await rc(_rated(clock, HARD, 1, 80_000, drain=1_200, arrival=1_600))  # share 300
    assert rc.rate == pytest.approx(150, rel=0.02)  # the HARD itself: margin up to half
    for seq in range(2, 6):  # one of four like producers, each sending its allowance
        sending = rc.rate
        await paced(rc, clock, 1.0, rate=sending)
        await rc(_rated(clock, HARD, seq, 60_000, 1_200, 4 * sending, reason="measured"))
        assert rc.rate == pytest.approx(300 * (1 - REPORT_MARGIN), rel=0.02)
    sending = rc.rate
    await paced(rc, clock, 1.0, rate=sending)
    await rc(_rated(clock, HARD, 6, 60_000, 600, 4 * sending, reason="measured"))
    assert rc.rate == pytest.approx(150 * (1 - REPORT_MARGIN), rel=0.02)


async def test_a_measured_report_never_raises_a_producer_not_using_its_allowance(
    clock: FakeClock,
) -> None:
    """A SOFT report saying the sink drains far more than this producer sends: no raise while
    it sends 100/s of its allowance."""
    rc = make(clock, max_rate=2_000)
    await paced(rc, clock, 1.0, rate=400)
    await rc(_rated(clock, SOFT, 1, 65_000, drain=1_200, arrival=1_600))
    allowed = rc.rate
    await paced(rc, clock, 1.0, rate=100)
    await rc(_rated(clock, SOFT, 2, 65_000, 4_000, 100, reason="measured"))
    assert rc.rate == pytest.approx(allowed)


async def test_a_report_of_another_level_is_the_transition_it_stands_for(
    clock: FakeClock,
) -> None:
    """A full mailbox may coalesce a SOFT away and deliver the report after it: the controller
    then treats the report as the SOFT (a cut to the measured share)."""
    rc = make(clock, max_rate=2_000)
    await paced(rc, clock, 1.0, rate=1_000)
    await rc(_rated(clock, SOFT, 7, 65_000, 500, 1_000, reason="measured"))
    assert rc.rate == pytest.approx(500, rel=0.02)


async def test_without_rates_a_same_level_hard_still_cuts_by_hard_factor(
    clock: FakeClock,
) -> None:
    """Lifecycle events keep their meaning: HARD circuit_open while HARD halves the rate."""
    rc = make(clock, max_rate=2_000)
    await rc(at(clock, HARD, 1, 80_000))
    clock.now += 1.0
    before = rc.rate
    await rc(FeedbackEvent("a", 80_000, 100_000, HARD, "circuit_open", clock.now, 2))
    assert rc.rate == pytest.approx(before * 0.5)
