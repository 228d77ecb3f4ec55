"""Issue 9: the write path under real faults (drain through outages, bad items, bounded
memory, sinks that misbehave, a hung DLQ, bad arguments, dying workers, abandoned
coordinators)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from market_data_store._validation import check_range
from market_data_store.coordinator._callbacks import CallbackRunner
from market_data_store.coordinator.dlq import DeadLetterQueue
from market_data_store.coordinator.policy import CircuitBreaker, RetryPolicy
from market_data_store.coordinator.settings import CoordinatorRuntimeSettings
from market_data_store.coordinator.types import (
    ConfigError,
    PermanentSinkError,
)
from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback import FeedbackBus

WaitUntil = Callable[..., Awaitable[None]]
ZERO_WAIT = RetryPolicy(initial_backoff_ms=0)


def make(sink: Any, **kwargs: Any) -> WriteCoordinator[Any]:
    kwargs.setdefault("coord_id", f"rel-{uuid.uuid4().hex[:8]}")
    kwargs.setdefault("bus", FeedbackBus())
    kwargs.setdefault("flush_interval", 0.01)
    kwargs.setdefault("retry_policy", ZERO_WAIT)
    if "batch_size" in kwargs:  # batches of exactly batch_size, however deep the queue
        kwargs.setdefault("max_batch_size", kwargs["batch_size"])
    return WriteCoordinator(sink=sink, **kwargs)


def dlq_at(tmp_path: Path) -> DeadLetterQueue[Any]:
    return DeadLetterQueue(tmp_path / f"dlq-{uuid.uuid4().hex[:8]}.ndjson")


async def dead_items(dlq: DeadLetterQueue[Any]) -> list[Any]:
    return [item for record in await dlq.replay(max_records=10**6) for item in record.items]


class StoringSink:
    """Keeps a copy of every item written."""

    def __init__(self) -> None:
        self.stored: list[Any] = []
        self.calls = 0

    async def write(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        self.stored.extend(batch)


# -- 1. drain keeps going through retries and breaker probes ------------------------------


class OutageSink(StoringSink):
    """Fails (retryable) until ``recovered`` is set; counts the failed calls."""

    def __init__(self) -> None:
        super().__init__()
        self.recovered = asyncio.Event()
        self.failures = 0

    async def write(self, batch: Sequence[Any]) -> None:
        if not self.recovered.is_set():
            self.failures += 1
            raise ConnectionResetError("database restarting")
        await super().write(batch)


async def test_drain_waits_through_an_open_circuit_until_the_sink_is_back(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """stop(drain=True) with the circuit open keeps probing: every item written once, DLQ
    empty, within the 5 s deadline (+0.5 s)."""
    sink = OutageSink()
    dlq = dlq_at(tmp_path)
    coord = make(
        sink,
        workers=3,
        batch_size=10,
        dlq=dlq,
        retry_policy=RetryPolicy(max_attempts=2, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=2, half_open_after_sec=0.02),
    )
    await coord.start()
    await coord.submit_many(range(200))
    await wait_until(lambda: coord.circuit_breaker.state != "closed", what="circuit open")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.create_task(coord.stop(drain=True, timeout=5))
    failed_before = sink.failures
    await wait_until(lambda: sink.failures >= failed_before + 2, what="probes while stopping")
    assert not stopping.done()
    sink.recovered.set()
    await stopping
    assert loop.time() - started < 5.5
    assert sorted(sink.stored) == list(range(200))
    assert await dead_items(dlq) == []
    assert coord.stats().written == 200


async def test_exhausted_retries_wait_for_probes_while_the_circuit_is_open(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """A batch is not dead-lettered for exhausted retries while the circuit is open."""
    sink = OutageSink()
    dlq = dlq_at(tmp_path)
    coord = make(
        sink,
        workers=1,
        batch_size=5,
        dlq=dlq,
        retry_policy=RetryPolicy(max_attempts=1, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=1, half_open_after_sec=0.01),
    )
    async with coord:
        await coord.submit_many(range(5))
        await wait_until(lambda: sink.failures >= 4, what="several failed probes")
        sink.recovered.set()
    assert sorted(sink.stored) == list(range(5))
    assert await dead_items(dlq) == []


async def test_stop_without_drain_gives_up_batches_waiting_for_the_breaker_at_once(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """stop(drain=False, timeout=30) with the circuit open does not wait for probes: held
    batches go to the DLQ as circuit_open, queued ones as not_drained, well before 30 s."""
    sink = OutageSink()
    dlq = dlq_at(tmp_path)
    coord = make(
        sink,
        workers=2,
        batch_size=5,
        dlq=dlq,
        retry_policy=RetryPolicy(max_attempts=100, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=2, half_open_after_sec=60),
    )
    await coord.start()
    await coord.submit_many(range(30))
    await wait_until(lambda: coord.circuit_breaker.state == "open", what="circuit open")
    async with asyncio.timeout(5):
        await coord.stop(drain=False, timeout=30)
    records = await dlq.replay(max_records=100)
    reasons = {record.metadata["reason"] for record in records}
    assert reasons == {"circuit_open", "not_drained"}
    assert sorted(await dead_items(dlq)) == list(range(30))


# -- 2. only bad items fail ---------------------------------------------------------------


class PickySink(StoringSink):
    """Rejects (permanently) any batch holding a negative item; stores the rest."""

    async def write(self, batch: Sequence[int]) -> None:
        self.calls += 1
        if any(item < 0 for item in batch):
            raise PermanentSinkError("negative item")
        self.stored.extend(batch)


async def test_a_permanent_failure_is_split_until_only_bad_items_are_dead_lettered(
    tmp_path: Path,
) -> None:
    """1 bad item among 512: 511 written, the bad one dead-lettered, ~2*log2(n) extra calls."""
    sink = PickySink()
    dlq = dlq_at(tmp_path)
    items = list(range(512))
    items[300] = -1
    async with make(sink, workers=1, batch_size=512, capacity=512, dlq=dlq) as coord:
        await coord.submit_many(items)
    assert sorted(sink.stored) == sorted(i for i in items if i >= 0)
    assert await dead_items(dlq) == [-1]
    assert sink.calls <= 1 + 2 * math.log2(512)
    stats = coord.stats()
    assert (stats.written, stats.dead_lettered, stats.dropped) == (511, 1, {})


async def test_permanent_failures_do_not_open_the_circuit(tmp_path: Path) -> None:
    """Many permanently failing items leave the breaker closed (data errors say nothing
    about the sink's health)."""
    sink = PickySink()
    dlq = dlq_at(tmp_path)
    breaker = CircuitBreaker(failure_threshold=2, half_open_after_sec=60)
    async with make(sink, workers=1, batch_size=8, dlq=dlq, circuit_breaker=breaker) as coord:
        await coord.submit_many([-1, -2, -3, -4, 5, 6, 7, 8])
    assert breaker.state == "closed"
    assert sorted(await dead_items(dlq)) == [-4, -3, -2, -1]
    assert sorted(sink.stored) == [5, 6, 7, 8]


# -- 3. drop_oldest with a drop callback: bounded memory ----------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
async def test_drop_callback_backlog_stays_bounded() -> None:
    """1,000,000 drop_oldest submits with a slow async drop callback: RSS grows < 100 MB,
    the skipped callbacks are counted."""
    release = asyncio.Event()

    async def slow_drop(item: object) -> None:
        await release.wait()

    coord = make(
        StoringSink(),
        capacity=100,
        batch_size=100,
        workers=1,
        overflow_strategy="drop_oldest",
        drop_callback=slow_drop,
    )
    base = peak = rss_bytes()
    chunk = 10_000
    async with coord:
        for _ in range(1_000_000 // chunk):
            await coord.submit_many([bytes(200) for _ in range(chunk)])
            peak = max(peak, rss_bytes())
        release.set()
    stats = coord.stats()
    assert peak - base < 100 * 2**20, f"RSS grew {(peak - base) / 2**20:.0f} MB"
    assert stats.submitted == 1_000_000
    assert stats.drop_callbacks_skipped > 900_000
    assert stats.dropped["overflow"] + stats.written == 1_000_000


async def test_a_full_callback_backlog_skips_the_oldest_drop_callbacks_only() -> None:
    """Past max_pending, the oldest calls with arguments are skipped and counted; calls
    without arguments (watermark callbacks) are never skipped; order is kept."""
    calls: list[str] = []
    gate = asyncio.Event()

    async def on_high() -> None:
        await gate.wait()
        calls.append("high")

    runner = CallbackRunner("test", max_pending=3)
    runner.call(on_high)
    for i in range(10):
        runner.call(lambda item: calls.append(f"drop {item}"), i)
    runner.call(lambda: calls.append("low"))
    runner.call(lambda item: calls.append(f"drop {item}"), 10)
    gate.set()
    await runner.join()
    assert calls == ["high", "drop 8", "drop 9", "low", "drop 10"]
    assert (runner.skipped, runner.pending) == (8, 0)


# -- 6. the coordinator never reads a list a sink could change ----------------------------


class MeddlingSink(StoringSink):
    """Stores the batch, then changes the list it was handed."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    async def write(self, batch: Sequence[Any]) -> None:
        await super().write(batch)
        assert isinstance(batch, list)
        if self.how == "clear":
            batch.clear()
        elif self.how == "truncate":
            del batch[len(batch) // 2 :]
        else:
            batch.extend(["extra"] * 10)


@pytest.mark.parametrize("how", ["clear", "truncate", "extend"])
async def test_a_sink_changing_its_batch_cannot_break_conservation(
    how: str, tmp_path: Path
) -> None:
    """Whatever the sink does to its list, written == submitted == 100 and nothing else."""
    sink = MeddlingSink(how)
    async with make(sink, workers=2, batch_size=7, dlq=dlq_at(tmp_path)) as coord:
        await coord.submit_many(range(100))
    stats = coord.stats()
    assert sorted(sink.stored) == list(range(100))
    assert (stats.submitted, stats.written, stats.dead_lettered, stats.dropped) == (
        100,
        100,
        0,
        {},
    )


# -- 7. stop() bounded whatever the DLQ's filesystem does ---------------------------------


class HungDLQ(DeadLetterQueue[Any]):
    """A DLQ whose save never returns (a frozen filesystem)."""

    saves_started = 0

    async def save(self, items: Any, error: Any, metadata: Any = None) -> None:
        self.saves_started += 1
        await asyncio.Future()


class HangingSink:
    async def write(self, batch: Sequence[Any]) -> None:
        await asyncio.Future()


async def test_stop_is_bounded_when_the_dlq_save_never_returns(
    tmp_path: Path, wait_until: WaitUntil, log_messages: list[str]
) -> None:
    """stop(timeout=T) returns within T + 0.5 s with a hung DLQ; its items count as
    dlq_failed, logged at ERROR."""
    dlq = HungDLQ(tmp_path / "dlq.ndjson")
    coord = make(HangingSink(), workers=1, batch_size=5, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(20))
    await wait_until(lambda: coord.queue.size == 15)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await coord.stop(timeout=0.2)
    assert loop.time() - started < 0.7
    assert dlq.saves_started >= 1
    stats = coord.stats()
    assert stats.dropped == {"dlq_failed": 20}
    assert stats.state == "stopped"
    assert any(m.startswith("ERROR") and "abandoned" in m for m in log_messages)


class GatedDLQ(DeadLetterQueue[Any]):
    """A DLQ whose saves wait for ``gate`` (a filesystem that is slow, then recovers)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()

    async def save(self, items: Any, error: Any, metadata: Any = None) -> None:
        await self.gate.wait()
        await super().save(items, error, metadata)


async def test_a_save_abandoned_at_the_deadline_that_lands_later_is_recounted(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """A DLQ save abandoned at the stop deadline that completes later moves its items from
    dlq_failed to dead_lettered: each item stays in exactly one place."""
    dlq = GatedDLQ(tmp_path / "dlq.ndjson")
    coord = make(HangingSink(), workers=1, batch_size=5, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(20))
    await wait_until(lambda: coord.queue.size == 15)
    await coord.stop(timeout=0.05)
    assert coord.stats().dropped == {"dlq_failed": 20}
    dlq.gate.set()
    await wait_until(lambda: coord.stats().dead_lettered == 20)
    assert coord.stats().dropped == {}
    assert sorted(await dead_items(dlq)) == list(range(20))


async def test_dead_lettering_at_the_deadline_encodes_off_the_event_loop(
    tmp_path: Path, wait_until: WaitUntil
) -> None:
    """300,000 items left at the stop deadline are encoded in another thread, none on the
    loop's thread, in records of at most 10,000 items, and the DLQ holds them all."""
    loop_thread = threading.get_ident()
    on_loop = 0

    def encoder(item: int) -> int:
        nonlocal on_loop
        on_loop += threading.get_ident() == loop_thread
        return item

    dlq: DeadLetterQueue[int] = DeadLetterQueue(tmp_path / "dlq.ndjson", encoder=encoder)
    coord = make(HangingSink(), workers=1, batch_size=10, capacity=300_000, dlq=dlq)
    await coord.start()
    await coord.submit_many(range(300_000))
    await wait_until(lambda: coord.queue.size == 300_000 - 10)
    worst_lag = 0.0

    async def ticker() -> None:  # the longest the loop went without coming back to us
        nonlocal worst_lag
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0)
            worst_lag = max(worst_lag, loop.time() - before)

    ticking = asyncio.create_task(ticker())
    await coord.stop(timeout=0.05)
    await wait_until(lambda: coord.stats().dead_lettered == 300_000)  # may land after stop
    ticking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticking
    assert on_loop == 0, f"{on_loop} items encoded on the loop; worst lag {worst_lag:.3f} s"
    records = await dlq.replay(max_records=10**6)
    assert max(len(record.items) for record in records) <= 10_000
    assert sum(len(record.items) for record in records) == 300_000


# -- 8. NaN and infinity ------------------------------------------------------------------


BAD_NUMBERS = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=str)
@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda v: make(StoringSink(), flush_interval=v), "flush_interval"),
        (lambda v: make(StoringSink(), capacity=v), "capacity"),
        (lambda v: make(StoringSink(), high_watermark=v), "high_watermark"),
        (lambda v: make(StoringSink(), low_watermark=v), "low_watermark"),
        (lambda v: make(StoringSink(), batch_size=v), "batch_size"),
        (lambda v: make(StoringSink(), workers=v), "workers"),
        (lambda v: RetryPolicy(initial_backoff_ms=v), "initial_backoff_ms"),
        (lambda v: RetryPolicy(max_backoff_ms=v), "max_backoff_ms"),
        (lambda v: RetryPolicy(backoff_multiplier=v), "backoff_multiplier"),
        (lambda v: RetryPolicy(max_attempts=v), "max_attempts"),
        (lambda v: CircuitBreaker(half_open_after_sec=v), "half_open_after_sec"),
        (lambda v: CircuitBreaker(failure_threshold=v), "failure_threshold"),
    ],
)
def test_nan_or_infinity_is_a_config_error_naming_the_argument(
    build: Callable[[float], object], name: str, value: float
) -> None:
    """NaN or +-infinity in any numeric argument raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=name):
        build(value)


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=str)
@pytest.mark.parametrize(
    "bounds", [{}, {"lo": 0}, {"hi": 10}, {"lo": 0, "hi": math.inf, "hi_open": False}], ids=str
)
def test_check_range_rejects_nan_and_infinity_whatever_the_bounds(
    value: float, bounds: dict[str, float]
) -> None:
    """check_range raises ConfigError naming the argument for NaN and +-infinity."""
    with pytest.raises(ConfigError, match=r"^timeout must "):
        check_range("timeout", value, **bounds)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "variable",
    [
        "FLUSH_INTERVAL",
        "RETRY_INITIAL_BACKOFF_MS",
        "RETRY_BACKOFF_MULTIPLIER",
        "BREAKER_HALF_OPEN_AFTER_SEC",
        "RETRY_MAX_BACKOFF_MS",
    ],
)
def test_nan_or_infinity_in_a_setting_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    """MDS_* = nan / inf raises ConfigError naming the variable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"MDS_{variable}", value)
    with pytest.raises(ConfigError, match=f"MDS_{variable}"):
        CoordinatorRuntimeSettings()


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=str)
async def test_stop_with_a_nan_timeout_raises_and_leaves_the_coordinator_running(
    value: float,
) -> None:
    """stop(timeout=nan) raises ConfigError naming timeout; a later stop() works."""
    coord = make(StoringSink())
    await coord.start()
    with pytest.raises(ConfigError, match="timeout"):
        await coord.stop(timeout=value)
    assert coord.state == "running"
    await coord.stop()


def test_batch_size_above_capacity_is_a_config_error() -> None:
    """batch_size > capacity raises ConfigError naming batch_size and capacity."""
    with pytest.raises(ConfigError, match=r"batch_size .*capacity \(10\)"):
        make(StoringSink(), capacity=10, batch_size=11)
    with pytest.raises(ConfigError, match="MDS_BATCH_SIZE"):
        CoordinatorRuntimeSettings(capacity=10, batch_size=11)


def test_default_batch_size_fits_a_small_capacity() -> None:
    """Without batch_size, a capacity below 500 gives batches of at most capacity."""
    coord = make(StoringSink(), capacity=10)
    assert coord._batch_size == 10


# -- 9. a worker that ends unexpectedly is replaced ---------------------------------------


class Fatal(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


class FatalOnceSink(StoringSink):
    """Raises ``Fatal`` on its first ``fatal_calls`` calls."""

    def __init__(self, fatal_calls: int) -> None:
        super().__init__()
        self.fatal_calls = fatal_calls

    async def write(self, batch: Sequence[Any]) -> None:
        if self.fatal_calls:
            self.fatal_calls -= 1
            raise Fatal("not an Exception")
        await super().write(batch)


async def test_a_worker_killed_by_a_base_exception_is_replaced_and_its_batch_kept(
    tmp_path: Path, log_messages: list[str], wait_until: WaitUntil
) -> None:
    """A sink raising a BaseException: the worker is replaced (counted in stats and in
    mds_worker_restarts_total, logged), its batch is retried and written once, and the
    coordinator keeps its workers."""
    sink = FatalOnceSink(fatal_calls=3)
    dlq = dlq_at(tmp_path)
    coord = make(sink, workers=2, batch_size=5, dlq=dlq)
    async with coord:
        await coord.submit_many(range(50))
        await wait_until(lambda: coord.stats().written == 50, what="all written")
        assert coord.health().workers_alive == 2
        restarts = REGISTRY.get_sample_value(
            "mds_worker_restarts_total", {"coordinator_id": coord.coord_id}
        )
        assert restarts == 3
    stats = coord.stats()
    assert sorted(sink.stored) == list(range(50))
    assert (stats.written, stats.dead_lettered, stats.worker_restarts) == (50, 0, 3)
    assert sum("ended unexpectedly" in m for m in log_messages) == 3


async def test_a_sink_always_raising_a_base_exception_exhausts_retries_not_workers(
    tmp_path: Path,
) -> None:
    """A BaseException on every call counts as failed attempts: the batch is dead-lettered
    after max_attempts, one restart per attempt, and the workers live on."""
    sink = FatalOnceSink(fatal_calls=10**9)
    dlq = dlq_at(tmp_path)
    retry = RetryPolicy(max_attempts=3, initial_backoff_ms=0)
    breaker = CircuitBreaker(failure_threshold=1000)
    coord = make(
        sink, workers=1, batch_size=4, dlq=dlq, retry_policy=retry, circuit_breaker=breaker
    )
    async with coord:
        await coord.submit_many(range(4))
    assert sorted(await dead_items(dlq)) == [0, 1, 2, 3]
    assert coord.stats().worker_restarts == 3


# -- 11. mistakes at construction, abandoned coordinators ---------------------------------


def test_a_dlq_given_as_a_path_is_a_config_error(tmp_path: Path) -> None:
    """dlq="dlq.ndjson" raises ConfigError naming dlq."""
    with pytest.raises(ConfigError, match="dlq must be a DeadLetterQueue"):
        make(StoringSink(), dlq=str(tmp_path / "dlq.ndjson"))


class StatefulSink(StoringSink):
    def __init__(self, state: str) -> None:
        super().__init__()
        self.state = state


@pytest.mark.parametrize("state", ["new", "closed"])
async def test_start_refuses_a_sink_that_is_not_open(state: str) -> None:
    """start() with a sink whose state is new or closed raises ConfigError naming the sink."""
    coord = make(StatefulSink(state))
    with pytest.raises(ConfigError, match=f"sink .* is {state}: open it"):
        await coord.start()
    assert coord.state == "new"


class OpenFlagSink(StoringSink):
    """A sink telling whether it is open through ``is_open`` only (it has no ``state``)."""

    def __init__(self, is_open: bool) -> None:
        super().__init__()
        self.is_open = is_open


async def test_start_refuses_a_sink_whose_is_open_is_false() -> None:
    """start() with a sink whose only word on it is ``is_open = False`` raises ConfigError
    naming the sink and leaves the coordinator new; once it says True, start() goes on."""
    sink = OpenFlagSink(False)
    assert not hasattr(sink, "state")
    coord = make(sink)
    with pytest.raises(ConfigError, match=r"sink .* is not open: open it"):
        await coord.start()
    assert coord.state == "new"
    sink.is_open = True
    async with coord:
        assert coord.state == "running"


async def abandon(coord: WriteCoordinator[Any]) -> None:
    await coord.start()
    await coord.submit_many(range(30))


def test_a_coordinator_collected_with_items_queued_warns(log_messages: list[str]) -> None:
    """A running coordinator dropped with 30 items queued emits a ResourceWarning AND an
    ERROR log line, both naming the count."""
    coord_id = f"gc-{uuid.uuid4().hex[:8]}"
    coord = make(HangingSink(), workers=1, batch_size=10, coord_id=coord_id)
    asyncio.run(abandon(coord))
    with pytest.warns(ResourceWarning, match="30 items queued or in flight"):
        del coord
        gc.collect()
    expected = f"ERROR: coordinator {coord_id!r} garbage-collected without stop() with 30 items"
    assert any(m.startswith(expected) for m in log_messages), log_messages


def test_a_coordinator_running_at_interpreter_exit_logs_an_error() -> None:
    """A coordinator left running at exit with items queued logs an ERROR with the count and
    emits a ResourceWarning (shown because the child runs with -W always::ResourceWarning)."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from loguru import logger
        from market_data_store.coordinator import WriteCoordinator, FeedbackBus

        logger.remove()
        logger.add(sys.stderr, level="ERROR", format="{level}: {message}")
        logger.enable("market_data_store")

        class Hang:
            async def write(self, batch):
                await asyncio.Future()

        coord = WriteCoordinator(sink=Hang(), workers=1, batch_size=10, bus=FeedbackBus())
        loop = asyncio.new_event_loop()
        loop.run_until_complete(coord.start())
        loop.run_until_complete(coord.submit_many(range(50)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR: coordinator 'default' still running at interpreter exit with 50 items" in (
        done.stderr
    )
    assert (
        "ResourceWarning: coordinator 'default' still running at interpreter exit with 50 items"
        in done.stderr
    ), done.stderr
