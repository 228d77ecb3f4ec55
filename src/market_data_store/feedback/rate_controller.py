"""Producer-side rate control: turns a coordinator's feedback events into an allowed rate.

``RateController`` subscribes to a ``FeedbackBus`` and keeps one allowed rate (items per
second) per coordinator it watches. It uses what the events carry, not only the level:

- Measured rates. An event that carries the queue's ``drain_rate`` and ``arrival_rate``
  (a ``BoundedQueue`` measures them at its workers' takes, over about half a second) gives
  this producer's share of the drain directly: ``drain_rate * own / arrival_rate``, ``own``
  being its own admitted rate over about the same window (``OWN_WINDOW_SEC``). No producers
  need counting (``arrival_rate / own`` is how many producers' worth the queue gets), and a
  take wider than the recover band does not make it noisy. The share is used wherever the
  estimate below would be (SOFT, HARD, OK after pressure); without rates the estimate is
  used. While SOFT or HARD the queue reports fresh rates about once a second (same level,
  reason ``"measured"``): SOFT re-plans the move to the band's middle and the hold (its
  share pulled ``FAIR_PULL`` of the way to an equal split when ``arrival / own`` is close to
  a whole number of producers: proportional shares alone keep the ratio producers had when
  pressure began, such as a producer that started late at full speed), HARD
  re-aims at draining within ``DRAIN_SEC`` (so a HARD cut on rates measured before the sink
  slowed down is corrected), never raising a producer that does not use its allowance. A
  report is never a reason to cut by ``hard_factor`` and does not count as a level change.
- Estimate (without measured rates). Between two events of a coordinator (at least
  ``MIN_SAMPLE_SEC`` apart) it knows how much the queue grew (``queue_size``, ``ts``) and
  how many items its own producer was admitted, so
  ``drain = admitted rate - d(queue_size)/dt`` (the idea behind rate-based congestion
  control such as TCP Vegas or BBR). An event too soon after the last measured one extends
  the latest interval to itself instead. An event's ``queue_size`` is caught mid-sawtooth (a
  worker takes a whole batch at once), so one interval is off by up to a take over its span:
  successive intervals whose estimates agree (within ``CONSISTENT_FRACTION``) are measured
  as one, whose error is a take over the whole span; one that disagrees says the sink
  changed and starts afresh. An OK ending SOFT (``queue_recovered``) is sent right after a
  take, at the sawtooth's trough; once a flap (below) has shown the take's width, such a
  size counts half a take higher. Several producers may share the coordinator and each
  controller sees only its own admissions: from two intervals in which its own rate differed
  by at least 25 % it learns how many producers' worth of traffic the queue gets (the slope
  of the queue's growth against its own rate, at least 1) and takes that share of the drain.
  Producers that start alike so stay alike, and their cuts add up to the excess, not to a
  multiple of it. A HARD that arrives while a planned lift into the SOFT band (below) is
  still under way says the same sooner: the queue rose ``growth / own excess`` times faster
  than this producer's lift explains, so at least that many lifted together; this also
  corrects a count the slope made too low (across a change of the sink, or before others
  joined).
- SOFT (the queue rose past ``low``): the rate becomes the share plus what moves the queue to
  the middle of the SOFT band within ``MOVE_SEC``, then the share itself: the queue holds
  where neither watermark is near, so the level stays put. OK after pressure: the same move,
  then the probe (below) takes over, so recovery after the sink speeds up is immediate.
  An OK within ``FLAP_SEC`` of a SOFT is one worker's take crossing the whole recover band
  (a batch wider than the band): a lift under way goes on (no re-plan, no hold), and from
  then on lifts take ``WIDE_MOVE_SEC`` (up to ``WIDE_MOVE_FRACTION`` above the share), since
  a slow lift hovers where every take flips the level. The SOFT's size, minus the OK's, plus
  what came in between is the take's width (the narrowest such flap counts: two takes may
  fall between).
- HARD: the share minus a margin that drains the queue within ``DRAIN_SEC`` (never below half
  the share), and at least ``hard_factor`` and ``HARD_MARGIN`` below the current rate: an
  estimate averages over its interval and lags a sudden drop of the sink.
- Without rates or an estimate (the first event, an interval too short, a lifecycle event such as
  ``circuit_open``) it falls back to the plan's AIMD factors: SOFT multiplies the rate by
  ``soft_factor`` (once per pressure episode: only after an OK that lasted
  ``min_decrease_interval``), HARD by ``hard_factor`` (at most once per
  ``min_decrease_interval``). Never below ``min_rate``, never above ``max_rate``.
- While OK the rate probes upward, only for the time the producer is actually held back (a
  caller waiting in ``acquire()``), starting at ``increase_per_sec`` and doubling every
  ``PROBE_DOUBLING_SEC`` held back in the same OK spell: gentle at first, fast when the sink
  has grown a lot; the next SOFT measures again and takes the overshoot back. An estimate
  never raises the rate of a producer that admitted less than ``USED_FRACTION`` of its
  allowance, counting one more ``acquire()`` (it may be waiting as the event arrives): an
  idle or slower producer earns no headroom.
- An event whose ``seq`` is older than the last one seen for its coordinator is stale and
  ignored. An event with reason ``"stopped"`` forgets the coordinator: it no longer limits the
  rate, and a restarted coordinator with the same id may begin its ``seq`` again.

With several coordinators watched, ``rate`` is the minimum of their rates: the producer goes
no faster than its most loaded destination allows (each estimate assumes the producer's items
go to that coordinator). ``acquire(n)`` is a token bucket at ``rate`` that starts empty and
holds at most ``BURST_SEC`` seconds' worth of tokens.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

from market_data_store._context import AsyncStartStop
from market_data_store._validation import check_range
from market_data_store.errors import ConfigError
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import MEASURED_REASON, BackpressureLevel, FeedbackEvent

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD

DEFAULT_MIN_RATE_FRACTION = 0.01
DEFAULT_INCREASE_FRACTION = 0.015
"""The probe's first step, per second, as a fraction of ``max_rate``."""
PROBE_DOUBLING_SEC = 0.5
"""The probe's step doubles for every this many seconds held back in one OK spell."""
DRAIN_SEC = 2.0
"""On HARD the margin below the estimated drain aims to empty the queue in this long."""
HARD_MARGIN = 0.05
"""A HARD cut with an estimate takes at least this much more than ``hard_factor``: the
estimate may lag, and the queue must drain, not just stop growing."""
MOVE_SEC = 1.0
"""After a measurement the queue is moved to the middle of the SOFT band in about this long,
at most ``MOVE_FRACTION`` of the estimate above or below it."""
MOVE_FRACTION = 0.5
OVERSHOOT_MIN_RATIO = 1.5
"""A lift overshooting to HARD this many times faster than planned (for the producers counted
so far) counts the producers."""
FLAP_SEC = 0.25
"""An OK this soon after a SOFT is one worker's take carrying the queue across the whole
recover band: the batch is wider than the band (the coordinator's queue is "wide")."""
WIDE_MOVE_SEC = 0.25
"""With a wide queue a lift into the SOFT band takes about this long (not ``MOVE_SEC``) ..."""
WIDE_MOVE_FRACTION = 0.75
"""... at most this fraction of the estimate above it: a slow lift hovers where a take
flips the level each time."""
_PROBE_GROWTH = math.log(2) / PROBE_DOUBLING_SEC  # the probe's exponential rate, 1/s
USED_FRACTION = 0.9
"""A producer admitted (counting one more acquire()) less than this fraction of its allowance
does not use it: no raise."""
MIN_SAMPLE_SEC = 0.5
"""An interval shorter than this is not measured by itself (a worker taking one batch would
swamp it): it extends the latest interval, or, before there is one, the next event is
measured from the same earlier one."""
MAX_PRODUCERS = 64.0
"""Bound of the estimated number of producers' worth of traffic the queue receives."""
UNMEASURED_RAISE = 1.25
"""Until the share of traffic is measured, an estimate raises the rate at most this much."""
HOLD_BIAS = 0.01
"""The hold runs this much below the estimate: an estimate a little high would carry the
queue up to HARD (three level changes and a deep cut), one a little low only down to OK."""
CONSISTENT_FRACTION = 0.2
"""An interval whose estimate differs from the run of intervals before it by less than this
joins the run (the sink is taken as unchanged); otherwise it starts a new one."""
REPORT_MARGIN = 0.05
"""A HARD report re-aims at most this fraction below the measured share: fresh rates do not
lag the sink as an estimate does, so the rate stays near the sink's capacity (well within
10 %) while the queue drains, slowly, back to OK."""
FAIR_PULL = 0.1
"""Each SOFT report moves a share this fraction of the way to an equal split of the drain
(see ``_toward_equal``): proportional shares alone keep whatever ratio producers had when
pressure began, e.g. a producer that started late at full speed. Measured (closed_loop_sim
with --jitter 0.3): at 0.25 noisy counts disagree enough that four producers' pulls fill
the queue; at 0.1 they do not, and a late starter is within 5 % of even in 5 s."""
FAIR_TOLERANCE = 0.3
"""The equal split is only assumed when ``arrival / own`` is this close to a whole number of
producers (otherwise the others are not all held back at equal rates)."""
OWN_WINDOW_SEC = 0.5
"""The producer's own admitted rate, set against an event's measured rates, spans about this
long (as the queue's rates do, ``coordinator._rate_meter.WINDOW_SEC``)..."""
OWN_SAMPLE_SEC = 0.1
"""... sampled at most this often ..."""
OWN_MIN_SPAN_SEC = 0.25
"""... and is unknown until it spans this long."""
_SLOPE_MIN_CHANGE = 0.25  # own rate must change by 25 % between intervals to measure a slope

BURST_SEC = 0.1
"""The bucket holds at most this many seconds of tokens at the current rate (at least one)."""

_EPSILON = 1e-9  # tokens: float rounding must not cost an extra sleep
_MEASURED_REASONS = (None, "queue_recovered")  # a level change the queue's size caused


@dataclass(slots=True, frozen=True)
class _Sample:
    """One event as this controller received it."""

    ts: float
    queue_size: int
    received_at: float
    admitted: float  # the producer's admitted items so far
    allowed: float  # the items its allowance would have admitted so far
    after_take: bool = False  # an OK sent right after a worker's take: the sawtooth's trough


@dataclass(slots=True, frozen=True)
class _Interval:
    """What happened between two events: own admitted rate and the queue's growth, items/s."""

    admitted_rate: float
    growth: float
    used: bool  # the producer admitted most of what its allowance let through
    span: float  # seconds

    def share(self, producers: float) -> float:
        """This producer's share of the drain, items/s."""
        return self.admitted_rate - self.growth / producers

    def then(self, later: _Interval) -> _Interval:
        """This interval followed by ``later``, as one (rates weighted by span)."""
        span = self.span + later.span
        return _Interval(
            admitted_rate=(self.admitted_rate * self.span + later.admitted_rate * later.span)
            / span,
            growth=(self.growth * self.span + later.growth * later.span) / span,
            used=later.used,
            span=span,
        )


@dataclass(slots=True)
class _CoordinatorState:
    """What the controller knows about one coordinator."""

    rate: float
    level: BackpressureLevel = OK
    seq: int = 0
    ok_since: float = -math.inf  # when the level last became OK
    hard_cut_at: float = -math.inf
    last: _Sample | None = None
    interval: _Interval | None = None
    history: _Interval | None = None  # the agreeing intervals before ``interval``, as one
    producers: float = 1.0  # producers' worth of traffic, as seen from this one
    producers_measured: bool = False
    probe_sec: float = 0.0  # seconds held back in the current OK spell
    hold_rate: float | None = None  # the rate to return to once a planned move is done
    move_until: float = math.inf
    move_from: tuple[float, int, float] | None = None  # (time, queue size, own excess rate)
    moving_up: bool = False  # the last planned move lifts the queue
    changed_at: float = -math.inf  # when the level last changed
    wide: bool = False  # a take has crossed the whole recover band
    take: float = 0.0  # a worker's take, items, as the narrowest flap showed it (0: unknown)
    soft_seen: tuple[int, float] | None = None  # (queue size, own admitted) at the last SOFT
    measured_share: float | None = None  # from the rates the last measured event carried
    watermarks: dict[BackpressureLevel, int] = field(default_factory=dict)  # sizes seen


def _check_number(
    name: str,
    value: float,
    *,
    lo: float,
    hi: float = math.inf,
    lo_open: bool = True,
    hi_open: bool = False,
) -> float:
    check_range(name, value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return float(value)


class RateController(AsyncStartStop):
    """A feedback subscriber that paces a producer: ``await acquire(n)`` before submitting.

    Rates are items per second.

    Args:
        max_rate: the ceiling, and the rate before any event; 0 < max_rate < inf.
        min_rate: the floor, default 1 % of max_rate; 0 < min_rate <= max_rate.
        coordinator_ids: the coordinators to obey, a non-empty collection of str ids;
            default (None) every one on the bus.
        soft_factor: fallback cut on SOFT when no estimate is possible; 0 < f <= 1
            (default 0.8).
        hard_factor: fallback cut on HARD, and the least a HARD cut takes;
            0 < hard_factor <= soft_factor (default 0.5).
        increase_per_sec: the probe's first step per second while OK and held back,
            default 1.5 % of max_rate; it doubles every ``PROBE_DOUBLING_SEC`` held back;
            0 < value < inf.
        min_decrease_interval: seconds; a fallback SOFT cut needs an OK this long before it,
            fallback HARD cuts are this far apart; 0 <= value < inf (default 1.0).
        bus: the bus ``start()`` subscribes to, default ``feedback_bus()``.
        clock: monotonic seconds, default ``time.monotonic`` (tests pass a fake clock).
        sleep: how ``acquire()`` waits, default ``asyncio.sleep`` (tests pass a fake one).
    """

    def __init__(
        self,
        max_rate: float,
        *,
        min_rate: float | None = None,
        coordinator_ids: Iterable[str] | None = None,
        soft_factor: float = 0.8,
        hard_factor: float = 0.5,
        increase_per_sec: float | None = None,
        min_decrease_interval: float = 1.0,
        bus: FeedbackBus | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._max_rate = _check_number("max_rate", max_rate, lo=0, hi_open=True)
        self._min_rate = _check_number(
            "min_rate",
            max_rate * DEFAULT_MIN_RATE_FRACTION if min_rate is None else min_rate,
            lo=0,
            hi=self._max_rate,
        )
        self._soft_factor = _check_number("soft_factor", soft_factor, lo=0, hi=1)
        self._hard_factor = _check_number("hard_factor", hard_factor, lo=0, hi=self._soft_factor)
        self._increase_per_sec = _check_number(
            "increase_per_sec",
            max_rate * DEFAULT_INCREASE_FRACTION if increase_per_sec is None else increase_per_sec,
            lo=0,
            hi_open=True,
        )
        self._min_interval = _check_number(
            "min_decrease_interval", min_decrease_interval, lo=0, lo_open=False, hi_open=True
        )
        self._watched = _check_ids(coordinator_ids)
        self._bus = bus if bus is not None else feedback_bus()
        self._clock = clock
        self._sleep = sleep
        self._states: dict[str, _CoordinatorState] = {}
        self._tokens = 0.0
        self._admitted = 0.0
        self._last_n = 0.0  # admissions come in acquire() steps: one may be under way
        self._allowed = 0.0
        self._own_samples: deque[tuple[float, float]] = deque()  # (time, admitted so far)
        self._updated_at = clock()
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """The allowed rate now, items per second: the minimum over the watched coordinators."""
        self._advance(self._clock())
        return self._effective_rate()

    def rate_for(self, coordinator_id: str) -> float:
        """The allowed rate for one coordinator (``max_rate`` if no event has been seen)."""
        self._advance(self._clock())
        state = self._states.get(coordinator_id)
        return self._max_rate if state is None else state.rate

    def drain_estimate(self, coordinator_id: str) -> float | None:
        """This producer's share of the coordinator's measured drain rate (items/s), if known:
        from the rates the last event carried, else estimated from the events' sizes."""
        state = self._states.get(coordinator_id)
        if state is not None and state.measured_share is not None:
            return state.measured_share
        if state is None or state.interval is None:
            return None
        interval = state.interval
        if state.history is not None and _agree(state.history, interval, state.producers):
            # each interval is off by up to a take (the sizes are caught mid-sawtooth); over
            # a run of intervals that agree only the first and last events' errors remain,
            # over the whole span. One that disagrees says the sink changed: it alone counts.
            interval = state.history.then(interval)
        share = interval.share(state.producers)
        return share if share > 0 else None

    async def acquire(self, n: float = 1) -> None:
        """Wait until ``n`` items may be submitted; ``n`` above the burst waits proportionally."""
        if isinstance(n, bool) or not 0 <= n < math.inf:
            raise ValueError(f"n must satisfy 0 <= n < inf, got {n!r}")
        async with self._lock:  # first come, first served
            self._advance(self._clock())
            self._tokens -= n  # into debt if need be, so any n works
            try:
                while self._tokens < -_EPSILON:
                    await self._sleep(-self._tokens / self._effective_rate())
                    self._advance(self._clock())
            except BaseException:  # cancelled: hand back what this caller took
                self._tokens += n
                raise
            self._admitted += n
            self._last_n = n
            self._sample_admitted(self._updated_at)

    def _sample_admitted(self, now: float) -> None:
        samples = self._own_samples
        sample = (now, self._admitted)
        if len(samples) >= 2 and now - samples[-2][0] < OWN_SAMPLE_SEC:
            samples[-1] = sample
        else:
            samples.append(sample)
        while len(samples) >= 2 and samples[1][0] <= now - OWN_WINDOW_SEC:
            samples.popleft()

    def _own_rate(self, now: float) -> float | None:
        """Items/s this producer was admitted over about the last ``OWN_WINDOW_SEC``, up to
        ``now``. The window starts at an admission, so it counts about half an ``acquire()``
        step short: a share from it errs low, to the side where the queue drains."""
        if not self._own_samples:
            return None
        start, admitted = self._own_samples[0]
        span = now - start
        if span < OWN_MIN_SPAN_SEC:
            return None
        return (self._admitted - admitted) / span

    def _measured_share(
        self, state: _CoordinatorState, event: FeedbackEvent, now: float
    ) -> float | None:
        """This producer's share of the drain the queue measured (None if the event carries
        no rates): its fraction of what arrived, of what was taken. That fraction also gives
        how many producers' worth of traffic the queue gets."""
        state.measured_share = None
        drain, arrival = event.drain_rate, event.arrival_rate
        if drain is None or arrival is None or arrival <= 0:
            return None
        own = self._own_rate(now)
        if own is None or own <= 0:
            return None
        fraction = min(1.0, own / arrival)
        state.producers = min(MAX_PRODUCERS, 1 / fraction)
        state.producers_measured = True
        share = drain * fraction
        if share > 0:
            state.measured_share = share
        return state.measured_share

    async def __call__(self, event: FeedbackEvent) -> None:
        """Apply one feedback event (the ``FeedbackSubscriber`` protocol)."""
        cid = event.coordinator_id
        if self._watched is not None and cid not in self._watched:
            return
        state = self._states.get(cid)
        if state is not None and event.seq < state.seq:
            return
        now = self._clock()
        self._advance(now)  # time so far is credited at the rate that held during it
        if event.reason == "stopped":
            self._states.pop(cid, None)
            return
        if state is None:
            state = self._states[cid] = _CoordinatorState(rate=self._max_rate)
        after_take = event.level is OK and event.reason == "queue_recovered"
        sample = _Sample(event.ts, event.queue_size, now, self._admitted, self._allowed, after_take)
        self._measure(state, sample)
        report = event.reason == MEASURED_REASON
        if report and event.level is state.level:  # fresh rates, the level unchanged
            state.seq = event.seq
            if event.level is not OK:
                self._remeasure(state, event, now)
            return
        # (a report of another level stands for a transition a full mailbox coalesced away)
        share = None
        if report or event.reason in _MEASURED_REASONS:
            share = self._measured_share(state, event, now)
            if share is None and not report:
                share = self.drain_estimate(cid)
        previous, state.level, state.seq = state.level, event.level, event.seq
        if event.level is previous:
            if event.level is HARD and now - state.hard_cut_at >= self._min_interval:
                state.hard_cut_at = now  # e.g. circuit_open while HARD: a new reason to cut
                self._set(state, state.rate * self._hard_factor)
            return
        if event.level is HARD and previous is SOFT and now < state.move_until:
            if event.drain_rate is None:  # measured rates count the producers already
                self._learn_from_overshoot(state, event, now)
        changed_at, state.changed_at = state.changed_at, now
        if (
            event.level is OK
            and previous is SOFT
            and event.reason == "queue_recovered"
            and now - changed_at < FLAP_SEC
        ):
            # one worker take carried the queue from above low to below recover: the batch
            # is wider than the band. While a move lifts the queue, keep it going.
            state.wide = True
            self._learn_take(state, event)
            if state.moving_up:
                state.ok_since, state.probe_sec = now, 0.0
                state.hold_rate, state.move_until = None, math.inf
                return
        state.hold_rate, state.move_until = None, math.inf
        if event.reason in _MEASURED_REASONS:
            state.watermarks[event.level] = event.queue_size
            if event.level is SOFT:
                state.soft_seen = (event.queue_size, self._admitted)
        if event.level is OK:
            state.ok_since, state.probe_sec = now, 0.0
            if share is not None:
                self._move(state, share, event, now)
        elif event.level is SOFT:
            if share is not None:
                self._move(state, share, event, now)
            elif now - state.ok_since >= self._min_interval:
                self._set(state, state.rate * self._soft_factor)
        else:
            state.hard_cut_at = now
            self._set(state, self._hard_rate(state, event, share))

    def _remeasure(self, state: _CoordinatorState, event: FeedbackEvent, now: float) -> None:
        """A ``measured`` report while SOFT or HARD: re-plan from the fresh share, as the
        level's own event did (SOFT: move to the band's middle, then hold; HARD: drain in
        ``DRAIN_SEC``), never raising a producer that does not use its allowance."""
        share = self._measured_share(state, event, now)
        if share is None:
            return
        state.hold_rate, state.move_until = None, math.inf
        if event.level is SOFT:
            self._move(state, _toward_equal(share, state.producers, event.drain_rate), event, now)
            return
        margin = min(REPORT_MARGIN * share, event.queue_size / state.producers / DRAIN_SEC)
        rate = share - margin
        own = self._own_rate(now)
        if rate > state.rate and (own is None or own < USED_FRACTION * state.rate):
            return
        self._set(state, rate)

    async def start(self) -> None:
        """Subscribe to the bus (idempotent)."""
        self._bus.subscribe(self)

    async def stop(self) -> None:
        """Unsubscribe from the bus (idempotent); the current rates are kept."""
        self._bus.unsubscribe(self)

    def _measure(self, state: _CoordinatorState, sample: _Sample) -> None:
        """Turn the time since the previous event into an interval, and learn from it."""
        if not math.isfinite(sample.ts):
            return
        last = state.last
        span = math.inf if last is None else sample.ts - last.ts
        if last is None or span < 0:  # the first event, or the coordinator's clock went back
            state.last = sample
            return
        received_span = sample.received_at - last.received_at
        if span <= 0 or received_span <= 0:
            return
        admitted = sample.admitted - last.admitted
        interval = _Interval(
            admitted_rate=admitted / received_span,
            growth=(_level(state, sample) - _level(state, last)) / span,
            used=admitted + self._last_n >= USED_FRACTION * (sample.allowed - last.allowed),
            span=span,
        )
        if span < MIN_SAMPLE_SEC:
            # too short to measure by itself (one take would swamp it): it extends the latest
            # interval, so the estimate ends on this event's size, or, before any interval,
            # the next one starts from the same earlier event
            if state.interval is not None:
                state.last = sample
                state.interval = replace(state.interval.then(interval), used=state.interval.used)
            return
        state.last = sample
        previous = state.interval
        state.interval = interval
        if previous is None:
            return
        history = state.history
        if history is not None and _agree(history, previous, state.producers):
            state.history = history.then(previous)
        else:
            state.history = previous
        own_change = interval.admitted_rate - previous.admitted_rate
        if abs(own_change) < _SLOPE_MIN_CHANGE * max(
            interval.admitted_rate, previous.admitted_rate
        ):
            return
        slope = (interval.growth - previous.growth) / own_change
        if slope >= 0.8:  # below that the sink itself changed meanwhile: nothing to learn
            state.producers = min(MAX_PRODUCERS, max(1.0, slope))
            state.producers_measured = True

    def _learn_take(self, state: _CoordinatorState, event: FeedbackEvent) -> None:
        """A flap: the queue fell from the SOFT's size to the OK's in one take (or a few),
        while what the producers admitted came in."""
        if state.soft_seen is None:
            return
        size, admitted = state.soft_seen
        take = size - event.queue_size + (self._admitted - admitted) * state.producers
        if take > 0:
            state.take = take if state.take == 0 else min(state.take, take)

    def _learn_from_overshoot(
        self, state: _CoordinatorState, event: FeedbackEvent, now: float
    ) -> None:
        """A planned lift into the SOFT band reached HARD before it was due to end: the queue
        rose faster than this producer's own excess explains. Others lifted on the same
        event; the ratio is how many producers' worth of traffic the queue receives. It
        overrides a count the slope made only when it is ``OVERSHOOT_MIN_RATIO`` times that
        count: a slope across a change of the sink, or before others joined, can be low."""
        if state.move_from is None:
            return
        started, size, excess = state.move_from
        if excess <= 0 or now <= started:
            return
        growth = (event.queue_size - size) / (now - started)
        ratio = growth / excess
        if ratio >= OVERSHOOT_MIN_RATIO * state.producers:
            state.producers = min(MAX_PRODUCERS, ratio)
            state.producers_measured = True

    def _hard_rate(
        self, state: _CoordinatorState, event: FeedbackEvent, share: float | None
    ) -> float:
        """HARD: drain the queue. An estimate averages over the interval and lags a sudden
        drop of the sink, so the cut takes at least ``hard_factor`` and a margin below it."""
        rate = state.rate * self._hard_factor
        if share is not None:
            margin = min(0.5 * share, event.queue_size / state.producers / DRAIN_SEC)
            return min(rate * (1 - HARD_MARGIN), share - margin)
        interval = state.interval
        if interval is not None and interval.admitted_rate <= interval.growth:
            # the queue grows faster than this producer sends: others send too, and all of
            # them must cut for the queue to drain
            return rate * self._hard_factor
        return rate

    def _move(
        self, state: _CoordinatorState, share: float, event: FeedbackEvent, now: float
    ) -> None:
        """Run at ``share`` plus what moves the queue to the middle of the SOFT band in
        ``MOVE_SEC``, then hold ``share``: the queue then sits as far from both of the
        watermarks where the level would change again as it can."""
        low = state.watermarks.get(SOFT, int(event.capacity * 0.5))
        high = state.watermarks.get(HARD, int(event.capacity * 0.8))
        target = (low + high) / 2
        move_sec, fraction = (
            (WIDE_MOVE_SEC, WIDE_MOVE_FRACTION) if state.wide else (MOVE_SEC, MOVE_FRACTION)
        )
        step = (target - event.queue_size) / state.producers / move_sec
        step = max(-fraction * share, min(fraction * share, step))
        rate = share + step
        interval = state.interval
        if interval is not None and rate > state.rate:
            if not interval.used:
                rate = state.rate  # the producer does not use its allowance: no raise
            elif not state.producers_measured:
                # others may be sending too, and raising their rates on the same event
                rate = min(rate, UNMEASURED_RAISE * max(state.rate, interval.admitted_rate))
        self._set(state, rate)
        state.moving_up = state.rate > share
        if step and state.level is not OK:  # in OK the probe takes over from here
            state.hold_rate = share * (1 - HOLD_BIAS)
            state.move_from = (now, event.queue_size, state.rate - share)
            seconds = (target - event.queue_size) / state.producers / step
            state.move_until = now + seconds

    def _set(self, state: _CoordinatorState, rate: float) -> None:
        state.rate = min(self._max_rate, max(self._min_rate, rate))

    def _effective_rate(self) -> float:
        return min((s.rate for s in self._states.values()), default=self._max_rate)

    def _advance(self, now: float) -> None:
        """Refill the bucket up to ``now`` and grow OK coordinators for the time held back."""
        elapsed = now - self._updated_at
        if elapsed <= 0:
            return
        self._updated_at = now
        for state in self._states.values():
            if now >= state.move_until and state.hold_rate is not None:
                self._set(state, state.hold_rate)
                state.hold_rate, state.move_until, state.probe_sec = None, math.inf, 0.0
        rate = self._effective_rate()
        self._allowed += elapsed * rate
        if self._tokens < 0:  # a caller is waiting: the allowance is what limits the producer
            self._grow(min(elapsed, -self._tokens / rate))
        self._tokens = min(self._tokens + elapsed * rate, max(1.0, rate * BURST_SEC))

    def _grow(self, seconds: float) -> None:
        for state in self._states.values():
            if state.level is OK and state.rate < self._max_rate:
                # the integral of increase_per_sec * 2 ** (t / PROBE_DOUBLING_SEC) over the step
                k = _PROBE_GROWTH
                t0, state.probe_sec = state.probe_sec, state.probe_sec + seconds
                step = self._increase_per_sec * (math.exp(k * state.probe_sec) - math.exp(k * t0))
                self._set(state, state.rate + step / k)


def _level(state: _CoordinatorState, sample: _Sample) -> float:
    """The queue's average level around an event: right after a take it is half a take
    above the size the event caught (a take is known once a flap has shown it)."""
    return sample.queue_size + state.take / 2 if sample.after_take else sample.queue_size


def _agree(older: _Interval, newer: _Interval, producers: float) -> bool:
    """Whether two intervals estimate the same drain, within ``CONSISTENT_FRACTION``."""
    share = newer.share(producers)
    return share > 0 and abs(older.share(producers) - share) <= CONSISTENT_FRACTION * share


def _toward_equal(share: float, producers: float, drain: float | None) -> float:
    """``share`` moved ``FAIR_PULL`` of the way to ``drain / n`` when ``producers`` (arrivals
    over this producer's own rate) is within ``FAIR_TOLERANCE`` of a whole ``n >= 2``.

    Producers that see the same drain and are as many as they count agree on ``drain / n``,
    so the pulls add up to nothing and only the differences between them shrink (by
    ``FAIR_PULL`` a report). Alone, or with producers already equal, the share is unchanged.
    A count near 1 with others present (1.2: someone sends a fifth of this producer's rate)
    is no equal split: pulling toward the whole drain would take it from them.
    """
    n = round(producers)
    if drain is None or n < 2 or abs(producers - n) > FAIR_TOLERANCE:
        return share  # alone (drain / 1 is the share), or others exist but count otherwise
    return share + FAIR_PULL * (drain / n - share)


def _check_ids(coordinator_ids: Iterable[str] | None) -> frozenset[str] | None:
    if coordinator_ids is None:
        return None
    if isinstance(coordinator_ids, str):
        raise ConfigError(
            f"coordinator_ids must be None (watch all) or a collection of ids, "
            f"not the str {coordinator_ids!r}"
        )
    ids = frozenset(coordinator_ids)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise ConfigError(
            f"coordinator_ids must be None (watch all) or a non-empty collection of str ids, "
            f"got {coordinator_ids!r}"
        )
    return ids
