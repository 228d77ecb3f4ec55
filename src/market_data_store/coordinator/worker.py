"""SinkWorker: takes batches from the queue and writes them with retry and circuit breaking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from loguru import logger

from market_data_store._logging import log_exception
from market_data_store.coordinator import metrics
from market_data_store.coordinator.policy import CircuitBreaker, RetryPolicy
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.types import CircuitOpenError, Sink

T = TypeVar("T")

DeadLetter = Callable[[list[T], BaseException | str, Mapping[str, Any]], Awaitable[None]]
"""Sends items that failed for good to the DLQ (or counts them lost)."""

BreakerWait = Callable[[float], Awaitable[bool]]
"""Waits up to the given seconds, or until the breaker changes; False: give the batch up."""


class WriteLedger:
    """Where every item that left the queue ended up (plain ints: read by stats and metrics)."""

    __slots__ = (
        "batches_written",
        "dead_lettered",
        "dropped",
        "latency",
        "worker_restarts",
        "write_errors",
        "written",
    )

    def __init__(self) -> None:
        self.latency = metrics.LatencyHistogram()  # of successful sink calls
        self.written = 0
        self.batches_written = 0
        self.dead_lettered = 0
        self.write_errors = 0
        self.worker_restarts = 0
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` items dropped for ``reason``."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def undrop(self, reason: str, count: int) -> None:
        """Take back ``count`` items counted as dropped for ``reason`` (found after all)."""
        left = self.dropped.get(reason, 0) - count
        if left > 0:
            self.dropped[reason] = left
        else:
            self.dropped.pop(reason, None)


class Job(Generic[T]):
    """The items one worker is responsible for, as a stack of parts still to write.

    A batch starts as one part; a part failing with a permanent error is replaced by its two
    halves. ``attempts`` counts the failed sink calls of the top part. A job outlives a
    worker that dies: the replacement worker takes it over, attempts included.
    """

    __slots__ = ("attempts", "parts", "released", "waiting_for_breaker")

    def __init__(self, batch: list[T]) -> None:
        self.parts: list[list[T]] = [batch]
        self.attempts = 0
        self.released = False
        self.waiting_for_breaker = False

    def items(self) -> list[T]:
        """Every item not yet written nor handed to the dead-letter path, in queue order."""
        return [item for part in reversed(self.parts) for item in part]


class SinkWorker(Generic[T]):
    """One worker loop. It never dies of a sink error: every item ends written or dead-lettered.

    - Each sink call gets a fresh list of its own (``list(part)``): whatever the sink does
      with it, the worker counts from its own copy, so conservation cannot be broken.
    - A retryable failure is retried with backoff up to ``max_attempts`` calls while the
      circuit is closed; while it is open or half-open the batch waits for a probe, using
      no attempts, for as long as the coordinator runs or drains (until its stop deadline;
      ``stop(drain=False)`` gives it up at once, reason ``circuit_open``).
    - A permanent failure splits the part in halves until the failing items are isolated
      (about log2(n) extra calls per bad item, and only on failure): the valid items are
      written, only single failing items are dead-lettered. Permanent failures say nothing
      about the sink's health and do not count against the breaker.
    - A ``BaseException`` from the sink that is not an ``Exception`` (nor the worker's own
      cancellation) is counted as a failed call, then re-raised: the worker ends and the
      coordinator replaces it, handing its job to the replacement.
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
        job: Job[T] | None = None,
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
        self._job: Job[T] | None = job  # what this worker is responsible for
        self._latency = ledger.latency

    async def run(self) -> None:
        """Finish an inherited job, then take and write batches until the queue is closed
        and empty."""
        if self._job is not None:
            await self._finish(self._job)
        queue = self._queue
        while True:
            batch = await queue.get_batch(self._batch_size, self._flush_interval)
            if not batch:
                return
            job = self._job = Job(batch)  # if cancelled, stays held for release()
            try:  # _finish() inlined: this runs once per batch
                await self._deliver(job)
            except Exception as exc:
                await self._worker_error(job, exc)
            if self._job is job:
                self._job = None

    def release(self) -> tuple[list[T], str]:
        """Hand over what this worker still holds (``stop()`` at its deadline), with the
        dead-letter reason: ``circuit_open`` if it was waiting for the breaker, else
        ``shutdown_timeout``.

        The worker may still be stuck in a sink that ignores cancellation; if that write
        ends later, the worker neither counts nor retries a job it no longer holds.
        """
        job, self._job = self._job, None
        if job is None:
            return [], "shutdown_timeout"
        job.released = True
        reason = "circuit_open" if job.waiting_for_breaker else "shutdown_timeout"
        return job.items(), reason

    def held(self) -> int:
        """How many items this worker is responsible for."""
        job = self._job
        return 0 if job is None else sum(len(part) for part in job.parts)

    def hand_over(self) -> Job[T] | None:
        """The job of a worker that ended unexpectedly, for its replacement."""
        job, self._job = self._job, None
        return job

    async def _finish(self, job: Job[T]) -> None:
        try:
            await self._deliver(job)
        except Exception as exc:
            await self._worker_error(job, exc)
        if self._job is job:
            self._job = None

    async def _worker_error(self, job: Job[T], exc: Exception) -> None:
        """A bug of ours must not kill the worker or lose the job: dead-letter what is left."""
        log_exception("ERROR", exc, "worker {} failed on a batch", self.worker_id)
        if self._job is job:
            self._job = None
            await self._dead_letter(job.items(), exc, self._metadata(0, "worker_error"))

    async def _deliver(self, job: Job[T]) -> None:
        breaker = self._breaker
        while job.parts:
            part = job.parts[-1]
            if not breaker.allow():
                # Open: wait until a probe is due. Half-open with a probe in flight
                # (seconds_until_probe() == 0): wait for its outcome, which wakes us; the
                # interval only bounds the wait should the probe be abandoned.
                job.waiting_for_breaker = True  # left set if cancelled: release() reads it
                keep_waiting = await self._wait_for_breaker(
                    breaker.seconds_until_probe() or breaker.half_open_after_sec
                )
                job.waiting_for_breaker = False
                if not keep_waiting:  # stop(drain=False): give the rest up now
                    items = job.items()
                    job.parts.clear()
                    error = CircuitOpenError("circuit open while the coordinator stopped")
                    await self._dead_letter(
                        items, error, self._metadata(job.attempts, "circuit_open")
                    )
                    return
                continue
            started = time.perf_counter()
            exc: BaseException
            try:
                await self._sink.write(list(part))  # the sink's own list: see the class doc
            except asyncio.CancelledError as cancelled:
                if _being_cancelled():
                    breaker.release_probe()
                    raise
                exc = cancelled  # raised by the sink itself: a failure like any other
            except BaseException as failure:
                exc = failure
            else:
                breaker.record_success()
                if job.released:
                    logger.warning(
                        "worker {}: a write ended after the stop deadline had dead-lettered "
                        "its batch of {}",
                        self.worker_id,
                        len(part),
                    )
                    return
                job.parts.pop()
                job.attempts = 0
                self._latency.observe(time.perf_counter() - started)
                self._ledger.written += len(part)
                self._ledger.batches_written += 1  # exported at scrape time (metrics.py)
                continue
            await self._failed(job, part, exc)

    async def _failed(self, job: Job[T], part: list[T], exc: BaseException) -> None:
        """Decide what a failed call means for ``part``: retry, split or give up."""
        breaker = self._breaker
        self._ledger.write_errors += 1
        metrics.count_write_error(self._coord_id, type(exc).__name__)
        retryable = self._retry.classify_retryable(exc)
        if retryable:
            breaker.record_failure()
        else:  # a data error: the sink answered, its health is unknown either way
            breaker.release_probe()
        # The worker ends (and is replaced) on a BaseException; a CancelledError the sink
        # raised itself, with nobody cancelling the worker, is an ordinary failure.
        fatal = not isinstance(exc, Exception | asyncio.CancelledError)
        if job.released:  # released by stop(): no retry, no second save
            if fatal:
                raise exc
            return
        job.attempts += 1
        attempts = job.attempts
        if retryable and (attempts < self._retry.max_attempts or breaker.state != "closed"):
            logger.debug(
                "worker {}: attempt {} failed ({!r}); retrying", self.worker_id, attempts, exc
            )
            if fatal:
                raise exc
            await asyncio.sleep(self._retry.backoff_seconds(attempts))
            return
        job.parts.pop()
        job.attempts = 0
        if not retryable and len(part) > 1:
            middle = len(part) // 2
            job.parts.append(part[middle:])
            job.parts.append(part[:middle])
            logger.debug(
                "worker {}: a batch of {} failed permanently ({!r}); splitting it",
                self.worker_id,
                len(part),
                exc,
            )
        else:
            reason = "retries_exhausted" if retryable else "permanent_error"
            logger.warning(
                "worker {}: {} item(s) failed for good after {} attempt(s): {!r}",
                self.worker_id,
                len(part),
                attempts,
                exc,
            )
            # From here the dead-letter path owns the part (it left the job), even if this
            # worker is cancelled while the save is under way.
            await self._dead_letter(part, exc, self._metadata(attempts, reason))
        if fatal:
            raise exc

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
