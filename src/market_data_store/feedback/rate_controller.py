"""Producer-side rate control: turns a coordinator's pressure levels into an allowed rate.

``RateController`` subscribes to a ``FeedbackBus`` and keeps one allowed rate (items per
second) per coordinator it watches, by additive increase and multiplicative decrease:

- SOFT multiplies that coordinator's rate by ``soft_factor``, HARD by ``hard_factor``, never
  below ``min_rate``. The queue has no hysteresis between OK and SOFT, so its size wobbling
  around the low watermark flaps SOFT, OK, SOFT, ...; to keep that from collapsing the rate,
  SOFT cuts only after an OK that lasted at least ``min_decrease_interval`` seconds (one cut
  per pressure episode), and HARD cuts at most once per ``min_decrease_interval`` (a HARD
  after a SOFT still cuts: that is an escalation).
- While the coordinator is OK the rate grows back towards ``max_rate`` by
  ``increase_per_sec`` per second, but only for the time the producer is actually held back
  (a caller waiting in ``acquire()``): an idle or slower producer earns no headroom.
- An event whose ``seq`` is older than the last one seen for its coordinator is stale and
  ignored. An event with reason ``"stopped"`` forgets the coordinator: it no longer limits the
  rate, and a restarted coordinator with the same id may begin its ``seq`` again.

With several coordinators watched, ``rate`` is the minimum of their rates: the producer goes
no faster than its most loaded destination allows. ``acquire(n)`` is a token bucket at
``rate`` that starts empty and holds at most ``BURST_SEC`` seconds' worth of tokens.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from market_data_store._context import AsyncStartStop
from market_data_store._validation import check_range
from market_data_store.errors import ConfigError
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import BackpressureLevel, FeedbackEvent

DEFAULT_MIN_RATE_FRACTION = 0.01
# Growth slow enough that, refilling the queue from low, the rate overshoots the sink by less
# than a SOFT cut takes back; at 5 % the simulation (benchmarks/closed_loop_sim.py) cycled
# through HARD at 2.7 level transitions per second, at 1.5 % it stays under one.
DEFAULT_INCREASE_FRACTION = 0.015

BURST_SEC = 0.1
"""The bucket holds at most this many seconds of tokens at the current rate (at least one)."""

_EPSILON = 1e-9  # tokens: float rounding must not cost an extra sleep


@dataclass(slots=True)
class _CoordinatorState:
    """What the controller knows about one coordinator."""

    rate: float
    level: BackpressureLevel = BackpressureLevel.OK
    seq: int = 0
    ok_since: float = -math.inf  # when the level last became OK
    hard_cut_at: float = -math.inf


def _check_number(
    name: str,
    value: float,
    *,
    lo: float,
    hi: float = math.inf,
    lo_open: bool = True,
    hi_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    check_range(name, value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return float(value)


class RateController(AsyncStartStop):
    """A feedback subscriber that paces a producer: ``await acquire(n)`` before submitting."""

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
        """Rates are items per second; min_rate defaults to 1 % of max_rate, increase_per_sec
        to 1.5 % of max_rate per second. Needs 0 < min_rate <= max_rate and
        0 < hard_factor <= soft_factor <= 1; ``clock`` and ``sleep`` are for tests.
        """
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
        previous, state.level, state.seq = state.level, event.level, event.seq
        if event.level is BackpressureLevel.OK:
            if previous is not BackpressureLevel.OK:
                state.ok_since = now
        elif event.level is BackpressureLevel.SOFT:
            if previous is BackpressureLevel.OK and now - state.ok_since >= self._min_interval:
                self._cut(state, self._soft_factor)
        elif now - state.hard_cut_at >= self._min_interval:
            state.hard_cut_at = now
            self._cut(state, self._hard_factor)

    async def start(self) -> None:
        """Subscribe to the bus (idempotent)."""
        self._bus.subscribe(self)

    async def stop(self) -> None:
        """Unsubscribe from the bus (idempotent); the current rates are kept."""
        self._bus.unsubscribe(self)

    def _cut(self, state: _CoordinatorState, factor: float) -> None:
        state.rate = max(self._min_rate, state.rate * factor)

    def _effective_rate(self) -> float:
        return min((s.rate for s in self._states.values()), default=self._max_rate)

    def _advance(self, now: float) -> None:
        """Refill the bucket up to ``now`` and grow OK coordinators for the time held back."""
        elapsed = now - self._updated_at
        if elapsed <= 0:
            return
        self._updated_at = now
        rate = self._effective_rate()
        if self._tokens < 0:  # a caller is waiting: the allowance is what limits the producer
            self._grow(min(elapsed, -self._tokens / rate))
        self._tokens = min(self._tokens + elapsed * rate, max(1.0, rate * BURST_SEC))

    def _grow(self, seconds: float) -> None:
        step = self._increase_per_sec * seconds
        for state in self._states.values():
            if state.level is BackpressureLevel.OK and state.rate < self._max_rate:
                state.rate = min(self._max_rate, state.rate + step)


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
