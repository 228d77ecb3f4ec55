"""WriteCoordinator: producers submit items; workers drain them in batches into a sink."""

from __future__ import annotations

import asyncio
import atexit
import enum
import functools
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from loguru import logger

from market_data_store._context import AsyncStartStop
from market_data_store._logging import log_exception
from market_data_store._validation import check_int
from market_data_store.coordinator import metrics
from market_data_store.coordinator.dlq import DeadLetterQueue
from market_data_store.coordinator.policy import CircuitBreaker, CircuitState, RetryPolicy
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.settings import CoordinatorRuntimeSettings, default_batch_size
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
from market_data_store.coordinator.worker import Job, SinkWorker, WriteLedger
from market_data_store.feedback import autowire
from market_data_store.feedback.bus import FeedbackBus
from market_data_store.feedback.events import BackpressureLevel

T = TypeVar("T")

_CANCEL_GRACE_SEC = 0.25  # how long cancelled workers get to unwind after the stop deadline
_SAVE_GRACE_SEC = 0.3  # how long DLQ saves may run past the stop deadline before abandoned
_DLQ_RECORD_MAX_ITEMS = 10_000  # leftovers are saved in records of at most this many items
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
    dead_lettered + sum(dropped.values())`` at any moment the loop is idle.

    ``worker_restarts`` counts workers replaced after ending unexpectedly;
    ``drop_callbacks_skipped`` counts drop callbacks skipped because their backlog was full
    (the items themselves are counted in ``dropped["overflow"]``)."""

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
    worker_restarts: int = 0
    drop_callbacks_skipped: int = 0


class WriteCoordinator(AsyncStartStop, Generic[T]):
    """Accepts items from producers and writes them to ``sink`` in batches, losing none.

    Lifecycle: new -> running (``start``) -> stopping -> stopped (``stop``); a stopped
    coordinator cannot be restarted. ``async with`` starts and stops it.

    Arguments are checked at construction: a bad one is a ``ConfigError`` naming it, and
    numbers must be finite.

    Args:
        sink: where batches go; must have an ``async def write(batch)``. ``start()`` refuses
            a sink that says it is not open (a ``state`` whose value is ``"new"`` or
            ``"closed"``, or ``is_open`` false); a sink with neither is taken as open.
        capacity: the queue's size limit, items, an int > 0 (default 10_000).
        workers: concurrent sink writers, an int > 0 (default 4).
        batch_size: items a worker writes at once, an int, 0 < batch_size <= capacity
            (default None: ``min(500, capacity)``). Above ``capacity`` a batch could never
            fill and every batch would wait out ``flush_interval``.
        flush_interval: seconds a worker holding fewer than ``batch_size`` items waits for
            more before writing what it has, > 0 (default 0.25).
        max_batch_size: while more than ``batch_size * workers`` items are queued, a worker
            takes up to this many at once, stopping at ``high_watermark``; an int,
            ``batch_size <= max_batch_size <= capacity`` (default None:
            ``DEFAULT_MAX_BATCH_SIZE``, 2000, bounded by both). A shallow queue still
            flushes ``batch_size`` or what ``flush_interval`` gathered.
        high_watermark: queue size at which the level becomes HARD, items,
            0 < high_watermark <= capacity (default None: ``max(1, int(capacity * 0.8))``).
        low_watermark: queue size above which OK becomes SOFT, items,
            0 <= low_watermark < high_watermark (default None:
            ``min(capacity // 2, high_watermark - 1)``).
        recover_watermark: queue size at or below which SOFT and HARD return to OK, items,
            an int, 0 <= recover_watermark <= low_watermark (default None:
            ``max(0, low - max(1, capacity // 20))``).
        overflow_strategy: what ``submit`` does when the queue is full: ``"block"``
            (default) waits for room, ``"drop_oldest"`` drops the oldest items (counted in
            ``stats().dropped["overflow"]``), ``"error"`` raises ``QueueFullError``.
        on_backpressure_high: ``async () -> None`` run on entering HARD (default None).
        on_backpressure_low: ``async () -> None`` run on HARD -> OK (default None).
        drop_callback: called with each item ``"drop_oldest"`` drops, sync or async
            (default None); with 10,000 calls waiting the oldest is skipped (counted in
            ``stats().drop_callbacks_skipped``). Callbacks run in order in a background
            task, never on the producer; their exceptions are logged.
        retry_policy: how failed writes are retried, a ``RetryPolicy`` (default
            ``RetryPolicy()``).
        circuit_breaker: guards the sink, a ``CircuitBreaker`` (default
            ``CircuitBreaker()``); the coordinator takes over its ``on_change``.
        dlq: where items that cannot be written go, a ``DeadLetterQueue`` (a path is not
            one). Default None: such items are counted in ``stats().dropped`` by reason and
            logged at ERROR as lost.
        coord_id: a non-empty string on feedback events, metrics and log lines (default
            ``"default"``).
        bus: the feedback bus for pressure events (default None: the process-wide bus,
            whose transports ``start()`` wires from ``FeedbackSettings``; a bus of one's own
            is not wired).

    Failure handling (the worker's docstring has the details): retryable failures are
    retried, with the circuit open a batch waits for probes (also while draining, until the
    stop deadline); a permanent failure is split until only the failing items are
    dead-lettered. A worker ending for any reason other than cancellation is replaced (its
    job handed over) and counted in ``stats().worker_restarts`` and
    ``mds_worker_restarts_total``.

    A coordinator garbage-collected, or still running at interpreter exit, with items queued
    or in flight emits a ``ResourceWarning`` and an ERROR log with the count, as asyncio
    does for pending tasks.
    """

    def __init__(
        self,
        *,
        sink: Sink[T],
        capacity: int = 10_000,
        workers: int = 4,
        batch_size: int | None = None,
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
        _check_sink(sink)
        check_int("workers", workers, lo=0, lo_open=True)
        if batch_size is not None:
            check_int("batch_size", batch_size, lo=0, lo_open=True)
        check_range("flush_interval", flush_interval, lo=0, lo_open=True)
        if not coord_id or not isinstance(coord_id, str):
            raise ConfigError(f"coord_id must be a non-empty string, got {coord_id!r}")
        _check_instance("dlq", dlq, DeadLetterQueue, "a DeadLetterQueue (not a path)")
        _check_instance("retry_policy", retry_policy, RetryPolicy, "a RetryPolicy")
        _check_instance("circuit_breaker", circuit_breaker, CircuitBreaker, "a CircuitBreaker")
        self._sink = sink
        self._coord_id = coord_id
        self._workers_n = workers
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
        if batch_size is None:  # checked by the queue: the capacity bounds the default
            batch_size = default_batch_size(self._queue.capacity)
        elif batch_size > self._queue.capacity:
            raise ConfigError(
                f"batch_size must satisfy 0 < batch_size <= capacity ({self._queue.capacity}), "
                f"got {batch_size!r}"
            )
        self._batch_size = batch_size
        self._max_batch_size = _max_batch_size(max_batch_size, batch_size, capacity)
        self._queue.set_deep_batches(batch_size * workers, self._max_batch_size)
        self._ledger = WriteLedger()
        self._submitted = 0
        self._state = _State.NEW
        self._warned = False  # the abandoned-coordinator warning was given
        self._workers: list[SinkWorker[T]] = []
        self._breaker_waiters: set[asyncio.Future[None]] = set()
        self._saving: dict[asyncio.Task[None], int] = {}  # DLQ saves under way -> items left
        self._abandoned: set[asyncio.Task[None]] = set()  # saves stop() stopped waiting for
        self._past_deadline = False  # workers are being cancelled: no more replacements
        self._not_draining = False  # stop(drain=False) began: held batches are given up
        self._unsettled: set[asyncio.Task[None]] = set()  # workers not yet seen to end
        self._stopping: asyncio.Task[None] | None = None  # the shutdown, shared by stop() calls
        self._stop_deadline = math.inf  # loop time; the earliest any stop() caller asked for
        self._deadline_moved: asyncio.Future[None] | None = None
        self._breaker.on_change = self._on_circuit_change
        self._bus_given = bus  # None or the process-wide bus: transports auto-wired at start
        self._wiring: autowire.Lease | None = None

    @classmethod
    def from_settings(
        cls,
        settings: CoordinatorRuntimeSettings | None = None,
        *,
        sink: Sink[T],
        **overrides: Any,
    ) -> WriteCoordinator[T]:
        """Build from ``CoordinatorRuntimeSettings`` (read from ``MDS_*`` when None).

        Args:
            settings: the parameters (default None: ``CoordinatorRuntimeSettings()``, read
                from ``MDS_*`` variables and ``.env``, each unset one at its default).
            sink: where batches go, as for the constructor.
            **overrides: any other constructor keyword; each wins over ``settings``.
                ``retry_policy``, ``circuit_breaker`` and ``dlq`` replace the whole object
                built from the ``retry_*``, ``breaker_*`` and ``dlq_path`` fields; the
                callbacks and ``bus`` can only be given here.
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
            ledger.worker_restarts,
            self._queue.drop_callbacks_skipped,
        )

    def _workers_alive(self) -> int:
        return sum(1 for task in self._unsettled if not task.done())

    def __del__(self) -> None:
        try:
            self._warn_if_abandoned("garbage-collected without stop()")
        except ResourceWarning:
            raise  # turned into an error by a warnings filter: let it be reported
        except Exception:  # interpreter teardown: modules may be half gone
            pass

    def _warn_if_abandoned(self, how: str) -> None:
        """Warn (ResourceWarning and an ERROR log) once if items are left behind unstopped."""
        state = getattr(self, "_state", None)  # None: __init__ raised
        if state not in (_State.RUNNING, _State.STOPPING) or self._warned:
            return
        self._warned = True
        left = len(self._queue) + sum(worker.held() for worker in self._workers)
        if not left:
            return
        message = (
            f"coordinator {self._coord_id!r} {how} with {left} items queued or in flight; "
            "call await stop() to write or dead-letter them"
        )
        warnings.warn(message, ResourceWarning, stacklevel=2, source=self)
        logger.error(message)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers. Idempotent while running; a stopped coordinator cannot restart."""
        if self._state is _State.RUNNING:
            return
        if self._state is not _State.NEW:
            raise CoordinatorNotRunningError(
                f"coordinator {self._coord_id!r} is {self._state.value}; it cannot be restarted"
            )
        _check_sink_open(self._sink)
        wiring = await autowire.acquire(self._bus_given)  # ConfigError: nothing started
        if self._state is not _State.NEW:  # a concurrent start() got there first
            await autowire.release(wiring)
            return
        self._wiring = wiring
        for i in range(self._workers_n):
            self._spawn(i, None)
        self._state = _State.RUNNING
        _running.add(self)
        metrics.track(self, self._ledger.latency)
        logger.info("coordinator {} started with {} workers", self._coord_id, self._workers_n)

    def _spawn(self, worker_id: int, job: Job[T] | None) -> None:
        worker = SinkWorker(
            worker_id,
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
            job=job,
        )
        task = asyncio.get_running_loop().create_task(
            worker.run(), name=f"mds-worker:{self._coord_id}:{worker_id}"
        )
        task.add_done_callback(functools.partial(self._worker_ended, worker))
        self._workers.append(worker)
        self._unsettled.add(task)

    def _worker_ended(self, worker: SinkWorker[T], task: asyncio.Task[None]) -> None:
        """Supervision: a worker that ended for any reason but cancellation or a closed,
        empty queue is replaced, its job handed over, and counted."""
        self._unsettled.discard(task)
        if task.cancelled() or (error := task.exception()) is None:
            return
        self._ledger.worker_restarts += 1
        metrics.WORKER_RESTARTS.labels(self._coord_id).inc()
        replace = not self._past_deadline and self._state is not _State.STOPPED
        log_exception(
            "ERROR",
            error,
            "coordinator {}: worker {} ended unexpectedly ({!r}){}",
            self._coord_id,
            worker.worker_id,
            error,
            "; replacing it" if replace else "",
        )
        if replace:
            self._workers.remove(worker)  # holds nothing once handed over: keep the list short
            self._spawn(worker.worker_id, worker.hand_over())

    async def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop within about ``timeout`` seconds, whatever the sink or the DLQ does. Idempotent.

        With ``drain`` the workers keep writing what is queued, through retries and circuit
        breaker probes, until the queue is empty or the deadline comes; without it, queued
        items go to the DLQ (reason ``not_drained``), and so do batches waiting for the
        circuit breaker (reason ``circuit_open``); calls under way may finish. At the
        deadline the workers are cancelled and whatever is still queued or in flight goes to
        the DLQ (reason ``circuit_open`` for a batch waiting for the breaker, else
        ``shutdown_timeout``), encoded and written off the event loop, in records of at most
        10,000 items. DLQ saves get ``0.3`` s past the deadline; then ``stop()`` stops
        waiting: the items not saved yet are counted as ``dlq_failed`` and logged at ERROR.
        Such a save is not cancelled: if it completes later, its items move to
        ``dead_lettered``. Ends with an OK event (``stopped``). Concurrent calls share one
        shutdown (the first call's ``drain`` applies) that ends by the earliest deadline;
        cancelling a caller does not cut the shutdown short.
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
            if not drain:
                self._not_draining = True
                self._wake_breaker_waiters()
            self._stopping = loop.create_task(
                self._shut_down(drain, was_running), name=f"mds-stop:{self._coord_id}"
            )
        await asyncio.shield(self._stopping)

    async def _shut_down(self, drain: bool, was_running: bool) -> None:
        if not drain:
            self._start_save(
                self._queue.drain_nowait(),
                "not drained at stop",
                self._shutdown_metadata("not_drained"),
            )
        await self._wait_for_workers()
        leftovers: dict[str, list[T]] = {}
        for worker in self._workers:
            items, reason = worker.release()
            leftovers.setdefault(reason, []).extend(items)
        leftovers.setdefault("shutdown_timeout", []).extend(self._queue.drain_nowait())
        for reason, items in leftovers.items():
            if not items:
                continue
            logger.warning(
                "coordinator {}: {} items not written by the stop deadline ({})",
                self._coord_id,
                len(items),
                reason,
            )
            self._start_save(
                items, "not written before the stop deadline", self._shutdown_metadata(reason)
            )
        await self._wait_for_saves()
        self._state = _State.STOPPED
        _running.discard(self)
        if was_running:
            self._queue.emit_feedback(BackpressureLevel.OK, "stopped")
            metrics.retire(self)
        if self._wiring is not None:  # the last coordinator flushes and stops the webhook
            await self._wiring.release(self._stop_deadline - asyncio.get_running_loop().time())
        logger.info("coordinator {} stopped: {}", self._coord_id, self.stats())

    async def _wait_for_workers(self) -> None:
        """Wait for the workers until the stop deadline, then cancel those still running
        and give them a short grace. Replacements of workers that died are waited for too."""
        pending = await self._wait_until(lambda: self._unsettled, 0.0)
        self._past_deadline = True
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CANCEL_GRACE_SEC)

    async def _wait_for_saves(self) -> None:
        """Wait for DLQ saves until ``_SAVE_GRACE_SEC`` past the stop deadline, then stop
        waiting: the items not yet saved are counted as ``dlq_failed`` (ERROR log). An
        abandoned save is not cancelled (its thread cannot be): should it complete later,
        its items are moved from ``dlq_failed`` to ``dead_lettered`` and logged."""
        for task in await self._wait_until(lambda: self._saving, _SAVE_GRACE_SEC):
            items = self._saving.pop(task, 0)
            self._abandoned.add(task)
            self._ledger.drop("dlq_failed", items)
            logger.error(
                "coordinator {}: a DLQ save of {} items did not finish by the stop deadline; "
                "abandoned, counted as dlq_failed",
                self._coord_id,
                items,
            )

    async def _wait_until(
        self, tasks: Callable[[], Iterable[asyncio.Task[None]]], grace: float
    ) -> list[asyncio.Task[None]]:
        """Wait until ``tasks()`` is empty (their done callbacks remove them; a callback may
        add a replacement) or the stop deadline (which a later stop() may bring forward)
        plus ``grace`` has passed; return those still pending."""
        loop = asyncio.get_running_loop()
        pending = list(tasks())
        while pending and (remaining := self._stop_deadline + grace - loop.time()) > 0:
            moved = self._deadline_moved = loop.create_future()
            await asyncio.wait(
                [*pending, moved], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            moved.cancel()
            pending = list(tasks())
        self._deadline_moved = None
        return pending

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
        """A worker gives items up: the save completes even if the worker is cancelled
        meanwhile (a cancelled save may be on disk already), and ``stop()`` waits for it
        (until its deadline)."""
        task = self._start_save(items, error, metadata)
        if task is not None:
            await asyncio.shield(task)

    def _start_save(
        self, items: list[T], error: BaseException | str, metadata: Mapping[str, Any]
    ) -> asyncio.Task[None] | None:
        """Send ``items`` to the DLQ in a task that ``stop()`` tracks; without a DLQ, count
        and log them as lost at once."""
        if not items:
            return None
        if self._dlq is None:
            reason = str(metadata.get("reason", "write_failed"))
            self._ledger.drop(reason, len(items))
            logger.error(
                "coordinator {}: {} items lost ({}; no DLQ configured): {}",
                self._coord_id,
                len(items),
                reason,
                error,
            )
            return None
        task = asyncio.get_running_loop().create_task(self._save(self._dlq, items, error, metadata))
        self._saving[task] = len(items)
        task.add_done_callback(self._save_ended)
        return task

    def _save_ended(self, task: asyncio.Task[None]) -> None:
        self._saving.pop(task, None)
        self._abandoned.discard(task)

    async def _save(
        self,
        dlq: DeadLetterQueue[T],
        items: list[T],
        error: BaseException | str,
        metadata: Mapping[str, Any],
    ) -> None:
        """Save ``items`` in records of at most ``_DLQ_RECORD_MAX_ITEMS``, counting each
        record as it lands (so a deadline cutting a large save short loses only the rest)."""
        task = asyncio.current_task()
        assert task is not None
        for start in range(0, len(items), _DLQ_RECORD_MAX_ITEMS):
            chunk = items[start : start + _DLQ_RECORD_MAX_ITEMS]
            try:
                await dlq.save(chunk, error, metadata)
            except Exception as exc:
                self._record_lost(task, len(chunk), exc)
            else:
                self._record_saved(task, len(chunk))

    def _record_saved(self, task: asyncio.Task[None], count: int) -> None:
        ledger = self._ledger
        if task in self._abandoned:  # counted as dlq_failed at the deadline: correct that
            ledger.undrop("dlq_failed", count)
            logger.warning(
                "coordinator {}: a DLQ save abandoned at the stop deadline completed later; "
                "{} more items are in the DLQ",
                self._coord_id,
                count,
            )
        else:
            self._saving[task] = self._saving.get(task, count) - count
        ledger.dead_lettered += count
        if self._state is not _State.STOPPED:  # a stopped id's label sets are gone
            metrics.DLQ_RECORDS.labels(self._coord_id).inc()
            metrics.DLQ_ITEMS.labels(self._coord_id).inc(count)

    def _record_lost(self, task: asyncio.Task[None], count: int, exc: Exception) -> None:
        if task in self._abandoned:
            return  # already counted as dlq_failed at the deadline
        self._saving[task] = self._saving.get(task, count) - count
        self._ledger.drop("dlq_failed", count)
        log_exception(
            "ERROR", exc, "coordinator {}: DLQ write failed; {} items lost", self._coord_id, count
        )

    def _shutdown_metadata(self, reason: str) -> dict[str, Any]:
        return {
            "coordinator_id": self._coord_id,
            "worker_id": None,
            "attempts": 0,
            "reason": reason,
        }

    async def _wait_for_breaker(self, seconds: float) -> bool:
        """Wait until the breaker changes or ``seconds`` pass; False once a ``stop(drain=
        False)`` began (the batch is then dead-lettered at once). A draining stop waits for
        probes until its deadline cancels the workers."""
        if self._not_draining:
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
        return not self._not_draining

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
    check_int("max_batch_size", max_batch_size, lo=batch_size, hi=capacity)
    return max_batch_size


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _check_sink(sink: object) -> None:
    write = getattr(sink, "write", None)
    if not isinstance(sink, Sink) or not _is_async_callable(write):
        raise ConfigError(f"sink must have an async write(batch) method (async def), got {sink!r}")


def _is_async_callable(func: object) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 (a callable object's async __call__)
    return call is not None and inspect.iscoroutinefunction(call)


def _check_instance(name: str, value: object, cls: type, what: str) -> None:
    if value is not None and not isinstance(value, cls):
        raise ConfigError(f"{name} must be {what} or None, got {value!r}")


def _check_sink_open(sink: object) -> None:
    """Refuse a sink that says it is not open: ``state`` (an enum or a string) with value
    ``"new"`` or ``"closed"``, or ``is_open`` false. A sink with neither is taken as open."""
    state = getattr(sink, "state", None)
    value = getattr(state, "value", state)
    is_open = getattr(sink, "is_open", None)
    if value in ("new", "closed") or is_open is False:
        shown = value if isinstance(value, str) else "not open"
        raise ConfigError(
            f"sink {sink!r} is {shown}: open it (e.g. `async with sink:`) before starting "
            "the coordinator"
        )


_running: weakref.WeakSet[WriteCoordinator[Any]] = weakref.WeakSet()


@atexit.register
def _warn_running_at_exit() -> None:
    for coord in list(_running):
        coord._warn_if_abandoned("still running at interpreter exit")
