"""SinkWorker: takes batches from the queue and writes them with retry and circuit breaking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from loguru import logger

from market_data_store.coordinator import metrics
from market_data_store.coordinator.policy import CircuitBreaker, RetryPolicy
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.types import CircuitOpenError, Sink

T = TypeVar("T")

DeadLetter = Callable[[list[T], BaseException | str, Mapping[str, Any]], Awaitable[None]]
"""Sends a batch that failed for good to the DLQ (or counts it lost)."""

BreakerWait = Callable[[float], Awaitable[bool]]
"""Waits up to the given seconds for a breaker change; False once the coordinator stops."""


class WriteLedger:
    """Where every item that left the queue ended up (plain ints: read by stats and metrics)."""

    __slots__ = ("batches_written", "dead_lettered", "dropped", "write_errors", "written")

    def __init__(self) -> None:
        self.written = 0
        self.batches_written = 0
        self.dead_lettered = 0
        self.write_errors = 0
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` items dropped for ``reason``."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class SinkWorker(Generic[T]):
    """One worker loop. It never dies of a sink error: every batch ends written or dead-lettered.

    A batch handed to the sink is never mutated afterwards (retries pass the same list).
    """

    def __init__(
        self,
        worker_id: int,
        queue: BoundedQueue[T],
        sink: Sink[T],
        *,
        batch_size: int,
        flush_interval: float,
        retry_policy: RetryPolicy,
        breaker: CircuitBreaker,
        ledger: WriteLedger,
        dead_letter: DeadLetter[T],
        wait_for_breaker: BreakerWait,
        coord_id: str,
    ) -> None:
        self.worker_id = worker_id
        self._queue = queue
        self._sink = sink
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retry = retry_policy
        self._breaker = breaker
        self._ledger = ledger
        self._dead_letter = dead_letter
        self._wait_for_breaker = wait_for_breaker
        self._coord_id = coord_id
        self._holding: list[T] | None = None  # the batch this worker is responsible for
        self._batches = metrics.BATCHES_WRITTEN.labels(coord_id)
        self._items = metrics.ITEMS_WRITTEN.labels(coord_id)
        self._latency = metrics.WRITE_LATENCY.labels(coord_id)

    async def run(self) -> None:
        """Take and write batches until the queue is closed and empty."""
        queue = self._queue
        while True:
            batch = await queue.get_batch(self._batch_size, self._flush_interval)
            if not batch:
                return
            self._holding = batch  # if cancelled, stays held for release_batch()
            try:
                await self._write(batch)
            except Exception as exc:  # a bug of ours must not kill the worker or lose the batch
                logger.opt(exception=exc).error("worker {} failed on a batch", self.worker_id)
                if self._holding is batch:
                    await self._give_up(batch, exc, self._metadata(0, "worker_error"))
            self._holding = None

    def release_batch(self) -> list[T]:
        """Hand over the batch this worker still holds (``stop()`` at its deadline).

        The worker may still be stuck in a sink that ignores cancellation; if that write
        ends later, the worker neither counts nor retries a batch it no longer holds.
        """
        batch, self._holding = self._holding, None
        return batch or []

    async def _give_up(
        self, batch: list[T], error: BaseException | str, metadata: Mapping[str, Any]
    ) -> None:
        # From here the dead-letter path owns the batch, even if this worker is cancelled
        # while the save is under way: the stop deadline must not save it a second time.
        self._holding = None
        await self._dead_letter(batch, error, metadata)

    async def _write(self, batch: list[T]) -> None:
        attempt = 0
        breaker = self._breaker
        while True:
            if not breaker.allow():
                # Open: wait until a probe is due. Half-open with a probe in flight
                # (seconds_until_probe() == 0): wait for its outcome, which wakes us; the
                # interval only bounds the wait should the probe be abandoned.
                wait = breaker.seconds_until_probe() or breaker.half_open_after_sec
                if not await self._wait_for_breaker(wait):
                    error = CircuitOpenError("circuit open while the coordinator stopped")
                    await self._give_up(batch, error, self._metadata(attempt, "circuit_open"))
                    return
                continue
            attempt += 1
            started = time.perf_counter()
            exc: BaseException
            try:
                await self._sink.write(batch)
            except asyncio.CancelledError as cancelled:
                if _being_cancelled():
                    breaker.release_probe()
                    raise
                exc = cancelled  # raised by the sink itself: a failure like any other
            except Exception as failure:
                exc = failure
            else:
                breaker.record_success()
                if self._holding is not batch:
                    logger.warning(
                        "worker {}: a write ended after the stop deadline had dead-lettered "
                        "its batch of {}",
                        self.worker_id,
                        len(batch),
                    )
                    return
                self._latency.observe(time.perf_counter() - started)
                self._ledger.written += len(batch)
                self._ledger.batches_written += 1
                self._batches.inc()
                self._items.inc(len(batch))
                return
            breaker.record_failure()
            self._ledger.write_errors += 1
            metrics.WRITE_ERRORS.labels(self._coord_id, type(exc).__name__).inc()
            if self._holding is not batch:  # released by stop(): no retry, no second save
                return
            retryable = self._retry.classify_retryable(exc)
            if retryable and attempt < self._retry.max_attempts:
                logger.debug(
                    "worker {}: attempt {} failed ({!r}); retrying", self.worker_id, attempt, exc
                )
                await asyncio.sleep(self._retry.backoff_seconds(attempt))
                continue
            reason = "retries_exhausted" if retryable else "permanent_error"
            logger.warning(
                "worker {}: batch of {} failed for good after {} attempt(s): {!r}",
                self.worker_id,
                len(batch),
                attempt,
                exc,
            )
            await self._give_up(batch, exc, self._metadata(attempt, reason))
            return

    def _metadata(self, attempts: int, reason: str) -> dict[str, Any]:
        return {
            "coordinator_id": self._coord_id,
            "worker_id": self.worker_id,
            "attempts": attempts,
            "reason": reason,
        }


def _being_cancelled() -> bool:
    """True if the current task was asked to stop (not merely handed a CancelledError)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
