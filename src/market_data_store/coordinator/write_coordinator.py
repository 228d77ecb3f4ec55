"""WriteCoordinator: producers submit items; workers drain them in batches into a sink."""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from loguru import logger

from market_data_store._context import AsyncStartStop
from market_data_store.coordinator import metrics
from market_data_store.coordinator.dlq import DeadLetterQueue
from market_data_store.coordinator.policy import CircuitBreaker, CircuitState, RetryPolicy
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.settings import CoordinatorRuntimeSettings
from market_data_store.coordinator.types import (
    BackpressureCallback,
    ConfigError,
    CoordinatorNotRunningError,
    DropCallback,
    OverflowStrategy,
    QueueClosedError,
    Sink,
    check_range,
)
from market_data_store.coordinator.worker import SinkWorker, WriteLedger
from market_data_store.feedback.bus import FeedbackBus
from market_data_store.feedback.events import BackpressureLevel

T = TypeVar("T")

_CANCEL_GRACE_SEC = 0.25  # how long cancelled workers get to unwind after the stop deadline
# Measured at default settings against max_batch_size=500: SQLite 1.67x, PostgreSQL 1.06x
# (medians of paired rounds); 5,000 or 10,000 added little more (1.06x / 1.17x over 2,000)
# for batches up to five times larger.
DEFAULT_MAX_BATCH_SIZE = 2_000


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


# A module constant: on Python 3.11 ``_State.RUNNING`` costs ~112 ns a lookup (the enum class
# defines __getattr__), this ~22 ns; submit() checks it once per item.
_RUNNING = _State.RUNNING


class CoordinatorHealth(NamedTuple):
    """What an orchestrator's health check needs."""

    workers_alive: int
    queue_size: int
    capacity: int
    circuit_state: CircuitState
    level: BackpressureLevel


class CoordinatorStats(NamedTuple):
    """Where every submitted item is: ``submitted == queued + in_flight + written +
    dead_lettered + sum(dropped.values())`` at any moment the loop is idle."""

    submitted: int
    written: int
    dead_lettered: int
    dropped: dict[str, int]
    queue_size: int
    batches_written: int
    write_errors: int
    workers_alive: int
    circuit_state: CircuitState
    level: BackpressureLevel
    state: str


class WriteCoordinator(AsyncStartStop, Generic[T]):
    """Accepts items from producers and writes them to ``sink`` in batches, losing none.

    Lifecycle: new -> running (``start``) -> stopping -> stopped (``stop``); a stopped
    coordinator cannot be restarted. ``async with`` starts and stops it.

    ``recover_watermark``: queue size at or below which SOFT and HARD return to OK (see
    ``BoundedQueue``; default ``max(0, low - max(1, capacity // 20))``).
    ``max_batch_size``: while more than ``batch_size * workers`` items are queued, a worker
    takes up to this many at once (``batch_size <= max_batch_size <= capacity``; default
    ``DEFAULT_MAX_BATCH_SIZE`` bounded by both); a shallow queue still flushes ``batch_size``
    or what ``flush_interval`` gathered.
    """

    def __init__(
        self,
        *,
        sink: Sink[T],
        capacity: int = 10_000,
        workers: int = 4,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        max_batch_size: int | None = None,
        high_watermark: int | None = None,
        low_watermark: int | None = None,
        recover_watermark: int | None = None,
        overflow_strategy: OverflowStrategy = "block",
        on_backpressure_high: BackpressureCallback | None = None,
        on_backpressure_low: BackpressureCallback | None = None,
        drop_callback: DropCallback[T] | None = None,
        retry_policy: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        dlq: DeadLetterQueue[T] | None = None,
        coord_id: str = "default",
        bus: FeedbackBus | None = None,
    ) -> None:
        if not isinstance(sink, Sink):
            raise ConfigError(f"sink must have an async write(batch) method, got {sink!r}")
        for name, value in (("workers", workers), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an int with {name} > 0, got {value!r}")
            check_range(name, value, lo=0, lo_open=True)
        check_range("flush_interval", flush_interval, lo=0, lo_open=True)
        if not coord_id:
            raise ConfigError("coord_id must be a non-empty string")
        self._sink = sink
        self._coord_id = coord_id
        self._workers_n = workers
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retry = retry_policy or RetryPolicy()
        self._breaker = circuit_breaker or CircuitBreaker()
        self._dlq = dlq
        self._queue: BoundedQueue[T] = BoundedQueue(
            capacity,
            high_watermark,
            low_watermark,
            recover_watermark=recover_watermark,
            coord_id=coord_id,
            overflow_strategy=overflow_strategy,
            on_high=on_backpressure_high,
            on_low=on_backpressure_low,
            drop_callback=drop_callback,
            bus=bus,
        )
        self._max_batch_size = _max_batch_size(max_batch_size, batch_size, capacity)
        self._queue.set_deep_batches(batch_size * workers, self._max_batch_size)
        self._ledger = WriteLedger()
        self._submitted = 0
        self._state = _State.NEW
        self._workers: list[SinkWorker[T]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._breaker_waiters: set[asyncio.Future[None]] = set()
        self._saving: set[asyncio.Task[None]] = set()  # workers' DLQ saves under way
        self._stopping: asyncio.Task[None] | None = None  # the shutdown, shared by stop() calls
        self._stop_deadline = math.inf  # loop time; the earliest any stop() caller asked for
        self._deadline_moved: asyncio.Future[None] | None = None
        self._breaker.on_change = self._on_circuit_change

    @classmethod
    def from_settings(
        cls,
        settings: CoordinatorRuntimeSettings | None = None,
        *,
        sink: Sink[T],
        **overrides: Any,
    ) -> WriteCoordinator[T]:
        """Build from ``CoordinatorRuntimeSettings`` (read from ``MDS_*`` when None).

        Explicit keyword ``overrides`` win over settings, which win over defaults.
        """
        s = settings if settings is not None else CoordinatorRuntimeSettings()
        kwargs: dict[str, Any] = {
            "capacity": s.capacity,
            "workers": s.workers,
            "batch_size": s.batch_size,
            "flush_interval": s.flush_interval,
            "max_batch_size": s.max_batch_size,
            "high_watermark": s.high_watermark,
            "low_watermark": s.low_watermark,
            "recover_watermark": s.recover_watermark,
            "overflow_strategy": s.overflow_strategy,
            "coord_id": s.coord_id,
            "retry_policy": RetryPolicy(
                max_attempts=s.retry_max_attempts,
                initial_backoff_ms=s.retry_initial_backoff_ms,
                max_backoff_ms=s.retry_max_backoff_ms,
                backoff_multiplier=s.retry_backoff_multiplier,
                jitter=s.retry_jitter,
            ),
            "circuit_breaker": CircuitBreaker(
                s.breaker_failure_threshold, s.breaker_half_open_after_sec
            ),
            "dlq": DeadLetterQueue(s.dlq_path) if s.dlq_path is not None else None,
        }
        kwargs.update(overrides)
        return cls(sink=sink, **kwargs)

    # -- introspection -------------------------------------------------------------------

    @property
    def coord_id(self) -> str:
        """The id carried by this coordinator's feedback events and metrics."""
        return self._coord_id

    @property
    def queue(self) -> BoundedQueue[T]:
        """The coordinator's queue (read-only use: size, level, watermarks)."""
        return self._queue

    @property
    def max_batch_size(self) -> int:
        """The largest batch a worker takes while the queue is deep."""
        return self._max_batch_size

    @property
    def circuit_breaker(self) -> CircuitBreaker:
        """The breaker guarding the sink."""
        return self._breaker

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"``."""
        return self._state.value

    def health(self) -> CoordinatorHealth:
        """Workers alive, queue size and capacity, circuit state and pressure level."""
        return CoordinatorHealth(
            self._workers_alive(),
            len(self._queue),
            self._queue.capacity,
            self._breaker.state,
            self._queue.level,
        )

    def stats(self) -> CoordinatorStats:
        """A snapshot of the counters that health, metrics and tests read."""
        ledger = self._ledger
        dropped = dict(ledger.dropped)
        queue_dropped = self._queue.stats().dropped
        if queue_dropped:
            dropped["overflow"] = queue_dropped
        return CoordinatorStats(
            self._submitted,
            ledger.written,
            ledger.dead_lettered,
            dropped,
            len(self._queue),
            ledger.batches_written,
            ledger.write_errors,
            self._workers_alive(),
            self._breaker.state,
            self._queue.level,
            self._state.value,
        )

    def _workers_alive(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers. Idempotent while running; a stopped coordinator cannot restart."""
        if self._state is _State.RUNNING:
            return
        if self._state is not _State.NEW:
            raise CoordinatorNotRunningError(
                f"coordinator {self._coord_id!r} is {self._state.value}; it cannot be restarted"
            )
        self._workers = [
            SinkWorker(
                i,
                self._queue,
                self._sink,
                batch_size=self._batch_size,
                flush_interval=self._flush_interval,
                retry_policy=self._retry,
                breaker=self._breaker,
                ledger=self._ledger,
                dead_letter=self._dead_letter_batch,
                wait_for_breaker=self._wait_for_breaker,
                coord_id=self._coord_id,
            )
            for i in range(self._workers_n)
        ]
        self._tasks = [
            asyncio.create_task(w.run(), name=f"mds-worker:{self._coord_id}:{w.worker_id}")
            for w in self._workers
        ]
        self._state = _State.RUNNING
        metrics.track(self)
        logger.info("coordinator {} started with {} workers", self._coord_id, self._workers_n)

    async def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop within about ``timeout`` seconds, whatever the sink does. Idempotent.

        With ``drain`` the workers write what is queued; without it, queued items go to the
        DLQ (reason ``not_drained``). Whatever is still queued or in flight at the deadline
        goes to the DLQ with reason ``shutdown_timeout``. Ends with an OK event (``stopped``).
        Concurrent calls share one shutdown (the first call's ``drain`` applies) that ends
        by the earliest deadline; cancelling a caller does not cut the shutdown short.
        """
        check_range("timeout", timeout, lo=0)
        if self._state is _State.STOPPED:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if deadline < self._stop_deadline:
            self._stop_deadline = deadline
            if self._deadline_moved is not None:
                _resolve(self._deadline_moved)
        if self._stopping is None:
            was_running = self._state is _State.RUNNING
            self._state = _State.STOPPING
            self._queue.close()
            self._wake_breaker_waiters()
            self._stopping = loop.create_task(
                self._shut_down(drain, was_running), name=f"mds-stop:{self._coord_id}"
            )
        await asyncio.shield(self._stopping)

    async def _shut_down(self, drain: bool, was_running: bool) -> None:
        if not drain:
            await self._dead_letter(
                self._queue.drain_nowait(),
                "not drained at stop",
                self._shutdown_metadata("not_drained"),
            )
        await self._wait_for_workers()
        if self._saving:  # batches cancelled workers had already handed to the DLQ
            await asyncio.wait(set(self._saving))
        leftovers: list[T] = [item for w in self._workers for item in w.release_batch()]
        leftovers.extend(self._queue.drain_nowait())
        if leftovers:
            logger.warning(
                "coordinator {}: {} items not written by the stop deadline",
                self._coord_id,
                len(leftovers),
            )
            await self._dead_letter(
                leftovers,
                "not written before the stop deadline",
                self._shutdown_metadata("shutdown_timeout"),
            )
        self._state = _State.STOPPED
        if was_running:
            self._queue.emit_feedback(BackpressureLevel.OK, "stopped")
            metrics.retire(self)
        logger.info("coordinator {} stopped: {}", self._coord_id, self.stats())

    async def _wait_for_workers(self) -> None:
        """Wait for the workers until the stop deadline (which a later stop() may bring
        forward), then cancel those still running and give them a short grace."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._tasks if not task.done()]
        while pending and (remaining := self._stop_deadline - loop.time()) > 0:
            moved = self._deadline_moved = loop.create_future()
            await asyncio.wait(
                [*pending, moved], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            moved.cancel()
            pending = [task for task in pending if not task.done()]
        self._deadline_moved = None
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CANCEL_GRACE_SEC)

    # -- producers -----------------------------------------------------------------------

    async def submit(self, item: T) -> None:
        """Queue one item; waits, drops the oldest or raises when full, per overflow strategy."""
        queue = self._queue
        items = queue._items
        if len(items) < queue._put_below and self._state is _RUNNING:
            # The queue's own fast path, inlined: one coroutine per item instead of two.
            items.append(item)
            self._submitted += 1
            return
        if self._state is not _RUNNING:
            raise self._not_running()
        try:
            await self._queue.put(item)
        except QueueClosedError:
            raise self._not_running() from None
        self._submitted += 1

    async def submit_many(self, items: Iterable[T]) -> int:
        """Queue many items in order (the bulk path); returns how many were queued."""
        if self._state is not _RUNNING:
            raise self._not_running()
        try:
            # Counted as queued, chunk by chunk: a blocked call cut short by stop() or by
            # cancellation has still queued a prefix, which must be accounted for.
            return await self._queue.put_many(items, on_added=self._count_submitted)
        except QueueClosedError:
            raise self._not_running() from None

    def _count_submitted(self, count: int) -> None:
        self._submitted += count

    def _not_running(self) -> CoordinatorNotRunningError:
        hint = "call start() first" if self._state is _State.NEW else "it was stopped"
        return CoordinatorNotRunningError(
            f"coordinator {self._coord_id!r} is {self._state.value}: {hint}"
        )

    # -- failure handling ----------------------------------------------------------------

    async def _dead_letter_batch(
        self, items: list[T], error: BaseException | str, metadata: Mapping[str, Any]
    ) -> None:
        """A worker gives a batch up: the save completes even if the worker is cancelled
        meanwhile (a cancelled save may be on disk already), and ``stop()`` waits for it."""
        task = asyncio.create_task(self._dead_letter(items, error, metadata))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)
        await asyncio.shield(task)

    async def _dead_letter(
        self, items: list[T], error: BaseException | str, metadata: Mapping[str, Any]
    ) -> None:
        if not items:
            return
        reason = str(metadata.get("reason", "write_failed"))
        if self._dlq is None:
            self._ledger.drop(reason, len(items))
            logger.error(
                "coordinator {}: {} items lost ({}; no DLQ configured): {}",
                self._coord_id,
                len(items),
                reason,
                error,
            )
            return
        try:
            await self._dlq.save(items, error, metadata)
        except Exception as exc:
            self._ledger.drop("dlq_failed", len(items))
            logger.opt(exception=exc).error(
                "coordinator {}: DLQ write failed; {} items lost", self._coord_id, len(items)
            )
            return
        self._ledger.dead_lettered += len(items)
        metrics.DLQ_RECORDS.labels(self._coord_id).inc()
        metrics.DLQ_ITEMS.labels(self._coord_id).inc(len(items))

    def _shutdown_metadata(self, reason: str) -> dict[str, Any]:
        return {
            "coordinator_id": self._coord_id,
            "worker_id": None,
            "attempts": 0,
            "reason": reason,
        }

    async def _wait_for_breaker(self, seconds: float) -> bool:
        """Wait until the breaker changes or ``seconds`` pass; False once stopping."""
        if self._state is not _State.RUNNING:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._breaker_waiters.add(fut)
        handle = loop.call_later(max(seconds, 0.001), _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._breaker_waiters.discard(fut)
        return self._state is _State.RUNNING

    def _wake_breaker_waiters(self) -> None:
        for fut in list(self._breaker_waiters):
            _resolve(fut)

    def _on_circuit_change(self, old: CircuitState, new: CircuitState) -> None:
        logger.warning("coordinator {}: circuit {} -> {}", self._coord_id, old, new)
        if new == "open":
            self._queue.emit_feedback(BackpressureLevel.HARD, "circuit_open")
        elif new == "closed":
            self._queue.emit_feedback(self._queue.level, "circuit_closed")
        self._wake_breaker_waiters()


def _max_batch_size(max_batch_size: int | None, batch_size: int, capacity: int) -> int:
    """The explicit value checked against its range, else the default bounded by both."""
    if max_batch_size is None:
        return max(batch_size, min(DEFAULT_MAX_BATCH_SIZE, capacity))
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
        raise ConfigError(
            f"max_batch_size must be an int with batch_size ({batch_size}) <= max_batch_size "
            f"<= capacity ({capacity}), got {max_batch_size!r}"
        )
    check_range("max_batch_size", max_batch_size, lo=batch_size, hi=capacity)
    return max_batch_size


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
