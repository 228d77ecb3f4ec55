"""BoundedQueue: a deque with watermarks, overflow strategies and pressure-level feedback.

Waiter futures are made only when a caller must wait. Level changes are checked with one
integer comparison per operation (``_up_at`` / ``_down_at`` hold the sizes at which the next
transition can happen) and evaluated in ``_update_level``, the one place the state machine of
DESIGN.md section 4 lives.

The per-item paths go further: ``_put_below`` and ``_get_above`` are the sizes between which a
put may just append and a get may just pop, because nothing else can happen there (no level
boundary, no waiter to wake, room left, queue open). ``_refresh_fast_paths`` recomputes both
wherever a watermark boundary, the waiters or the closed flag change, so that one integer
comparison guards each fast path.

Each event carries the drain and arrival rates a ``RateMeter`` measures at the takes of
``get_batch`` (one clock read a take, none a put); items taken one by one with ``get()`` are
not counted, so a queue drained only that way reports no rates. While the level is SOFT or
HARD, a take emits a same-level event with reason ``"measured"`` once per ``REPORT_SEC``,
carrying fresh rates: the level's own transitions stay one event each.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import repeat, starmap
from typing import Generic, NamedTuple, TypeVar

from market_data_store._validation import check_int
from market_data_store.coordinator._callbacks import CallbackRunner
from market_data_store.coordinator._rate_meter import RateMeter
from market_data_store.coordinator.types import (
    OVERFLOW_STRATEGIES,
    BackpressureCallback,
    ConfigError,
    DropCallback,
    OverflowStrategy,
    QueueClosedError,
    QueueFullError,
    check_range,
)
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import MEASURED_REASON, BackpressureLevel, FeedbackEvent

T = TypeVar("T")

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD
_NEVER = sys.maxsize


class QueueStats(NamedTuple):
    """A snapshot of one queue."""

    size: int
    capacity: int
    high_watermark: int
    low_watermark: int
    level: BackpressureLevel
    dropped: int
    seq: int


class _Getter:
    """A consumer waiting until ``need`` items beyond earlier claims are queued."""

    __slots__ = ("fut", "need", "take", "woken")

    def __init__(self, fut: asyncio.Future[None], need: int, take: int) -> None:
        self.fut = fut
        self.need = need
        self.take = take
        self.woken = False


def default_high_watermark(capacity: int) -> int:
    """The high watermark when none is given: 80 % of ``capacity``, at least 1."""
    return max(1, int(capacity * 0.8))


def default_low_watermark(capacity: int, high: int) -> int:
    """The low watermark when none is given: half of ``capacity``, below ``high``."""
    return min(capacity // 2, high - 1)


class BoundedQueue(Generic[T]):
    """A bounded FIFO that reports its pressure level (OK / SOFT / HARD) as it fills and drains.

    The band between ``recover_watermark`` and ``high_watermark`` keeps the level from
    flapping. A bad argument is a ``ConfigError`` naming it.

    Args:
        capacity: maximum number of queued items, an int > 0.
        high_watermark: size at which the level becomes HARD, 0 < high_watermark <= capacity
            (default None: ``max(1, int(capacity * 0.8))``).
        low_watermark: size above which OK becomes SOFT, 0 <= low_watermark < high_watermark
            (default None: ``min(capacity // 2, high_watermark - 1)``).
        recover_watermark: size at or below which SOFT and HARD return to OK, an int,
            0 <= recover_watermark <= low_watermark (default None:
            ``max(0, low - max(1, capacity // 20))``).
        coord_id: the coordinator id carried by this queue's feedback events (default
            ``"default"``).
        overflow_strategy: what a put does when the queue is full: ``"block"`` (default)
            waits for room, ``"drop_oldest"`` drops the oldest items, ``"error"`` raises
            ``QueueFullError``.
        on_high: ``async () -> None`` run on entering HARD (default None).
        on_low: ``async () -> None`` run on HARD -> OK (default None).
        drop_callback: called with each item ``"drop_oldest"`` drops, sync or async; while
            10,000 such calls wait, the oldest is skipped for each new one (default None).
            Callbacks run in order in a background task, never on the producer; their
            exceptions are logged.
        bus: where feedback events are published (default None: the process-wide bus).
    """

    def __init__(
        self,
        capacity: int,
        high_watermark: int | None = None,
        low_watermark: int | None = None,
        *,
        recover_watermark: int | None = None,
        coord_id: str = "default",
        overflow_strategy: OverflowStrategy = "block",
        on_high: BackpressureCallback | None = None,
        on_low: BackpressureCallback | None = None,
        drop_callback: DropCallback[T] | None = None,
        bus: FeedbackBus | None = None,
    ) -> None:
        check_int("capacity", capacity, lo=0, lo_open=True)
        high = default_high_watermark(capacity) if high_watermark is None else high_watermark
        check_range("high_watermark", high, lo=0, hi=capacity, lo_open=True)
        if low_watermark is None:
            low = default_low_watermark(capacity, high)
        else:
            low = low_watermark
            if not 0 <= low < high:
                raise ConfigError(
                    f"low_watermark must satisfy 0 <= low_watermark < high_watermark ({high}), "
                    f"got {low!r}"
                )
        if recover_watermark is None:
            recover = max(0, low - max(1, capacity // 20))
        else:
            recover = recover_watermark
            check_int("recover_watermark", recover, lo=0, hi=low)
        if overflow_strategy not in OVERFLOW_STRATEGIES:
            raise ConfigError(
                f"overflow_strategy must be one of {', '.join(OVERFLOW_STRATEGIES)}, "
                f"got {overflow_strategy!r}"
            )
        self._capacity = capacity
        self._high = high
        self._low = low
        self._recover = recover
        self._coord_id = coord_id
        self._strategy = overflow_strategy
        self._on_high = on_high
        self._on_low = on_low
        self._drop_callback = drop_callback
        self._bus = bus if bus is not None else feedback_bus()
        self._callbacks = CallbackRunner(f"queue:{coord_id}")

        self._items: deque[T] = deque()
        self._getters: list[_Getter] = []
        self._putters: deque[asyncio.Future[None]] = deque()
        self._woken_putters: set[asyncio.Future[None]] = set()  # woken, not yet run
        self._pending_take = 0  # items promised to getters that were woken but not yet run
        self._wake_at = _NEVER  # queue size at which some getter can be woken
        self._closed = False
        self._dropped = 0
        self._seq = 0
        self._rates = RateMeter()
        self._level = OK
        self._up_at = low  # size > _up_at may raise the level
        self._down_at = -1  # size <= _down_at may lower it
        self._deep_above = _NEVER  # more queued than this: get_batch may take _deep_max_items
        self._deep_max_items = 0
        self._put_below = 0  # len < _put_below: put only appends (see the module docstring)
        self._get_above = 0  # len > _get_above: get only pops
        self._refresh_fast_paths()

    # -- introspection -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Maximum number of queued items."""
        return self._capacity

    @property
    def high_watermark(self) -> int:
        """Size at which the level becomes HARD."""
        return self._high

    @property
    def low_watermark(self) -> int:
        """Size above which OK becomes SOFT."""
        return self._low

    @property
    def recover_watermark(self) -> int:
        """Size at or below which SOFT and HARD return to OK."""
        return self._recover

    @property
    def coord_id(self) -> str:
        """The coordinator id carried by this queue's feedback events."""
        return self._coord_id

    @property
    def level(self) -> BackpressureLevel:
        """Current pressure level (DESIGN.md section 4)."""
        return self._level

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    @property
    def drop_callbacks_skipped(self) -> int:
        """Drop callbacks skipped because their backlog was full."""
        return self._callbacks.skipped

    @property
    def size(self) -> int:
        """Number of queued items."""
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> QueueStats:
        """A snapshot of size, watermarks, level and counters."""
        return QueueStats(
            len(self),
            self._capacity,
            self._high,
            self._low,
            self._level,
            self._dropped,
            self._seq,
        )

    # -- producers -----------------------------------------------------------------------

    async def put(self, item: T) -> None:
        """Add ``item``; when full, wait, drop the oldest or raise, per the overflow strategy."""
        items = self._items
        if len(items) < self._put_below:  # nothing but the append can happen
            items.append(item)
            return
        if len(items) < self._capacity and not self._putters and not self._closed:
            items.append(item)
            size = len(items)
            if size > self._up_at:
                self._update_level()
            if size >= self._wake_at:
                self._wake_getters()
            return
        await self._put_slow(item)

    def put_nowait(self, item: T) -> None:
        """Add ``item`` without waiting; raise ``QueueFullError`` if full and not dropping."""
        if self._closed:
            raise QueueClosedError(f"queue {self._coord_id!r} is closed")
        if len(self) >= self._capacity:
            if self._strategy != "drop_oldest":
                raise QueueFullError(f"queue {self._coord_id!r} is full ({self._capacity} items)")
            self._drop_oldest(1)
        self._items.append(item)
        self._after_grow()

    async def put_many(
        self, batch: Iterable[T], *, on_added: Callable[[int], None] | None = None
    ) -> int:
        """Add every item of ``batch`` in order and return how many were added.

        ``block`` waits for room chunk by chunk (if cancelled or closed meanwhile, a prefix
        of the batch is in); ``drop_oldest`` never waits; ``error`` adds all or nothing and
        raises ``QueueFullError`` when the batch does not fit. ``on_added(n)`` is called
        each time ``n`` items have been added, so a caller can count a prefix.
        """
        batch = batch if isinstance(batch, list) else list(batch)
        total = len(batch)
        if self._closed:
            raise QueueClosedError(f"queue {self._coord_id!r} is closed")
        buf = self._items
        if self._strategy == "error":
            if total > self._capacity - len(self):
                raise QueueFullError(
                    f"queue {self._coord_id!r} has room for {self._capacity - len(self)} "
                    f"items, batch has {total}"
                )
            buf.extend(batch)
            self._after_grow()
            if on_added is not None:
                on_added(total)
        elif self._strategy == "drop_oldest":
            buf.extend(batch)
            self._drop_oldest(len(self) - self._capacity)
            self._after_grow()
            if on_added is not None:
                on_added(total)
        else:
            done = 0
            woken = False
            while done < total:
                room = self._capacity - len(self)
                # Queue behind earlier putters, but once woken use the room: waiting again
                # would swallow the wake-up and could leave every putter asleep.
                if room <= 0 or (self._putters and not woken):
                    await self._wait_for_room()
                    woken = True
                    continue
                buf.extend(batch[done : done + room] if done or room < total else batch)
                added = min(room, total - done)
                done += added
                self._after_grow()
                if on_added is not None:
                    on_added(added)
                if self._putters and len(self) < self._capacity:
                    self._wake_putter()
        return total

    async def _put_slow(self, item: T) -> None:
        if self._closed:
            raise QueueClosedError(f"queue {self._coord_id!r} is closed")
        if self._strategy != "block":
            self.put_nowait(item)
            return
        while len(self) >= self._capacity or self._putters:
            await self._wait_for_room()
            if len(self) < self._capacity:
                break
        self._items.append(item)
        self._after_grow()
        if self._putters and len(self) < self._capacity:
            self._wake_putter()

    async def _wait_for_room(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._putters.append(fut)
        self._refresh_fast_paths()
        try:
            await fut
        except asyncio.CancelledError:
            self._woken_putters.discard(fut)
            if fut.done() and not fut.cancelled():  # woken, then cancelled: pass the turn on
                self._wake_putter()
            else:
                self._remove_putter(fut)
            raise
        self._woken_putters.discard(fut)
        if self._closed:
            raise QueueClosedError(f"queue {self._coord_id!r} is closed")

    def _remove_putter(self, fut: asyncio.Future[None]) -> None:
        try:
            self._putters.remove(fut)
        except ValueError:
            pass
        self._refresh_fast_paths()

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters:
            fut = putters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._woken_putters.add(fut)
                break
        if not putters:
            self._refresh_fast_paths()

    def _drop_oldest(self, count: int) -> None:
        if count <= 0:
            return
        dropped = list(starmap(self._items.popleft, repeat((), count)))
        self._dropped += count
        if self._drop_callback is not None:
            for item in dropped:
                self._callbacks.call(self._drop_callback, item)

    def _after_grow(self) -> None:
        size = len(self)
        if size > self._up_at:
            self._update_level()
        if size >= self._wake_at:
            self._wake_getters()

    # -- consumers -----------------------------------------------------------------------

    def get_nowait(self) -> T:
        """Remove and return the oldest item; raise ``asyncio.QueueEmpty`` if there is none."""
        if not len(self):
            if self._closed:
                raise QueueClosedError(f"queue {self._coord_id!r} is closed and empty")
            raise asyncio.QueueEmpty
        return self._popleft()

    async def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting up to ``timeout`` s (``TimeoutError``)."""
        items = self._items
        if len(items) > self._get_above:  # nothing but the pop can happen
            return items.popleft()
        if items:
            item = items.popleft()
            if len(items) <= self._down_at:
                self._update_level()
            if self._putters:
                self._wake_putter()
            return item
        if timeout is not None:
            check_range("timeout", timeout, lo=0)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not len(self):
            if self._closed:
                raise QueueClosedError(f"queue {self._coord_id!r} is closed and empty")
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no item arrived within {timeout} s")
            await self._wait_for_items(1, 1, remaining, lingering=False)
        return self._popleft()

    def set_deep_batches(self, above: int, max_items: int) -> None:
        """Let ``get_batch`` take up to ``max_items`` while more than ``above`` are queued.

        A deep queue then drains in fewer, larger batches; a shallow one is unaffected. A deep
        take stops at the high watermark: only a queue in HARD territory, whose sink is behind,
        drains in large batches; below it batches have their normal size, so the size the
        level and the producers' rate controllers see does not saw-tooth with the batch width
        (closed_loop_sim: 0.25 level changes/s against 0.60 for takes that stopped nowhere,
        with the same throughput into SQLite and PostgreSQL in bench_sinks).

        Except while producers wait for room (the queue was full and more items are behind
        it, as when a producer outruns the sink without a rate controller): then a deep take
        may go down to ``recover_watermark + 1 + above``, so the level stays HARD through the
        takes of every worker (each may still take ``max_items`` after it) while the sink gets
        larger batches (bench_sinks, SQLite at DEFAULT settings: 4,499 rows a transaction
        instead of 3,500).
        """
        check_range("above", above, lo=0)
        check_range("max_items", max_items, lo=0, lo_open=True)
        self._deep_above = above
        self._deep_max_items = max_items

    def _batch_limit(self, max_items: int) -> int:
        size = len(self._items)
        if size > self._deep_above and self._deep_max_items > max_items:
            floor = self._high
            if self._putters or self._woken_putters:
                floor = min(floor, self._recover + 1 + self._deep_above)
            deep = min(self._deep_max_items, size - floor)
            # Whole batches: a remainder would leave a few items that every idle worker then
            # lingers on, each with its own timer.
            return max(max_items, deep - deep % max_items)
        return max_items

    async def get_batch(self, max_items: int, linger: float = 0.0) -> list[T]:
        """Take up to ``max_items`` items, waiting for the first one as long as it takes.

        Once at least one item is queued, wait up to ``linger`` seconds for a full batch.
        Returns an empty list only when the queue is closed and empty. While the queue is
        deep (see ``set_deep_batches``) the batch may be larger than ``max_items``.
        """
        loop = asyncio.get_running_loop()
        waited = False
        while True:
            size = len(self._items)
            if size >= max_items or (size and (linger <= 0 or self._closed)):
                return self._take(self._batch_limit(max_items), loop.time(), waited)
            waited = True
            if size == 0:
                if self._closed:
                    return []
                await self._wait_for_items(1, max_items, None, lingering=False)
                continue
            deadline = loop.time() + linger
            while 0 < len(self) < max_items and not self._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self._wait_for_items(max_items, max_items, remaining, lingering=True)
            if len(self):
                return self._take(self._batch_limit(max_items), loop.time(), waited)

    def _take(self, max_items: int, now: float | None = None, waited: bool = False) -> list[T]:
        items = self._items
        if max_items >= len(items):
            batch = list(items)
            items.clear()
        else:  # starmap calls popleft from C: about 5 ns an item against 25 for a listcomp
            batch = list(starmap(items.popleft, repeat((), max_items)))
        rates = self._rates
        rates.taken += len(batch)
        if now is not None:  # before the level is updated: an event it emits counts this take
            if now >= rates.sample_due or waited or not items:
                rates.record(now, len(items), self._dropped, restart=waited or not items)
            else:  # the cheap path of RateMeter.record: this take ends the window
                rates.took_at = now
        self._after_shrink()
        if now is not None and now >= rates.report_at and rates.report_due(now):
            self.emit_feedback(self._level, MEASURED_REASON)
        return batch

    def measured_rates(self) -> tuple[float | None, float | None]:
        """(drain_rate, arrival_rate) in items/s, as the next event would carry them (see
        ``RateMeter``); None before they are known."""
        if not self._rates.samples:  # nothing measured yet: no clock read
            return None, None
        try:
            now: float | None = asyncio.get_running_loop().time()
        except RuntimeError:  # outside the loop: the last take ends the window
            now = None
        return self._rates.rates(now, len(self._items), self._dropped)

    def _popleft(self) -> T:
        item = self._items.popleft()
        self._after_shrink()
        return item

    def _after_shrink(self) -> None:
        if len(self._items) <= self._down_at:
            self._update_level()
        if self._putters:
            self._wake_putter()

    async def _wait_for_items(
        self, need: int, take: int, timeout: float | None, *, lingering: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        getter = _Getter(loop.create_future(), need, take)
        if lingering:  # a lingering getter holds a partial batch: it claims items first
            self._getters.insert(0, getter)
        else:
            self._getters.append(getter)
        self._recompute_wake_at()
        handle = None if timeout is None else loop.call_later(timeout, self._expire, getter)
        try:
            await getter.fut
        finally:
            if handle is not None:
                handle.cancel()
            if getter.woken:
                self._pending_take -= take
                self._recompute_wake_at()
                if len(self) >= self._wake_at:  # pass on items this getter won't take
                    self._wake_getters()
            elif getter in self._getters:
                self._getters.remove(getter)
                self._recompute_wake_at()

    def _expire(self, getter: _Getter) -> None:
        if not getter.fut.done():
            self._getters.remove(getter)
            self._recompute_wake_at()
            getter.fut.set_result(None)

    def _recompute_wake_at(self) -> None:
        claimed = self._pending_take
        wake_at = _NEVER
        for getter in self._getters:
            if claimed + getter.need < wake_at:
                wake_at = claimed + getter.need
            claimed += getter.take
        self._wake_at = wake_at
        self._refresh_fast_paths()

    def _refresh_fast_paths(self) -> None:
        """Recompute the sizes that guard the fast paths of put and get."""
        if self._putters:  # a get must wake one; a put must queue behind them
            self._put_below, self._get_above = -1, _NEVER
            return
        self._get_above = self._down_at + 1
        if self._closed:
            self._put_below = -1
        else:
            self._put_below = min(self._capacity, self._up_at, self._wake_at - 1)

    def _wake_getters(self) -> None:
        budget = len(self) - self._pending_take
        keep: list[_Getter] = []
        for getter in self._getters:
            if budget > 0 and budget >= getter.need and not getter.fut.done():
                getter.woken = True
                self._pending_take += getter.take
                getter.fut.set_result(None)
            else:
                keep.append(getter)
            budget -= getter.take
        self._getters = keep
        self._recompute_wake_at()

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further puts and wake every waiter; queued items can still be taken."""
        if self._closed:
            return
        self._closed = True
        getters, self._getters = self._getters, []
        for getter in getters:
            if not getter.fut.done():
                getter.fut.set_result(None)
        self._recompute_wake_at()
        while self._putters:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)
        self._refresh_fast_paths()

    def drain_nowait(self) -> list[T]:
        """Remove and return every queued item at once."""
        return self._take(len(self)) if len(self) else []

    async def join_callbacks(self) -> None:
        """Wait until the watermark and drop callbacks queued so far have run."""
        await self._callbacks.join()

    # -- pressure level ------------------------------------------------------------------

    def _update_level(self) -> None:
        size = len(self)
        old = self._level
        if old is not OK and size <= self._recover:
            new = OK
        elif old is HARD or size >= self._high:
            new = HARD
        elif old is SOFT or size > self._low:
            new = SOFT
        else:
            new = OK
        if new is old:
            return
        self._level = new
        if new is OK:
            self._up_at, self._down_at = self._low, -1
        elif new is SOFT:
            self._up_at, self._down_at = self._high - 1, self._recover
        else:
            self._up_at, self._down_at = _NEVER, self._recover
        self._refresh_fast_paths()
        self._rates.level_changed(new is not OK)
        self.emit_feedback(new, "queue_recovered" if new is OK else None)
        if new is HARD and self._on_high is not None:
            self._callbacks.call(self._on_high)
        elif old is HARD and self._on_low is not None:
            self._callbacks.call(self._on_low)

    def emit_feedback(self, level: BackpressureLevel, reason: str | None = None) -> FeedbackEvent:
        """Publish an event for this queue without waiting (lifecycle events use it directly)."""
        self._seq += 1
        event = FeedbackEvent(
            self._coord_id,
            len(self._items),
            self._capacity,
            level,
            reason,
            time.time(),
            self._seq,
            *self.measured_rates(),
        )
        self._bus.publish_nowait(event)
        return event
