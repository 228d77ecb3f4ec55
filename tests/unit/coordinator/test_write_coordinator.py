"""WriteCoordinator: lifecycle, draining, failures, circuit breaking, bounded stop, idleness."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from market_data_store.coordinator.dlq import DeadLetterQueue
from market_data_store.coordinator.policy import CircuitBreaker, RetryPolicy
from market_data_store.coordinator.settings import CoordinatorRuntimeSettings
from market_data_store.coordinator.types import (
    ConfigError,
    CoordinatorNotRunningError,
    PermanentSinkError,
    RetryableSinkError,
)
from market_data_store.coordinator.write_coordinator import CoordinatorHealth, WriteCoordinator
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
from market_data_store.testing.virtual_time import VirtualTimeLoop, run_virtual

WaitUntil = Callable[..., Awaitable[None]]
OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD
ZERO_WAIT = RetryPolicy(initial_backoff_ms=0)
DEADLINE = 2.0  # seconds; every wait below is bounded by it
STOP_T = 0.3  # the stop timeout of the bounded-stop tests
STOP_SLACK = 0.5  # stop(timeout=T) must return within T + this


# -- sinks and helpers ---------------------------------------------------------------------


class RecordingSink:
    """Stores every batch it is handed, keeping the very list objects, and a copy of each."""

    def __init__(self) -> None:
        self.batches: list[Sequence[Any]] = []
        self.copies: list[list[Any]] = []
        self.calls = 0

    async def write(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        self.batches.append(batch)
        self.copies.append(list(batch))

    @property
    def items(self) -> list[Any]:
        return [item for batch in self.copies for item in batch]


class ScriptedSink(RecordingSink):
    """Raises ``error`` while ``failing`` is true; hangs while ``hanging`` is true."""

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        self.error = error
        self.failing = error is not None
        self.hanging = False
        self.hung = 0  # calls currently hanging

    async def write(self, batch: Sequence[Any]) -> None:
        if self.hanging:
            self.calls += 1
            self.hung += 1
            try:
                await asyncio.Future()  # forever; only cancellation ends it
            finally:
                self.hung -= 1
        if self.failing:
            self.calls += 1
            assert self.error is not None
            raise self.error
        await super().write(batch)


class HangingSink(ScriptedSink):
    def __init__(self) -> None:
        super().__init__()
        self.hanging = True


class StubbornSink(RecordingSink):
    """Swallows cancellation and keeps hanging until ``release`` is set, then writes."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.hung = 0

    async def write(self, batch: Sequence[Any]) -> None:
        self.hung += 1
        try:
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    assert task is not None
                    task.uncancel()
        finally:
            self.hung -= 1
        await super().write(batch)


class GatedSink(RecordingSink):
    """Holds every write until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def write(self, batch: Sequence[Any]) -> None:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        await super().write(batch)


class CountingBreaker(CircuitBreaker):
    """A breaker that counts how often workers ask it for permission."""

    allow_calls = 0

    def allow(self) -> bool:
        self.allow_calls += 1
        return super().allow()


class Recorder:
    """A feedback subscriber that keeps every event."""

    def __init__(self) -> None:
        self.events: list[FeedbackEvent] = []

    async def __call__(self, event: FeedbackEvent) -> None:
        self.events.append(event)

    def reasons(self) -> list[tuple[BackpressureLevel, str | None]]:
        return [(e.level, e.reason) for e in self.events]


def make(sink: Any, **kwargs: Any) -> WriteCoordinator[Any]:
    kwargs.setdefault("coord_id", f"wc-{uuid.uuid4().hex[:8]}")
    kwargs.setdefault("bus", FeedbackBus())
    kwargs.setdefault("flush_interval", 0.01)
    kwargs.setdefault("retry_policy", ZERO_WAIT)
    if "batch_size" in kwargs:  # these tests count items per batch: no deep-queue batches
        kwargs.setdefault("max_batch_size", kwargs["batch_size"])
    return WriteCoordinator(sink=sink, **kwargs)


def watched(sink: Any, **kwargs: Any) -> tuple[WriteCoordinator[Any], Recorder, FeedbackBus]:
    bus = FeedbackBus(max_backlog=10_000)
    recorder = Recorder()
    bus.subscribe(recorder)
    return make(sink, bus=bus, **kwargs), recorder, bus


def dlq_at(tmp_path: Path) -> DeadLetterQueue[Any]:
    return DeadLetterQueue(tmp_path / f"dlq-{uuid.uuid4().hex[:8]}.ndjson")


async def dlq_items(dlq: DeadLetterQueue[Any]) -> list[tuple[Any, str]]:
    """Every dead-lettered item with the reason of its record."""
    return [
        (item, record.metadata.get("reason", ""))
        for record in await dlq.replay(max_records=1_000_000)
        for item in record.items
    ]


async def assert_conserved(
    coord: WriteCoordinator[Any], sink: RecordingSink, dlq: DeadLetterQueue[Any]
) -> None:
    """written + dead-lettered + dropped == submitted, each item in exactly one place."""
    stats = coord.stats()
    written = sink.items
    dead = [item for item, _ in await dlq_items(dlq)]
    dropped = sum(stats.dropped.values())
    assert len(set(written)) == len(written), "an item was written twice"
    assert len(set(dead)) == len(dead), "an item was dead-lettered twice"
    assert not set(written) & set(dead), "an item is both written and dead-lettered"
    assert len(written) + len(dead) + dropped == stats.submitted
    assert (stats.written, stats.dead_lettered) == (len(written), len(dead))


async def timed_stop(coord: WriteCoordinator[Any], **kwargs: Any) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await coord.stop(**kwargs)
    return loop.time() - started


# -- lifecycle -----------------------------------------------------------------------------


async def test_start_and_stop_are_idempotent() -> None:
    """start() twice runs one set of workers; stop() twice is harmless."""
    coord = make(RecordingSink(), workers=3)
    await coord.start()
    await coord.start()
    assert (coord.state, coord.health().workers_alive) == ("running", 3)
    await coord.stop()
    await coord.stop()
    assert (coord.state, coord.health().workers_alive) == ("stopped", 0)


async def test_async_with_starts_and_stops() -> None:
    """`async with` starts the coordinator and stops it (draining) on exit."""
    sink = RecordingSink()
    async with make(sink) as coord:
        assert coord.state == "running"
        await coord.submit("x")
    assert coord.state == "stopped"
    assert sink.items == ["x"]


async def test_a_stopped_coordinator_cannot_restart() -> None:
    """start() after stop() raises CoordinatorNotRunningError."""
    coord = make(RecordingSink())
    await coord.start()
    await coord.stop()
    with pytest.raises(CoordinatorNotRunningError, match="restart"):
        await coord.start()


async def test_submit_before_start_raises() -> None:
    """submit() and submit_many() before start() raise CoordinatorNotRunningError."""
    coord = make(RecordingSink())
    with pytest.raises(CoordinatorNotRunningError, match="start"):
        await coord.submit(1)
    with pytest.raises(CoordinatorNotRunningError):
        await coord.submit_many([1, 2])
    assert coord.stats().submitted == 0


async def test_submit_after_stop_raises() -> None:
    """submit() and submit_many() after stop() raise CoordinatorNotRunningError."""
    coord = make(RecordingSink())
    async with coord:
        pass
    with pytest.raises(CoordinatorNotRunningError, match="stopped"):
        await coord.submit(1)
    with pytest.raises(CoordinatorNotRunningError):
        await coord.submit_many([1, 2])


async def test_submit_many_writes_everything_in_order() -> None:
    """submit_many() returns the count and every item reaches the sink, in order."""
    sink = RecordingSink()
    async with make(sink, workers=1, batch_size=7, capacity=50) as coord:
        assert await coord.submit_many(range(100)) == 100
        assert await coord.submit_many(iter(range(100, 110))) == 10
    assert sink.items == list(range(110))
    assert all(len(batch) <= 7 for batch in sink.batches)


async def test_health_reports_workers_queue_circuit_and_level() -> None:
    """health() returns workers alive, queue size and capacity, circuit state and level."""
    coord = make(RecordingSink(), workers=2, capacity=10)
    assert coord.health() == CoordinatorHealth(0, 0, 10, "closed", OK)
    async with coord:
        assert coord.health() == CoordinatorHealth(2, 0, 10, "closed", OK)
    assert coord.health() == CoordinatorHealth(0, 0, 10, "closed", OK)


async def test_stats_count_every_item(tmp_path: Path, wait_until: WaitUntil) -> None:
    """stats() counts submitted, written, batches, write errors and dead-lettered items."""
    sink = ScriptedSink(PermanentSinkError("no"))
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=1, batch_size=5, dlq=dlq)
    async with coord:
        await coord.submit_many(range(5))
        await wait_until(lambda: coord.stats().dead_lettered == 5)
        sink.failing = False
        await coord.submit_many(range(5, 15))
    stats = coord.stats()
    assert (stats.submitted, stats.written, stats.dead_lettered) == (15, 10, 5)
    # 5 items failing for good: halved down to single items, 9 calls (5 + 2 + 3 + 1 + 1 ...)
    assert (stats.batches_written, stats.write_errors, stats.dropped) == (2, 9, {})
    assert (stats.queue_size, stats.workers_alive, stats.state) == (0, 0, "stopped")


async def test_stop_with_drain_writes_everything_queued() -> None:
    """stop(drain=True) returns after every queued item has been written."""
    sink = RecordingSink()
    coord = make(sink, workers=2, batch_size=10, flush_interval=5.0, capacity=1000)
    await coord.start()
    await coord.submit_many(range(995))
    await coord.stop(drain=True)
    assert sorted(sink.items) == list(range(995))


async def test_stop_without_drain_dead_letters_what_is_queued(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """stop(drain=False) sends queued items to the DLQ (reason not_drained); in-flight finish."""
    sink = GatedSink()
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=1, batch_size=3, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(10))
    await wait_until(lambda: sink.waiting == 1)
    stopping = asyncio.create_task(coord.stop(drain=False, timeout=DEADLINE))
    await wait_until(lambda: coord.stats().dead_lettered == 7)
    sink.gate.set()
    async with asyncio.timeout(DEADLINE):
        await stopping
    assert sink.items == [0, 1, 2]
    dead = await dlq_items(dlq)
    assert sorted(item for item, _ in dead) == list(range(3, 10))
    assert {reason for _, reason in dead} == {"not_drained"}
    await assert_conserved(coord, sink, dlq)


async def test_batches_handed_to_the_sink_are_never_mutated(tmp_path: Path) -> None:
    """Every list the sink received still holds what it held when handed over."""
    sink = ScriptedSink(RetryableSinkError("flaky"))
    coord = make(
        sink,
        workers=3,
        batch_size=4,
        capacity=8,
        overflow_strategy="drop_oldest",
        dlq=dlq_at(tmp_path),
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=1000),
    )
    async with coord:
        for i in range(0, 60, 6):
            await coord.submit_many(range(i, i + 6))
            sink.failing = not sink.failing
            await asyncio.sleep(0)
        await coord.submit_many(range(60, 100))
    assert sink.batches, "the sink was never called"
    assert [list(batch) for batch in sink.batches] == sink.copies


async def test_stop_ends_with_an_ok_stopped_event() -> None:
    """The last event of a stopped coordinator is OK with reason "stopped" and the next seq."""
    coord, recorder, bus = watched(RecordingSink(), capacity=10, high_watermark=5)
    async with coord:
        await coord.submit_many(range(8))
    await bus.flush()
    last = recorder.events[-1]
    assert (last.level, last.reason, last.coordinator_id) == (OK, "stopped", coord.coord_id)
    assert [e.seq for e in recorder.events] == list(range(1, len(recorder.events) + 1))


async def test_from_settings_uses_settings_and_overrides_win(tmp_path: Path) -> None:
    """from_settings builds from CoordinatorRuntimeSettings; keyword overrides beat settings."""
    settings = CoordinatorRuntimeSettings(
        coord_id="from-settings",
        capacity=100,
        workers=3,
        high_watermark=90,
        low_watermark=10,
        overflow_strategy="drop_oldest",
        breaker_failure_threshold=9,
        breaker_half_open_after_sec=7.5,
        dlq_path=tmp_path / "settings-dlq.ndjson",
    )
    coord: WriteCoordinator[int] = WriteCoordinator.from_settings(
        settings, sink=RecordingSink(), capacity=200, coord_id="override", bus=FeedbackBus()
    )
    q = coord.queue.stats()
    assert (q.capacity, q.high_watermark, q.low_watermark) == (200, 90, 10)
    assert coord.coord_id == "override"
    breaker = coord.circuit_breaker
    assert (breaker.failure_threshold, breaker.half_open_after_sec) == (9, 7.5)
    async with coord:
        assert coord.health().workers_alive == 3
        for i in range(250):  # drop_oldest: never blocks, never raises
            coord.queue.put_nowait(i)
        assert coord.queue.stats().dropped == 50


async def test_from_settings_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """from_settings() without settings reads MDS_* variables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MDS_CAPACITY", "123")
    monkeypatch.setenv("MDS_COORD_ID", "from-env")
    coord: WriteCoordinator[int] = WriteCoordinator.from_settings(
        sink=RecordingSink(), bus=FeedbackBus()
    )
    assert (coord.queue.capacity, coord.coord_id) == (123, "from-env")


# -- bad input -----------------------------------------------------------------------------


class SyncWriteSink:
    """A broken sink whose write is not a coroutine function."""

    def write(self, batch: Sequence[Any]) -> None:
        return None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": -5}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"capacity": 10, "high_watermark": 6, "low_watermark": 6}, "low_watermark"),
        ({"capacity": 10, "high_watermark": 6, "low_watermark": 9}, "low_watermark"),
        ({"capacity": 10, "high_watermark": 11}, "high_watermark"),
        ({"capacity": 10, "high_watermark": 0}, "high_watermark"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": -0.5}, "flush_interval"),
        ({"workers": 0}, "workers"),
        ({"workers": True}, "workers"),
        ({"overflow_strategy": "sideways"}, "overflow_strategy"),
        ({"sink": object()}, "sink"),
        ({"sink": None}, "sink"),
        ({"sink": SyncWriteSink()}, "sink"),
        ({"coord_id": ""}, "coord_id"),
    ],
)
def test_invalid_argument_raises_config_error_naming_it(kwargs: dict[str, Any], name: str) -> None:
    """Each invalid constructor argument raises ConfigError at construction, naming it."""
    kwargs.setdefault("sink", RecordingSink())
    with pytest.raises(ConfigError, match=name):
        WriteCoordinator(bus=FeedbackBus(), **kwargs)


# -- losses are counted --------------------------------------------------------------------


async def test_without_a_dlq_failed_items_are_counted_as_dropped_and_logged(
    wait_until: WaitUntil, log_messages: list[str]
) -> None:
    """With no DLQ configured, a batch that fails for good is counted by reason and logged
    at ERROR (the level, not only the text: a loss must not pass as a warning)."""
    sink = ScriptedSink(PermanentSinkError("rejected"))
    coord = make(sink, workers=1, batch_size=3)
    async with coord:
        await coord.submit_many(range(6))
        await wait_until(lambda: coord.stats().dropped.get("permanent_error") == 6)
    stats = coord.stats()
    assert (stats.submitted, stats.written, stats.dead_lettered) == (6, 0, 0)
    lost = [m for m in log_messages if "items lost" in m and "no DLQ" in m]
    assert lost
    assert all(m.startswith("ERROR: ") for m in lost), lost


class BrokenDLQ(DeadLetterQueue[Any]):
    async def save(self, items: Any, error: Any, metadata: Any = None) -> None:
        raise OSError("disk full")


async def test_a_failing_dlq_counts_the_items_as_dropped(
    tmp_path: Path, wait_until: WaitUntil, log_messages: list[str]
) -> None:
    """If the DLQ itself fails, the items are counted as dropped (dlq_failed), not lost silently."""
    sink = ScriptedSink(PermanentSinkError("rejected"))
    coord = make(sink, workers=2, batch_size=2, dlq=BrokenDLQ(tmp_path / "dlq.ndjson"))
    async with coord:
        await coord.submit_many(range(6))
        await wait_until(lambda: coord.stats().dropped.get("dlq_failed") == 6)
        assert coord.health().workers_alive == 2
    assert coord.stats().submitted == sum(coord.stats().dropped.values()) == 6
    assert any("DLQ write failed" in m for m in log_messages)


# -- partial submits -----------------------------------------------------------------------


async def test_submit_many_cut_short_by_stop_counts_what_was_queued(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """A submit_many blocked when stop() closes the queue still counts the prefix it queued."""
    sink = HangingSink()
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=1, batch_size=4, capacity=4, dlq=dlq)
    await coord.start()
    producer = asyncio.create_task(coord.submit_many(range(20)))
    await wait_until(lambda: sink.hung == 1 and coord.queue.size == 4)
    await coord.stop(timeout=0.05)
    with pytest.raises(CoordinatorNotRunningError):
        await producer
    assert coord.stats().submitted == 8
    await assert_conserved(coord, sink, dlq)


async def test_cancelled_submit_many_counts_what_was_queued(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """Cancelling a blocked submit_many still counts the prefix it queued."""
    sink = HangingSink()
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=1, batch_size=4, capacity=4, dlq=dlq)
    await coord.start()
    producer = asyncio.create_task(coord.submit_many(range(20)))
    await wait_until(lambda: sink.hung == 1 and coord.queue.size == 4)
    producer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await producer
    assert coord.stats().submitted == 8
    await coord.stop(timeout=0.05)
    await assert_conserved(coord, sink, dlq)


# -- workers survive -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PermanentSinkError("rejected"),
        RetryableSinkError("locked"),
        ValueError("bad row"),
        RuntimeError("bug"),
        ConnectionResetError("reset"),
        TimeoutError("slow"),
        asyncio.CancelledError(),  # raised by the sink itself, nobody cancelled the worker
    ],
    ids=lambda e: type(e).__name__,
)
async def test_no_worker_dies_of_a_sink_exception(
    tmp_path: Path, error: BaseException, wait_until: WaitUntil
) -> None:
    """After sink errors every worker is still alive and later items are written."""
    sink = ScriptedSink(error)
    dlq = dlq_at(tmp_path)
    coord = make(
        sink,
        workers=3,
        batch_size=2,
        dlq=dlq,
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=1000),
    )
    async with coord:
        await coord.submit_many(range(12))
        await wait_until(lambda: coord.stats().dead_lettered == 12, what="all dead-lettered")
        assert coord.health().workers_alive == 3
        sink.failing = False
        await coord.submit_many(range(12, 24))
        await wait_until(lambda: len(sink.items) == 12, what="later items written")
        assert coord.health().workers_alive == 3
    await assert_conserved(coord, sink, dlq)


# -- idle is idle --------------------------------------------------------------------------


def test_idle_coordinator_writes_a_later_item_within_two_flush_intervals() -> None:
    """After 10 idle flush intervals, a new item is written within 2 intervals. On a virtual
    clock (``run_virtual``), so the figure does not depend on how busy the machine is."""
    flush_interval = 0.05

    class SignallingSink(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.wrote = asyncio.Event()

        async def write(self, batch: Sequence[Any]) -> None:
            await super().write(batch)
            self.wrote.set()

    async def scenario() -> float:
        sink = SignallingSink()
        async with make(sink, workers=4, batch_size=100, flush_interval=flush_interval) as coord:
            await asyncio.sleep(10 * flush_interval)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await coord.submit("late")
            await asyncio.wait_for(sink.wrote.wait(), 10 * flush_interval)
            return loop.time() - started

    elapsed = run_virtual(scenario())
    assert 0 < elapsed <= 2 * flush_interval, elapsed


def test_idle_workers_schedule_nothing_while_the_queue_is_empty() -> None:
    """Four idle workers wait for an item without polling: over 100 flush intervals of
    (virtual) idle time the loop schedules no callback at all, so an idle coordinator costs
    no CPU. Counted on the loop itself: every timer and every wake-up goes through
    ``call_at`` or ``call_soon``."""
    loop = VirtualTimeLoop()
    scheduled = 0
    call_soon, call_at = loop.call_soon, loop.call_at

    def counting_call_soon(*args: Any, **kwargs: Any) -> Any:
        nonlocal scheduled
        scheduled += 1
        return call_soon(*args, **kwargs)

    def counting_call_at(*args: Any, **kwargs: Any) -> Any:
        nonlocal scheduled
        scheduled += 1
        return call_at(*args, **kwargs)

    async def scenario() -> int:
        nonlocal scheduled
        async with make(RecordingSink(), workers=4, flush_interval=0.01) as coord:
            await coord.submit(1)  # one batch through, then idle
            await asyncio.sleep(0.1)
            loop.call_soon = counting_call_soon  # type: ignore[method-assign]
            loop.call_at = counting_call_at  # type: ignore[method-assign]
            scheduled = 0
            idle = asyncio.create_task(asyncio.sleep(1.0))  # 100 flush intervals
            await idle
            counted = scheduled
            loop.call_soon, loop.call_at = call_soon, call_at  # type: ignore[method-assign]
            assert coord.stats().written == 1
        return counted

    try:
        counted = loop.run_until_complete(scenario())
    finally:
        loop.close()
    # The test's own sleep: its timer and the wake-up of the task awaiting it (a handful).
    assert counted <= 5, f"{counted} callbacks scheduled in 100 idle flush intervals"


# -- bounded stop --------------------------------------------------------------------------


class StopScenario:
    """A misbehaving sink, how the coordinator is set up around it, and when to stop."""

    def __init__(
        self,
        sink: Callable[[], ScriptedSink],
        ready: Callable[[ScriptedSink, WriteCoordinator[Any]], bool],
        reasons: set[str],
        **kwargs: Any,
    ) -> None:
        self.sink, self.ready, self.reasons, self.kwargs = sink, ready, reasons, kwargs


STOP_SCENARIOS = {
    "sink_never_returns": StopScenario(
        HangingSink, lambda sink, _: sink.hung == 2, {"shutdown_timeout"}
    ),
    "circuit_open": StopScenario(
        lambda: ScriptedSink(RetryableSinkError("down")),
        lambda _, coord: coord.circuit_breaker.state == "open",
        {"circuit_open"},
        retry_policy=RetryPolicy(max_attempts=100, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=2, half_open_after_sec=60),
    ),
    "sink_always_fails": StopScenario(
        lambda: ScriptedSink(RetryableSinkError("down")),
        lambda sink, _: sink.calls >= 4,
        {"shutdown_timeout"},
        retry_policy=RetryPolicy(max_attempts=1000, initial_backoff_ms=20, max_backoff_ms=50),
        circuit_breaker=CircuitBreaker(failure_threshold=10**6),
    ),
}


@pytest.mark.parametrize("scenario", STOP_SCENARIOS.values(), ids=STOP_SCENARIOS.keys())
async def test_stop_is_bounded_and_leaves_the_rest_in_the_dlq(
    scenario: StopScenario, tmp_path: Path, wait_until: WaitUntil
) -> None:
    """stop(timeout=T) returns within T + 0.5 s whatever the sink does; nothing is lost."""
    sink = scenario.sink()
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=2, batch_size=5, dlq=dlq, **scenario.kwargs)
    await coord.start()
    await coord.submit_many(range(20))
    await wait_until(lambda: scenario.ready(sink, coord))
    assert await timed_stop(coord, timeout=STOP_T) < STOP_T + STOP_SLACK
    dead = await dlq_items(dlq)
    assert sorted(item for item, _ in dead) == list(range(20))
    # With the circuit open, a batch can also be caught queued at the deadline.
    assert scenario.reasons <= {reason for _, reason in dead}
    assert {reason for _, reason in dead} <= scenario.reasons | {"shutdown_timeout"}
    await assert_conserved(coord, sink, dlq)


async def test_stop_dead_letters_the_batch_of_a_sink_that_ignores_cancellation(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """A batch stuck in a sink that swallows cancellation is dead-lettered once, not lost."""
    sink = StubbornSink()
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=1, batch_size=5, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(10))
    await wait_until(lambda: sink.hung == 1)
    try:
        assert await timed_stop(coord, timeout=STOP_T) < STOP_T + STOP_SLACK
        dead = await dlq_items(dlq)
        assert sorted(item for item, _ in dead) == list(range(10))
        assert coord.stats().dead_lettered == 10
    finally:
        sink.release.set()  # the write finishes late: it must not be counted a second time
    await wait_until(lambda: coord.health().workers_alive == 0, what="worker finished")
    assert coord.stats().written == 0
    assert coord.stats().dead_lettered == coord.stats().submitted == 10


async def test_a_second_stop_keeps_its_own_shorter_timeout(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """stop(timeout=T) returns within T + 0.5 s even while an earlier stop has a longer one."""
    sink = HangingSink()
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=1, batch_size=5, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(10))
    await wait_until(lambda: sink.hung == 1)
    first = asyncio.create_task(coord.stop(timeout=30))
    await wait_until(lambda: coord.state == "stopping")
    assert await timed_stop(coord, timeout=STOP_T) < STOP_T + STOP_SLACK
    assert coord.state == "stopped"
    async with asyncio.timeout(DEADLINE):
        await first
    await assert_conserved(coord, sink, dlq)


async def test_a_cancelled_stop_still_completes_the_shutdown(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """Cancelling a stop() caller does not cut the shutdown short: it still ends with "stopped"."""
    sink = HangingSink()
    dlq = dlq_at(tmp_path)
    coord, recorder, bus = watched(sink, workers=1, batch_size=5, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(10))
    await wait_until(lambda: sink.hung == 1)
    caller = asyncio.create_task(coord.stop(timeout=STOP_T))
    await wait_until(lambda: coord.state == "stopping")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await coord.stop(timeout=STOP_T)
    await bus.flush()
    assert (recorder.events[-1].level, recorder.events[-1].reason) == (OK, "stopped")
    await assert_conserved(coord, sink, dlq)


async def test_dlq_save_cut_short_by_the_stop_deadline_is_not_duplicated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_until: WaitUntil
) -> None:
    """A batch whose DLQ save is still on disk at the stop deadline is saved exactly once."""
    saving = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a slow disk
        saving.set()
        time.sleep(0.2)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    sink = ScriptedSink(RetryableSinkError("down"))
    dlq = dlq_at(tmp_path)
    retry = RetryPolicy(max_attempts=1, initial_backoff_ms=0)  # one save of all 5 items
    coord = make(sink, workers=1, batch_size=5, dlq=dlq, retry_policy=retry)
    await coord.start()
    await coord.submit_many(range(5))
    await wait_until(saving.is_set)
    await coord.stop(timeout=0.05)
    assert sorted(item for item, _ in await dlq_items(dlq)) == [0, 1, 2, 3, 4]
    await assert_conserved(coord, sink, dlq)


# -- circuit breaker in the coordinator ----------------------------------------------------


@pytest.mark.parametrize(("items", "level_at_close"), [(10, HARD), (1, OK)])
async def test_open_circuit_holds_the_batch_then_closes_with_the_queue_level(
    tmp_path: Path, items: int, level_at_close: BackpressureLevel, wait_until: WaitUntil
) -> None:
    """While open: no sink calls, no DLQ, a HARD circuit_open event; closing re-emits the level."""
    sink = ScriptedSink(RetryableSinkError("down"))
    dlq = dlq_at(tmp_path)
    coord, recorder, bus = watched(
        sink,
        workers=1,
        batch_size=1,
        capacity=10,
        high_watermark=8,
        low_watermark=5,
        dlq=dlq,
        retry_policy=RetryPolicy(max_attempts=100, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=2, half_open_after_sec=0.3),
    )
    async with coord:
        await coord.submit_many(range(items))
        await wait_until(lambda: coord.circuit_breaker.state == "open", what="circuit open")
        calls = sink.calls
        await asyncio.sleep(0.1)  # a window well inside half_open_after_sec
        assert sink.calls == calls == 2
        assert coord.stats().dead_lettered == 0
        assert coord.queue.size == items - 1  # the worker still holds item 0
        sink.failing = False
        await wait_until(lambda: len(sink.items) == items, what="all written after closing")
    await bus.flush()
    reasons = recorder.reasons()
    assert (HARD, "circuit_open") in reasons
    closed = [e for e in recorder.events if e.reason == "circuit_closed"]
    assert len(closed) == 1
    assert (closed[0].level, closed[0].queue_size) == (level_at_close, items - 1)
    assert reasons.index((HARD, "circuit_open")) < recorder.events.index(closed[0])
    assert await dlq.replay() == []
    await assert_conserved(coord, sink, dlq)


async def test_waiting_workers_do_not_poll_while_a_probe_is_in_flight(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """While the half-open probe hangs, the other workers wait quietly: no busy polling."""
    sink = ScriptedSink(RetryableSinkError("down"))
    breaker = CountingBreaker(failure_threshold=1, half_open_after_sec=0.25)
    coord = make(
        sink,
        workers=3,
        batch_size=1,
        dlq=dlq_at(tmp_path),
        retry_policy=RetryPolicy(max_attempts=100, initial_backoff_ms=0),
        circuit_breaker=breaker,
    )
    await coord.start()
    await coord.submit_many(range(6))
    await wait_until(lambda: breaker.state == "open", what="circuit open")
    sink.hanging = True  # the probe will hang
    await wait_until(lambda: sink.hung == 1, what="probe in flight")
    asked = breaker.allow_calls
    await asyncio.sleep(0.15)
    assert breaker.allow_calls - asked <= 2
    assert sink.hung == 1
    await coord.stop(timeout=0.05)
