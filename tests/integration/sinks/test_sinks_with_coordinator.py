"""Bar sinks behind a WriteCoordinator: dead-lettering, DLQ replay, a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import invalid_bar, make_bars, wait_until

from market_data_store.coordinator import (
    CircuitBreaker,
    ConfigError,
    DeadLetterQueue,
    RetryPolicy,
    WriteCoordinator,
)
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink
from market_data_store.testing.postgres import PostgresServer

SinkFactory = Callable[..., Any]
NO_WAIT_RETRY = RetryPolicy(max_attempts=3, initial_backoff_ms=0, max_backoff_ms=0)


class RecordingSink:
    """Passes batches to ``inner`` and records each call's size and outcome."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, str]] = []

    async def write(self, batch: Sequence[Bar]) -> None:
        try:
            await self.inner.write(batch)
        except Exception as exc:
            self.calls.append((len(batch), type(exc).__name__))
            raise
        self.calls.append((len(batch), "ok"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_sink(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> SinkFactory:
    """Builds an unopened sink of the backend under test (keyword options per backend)."""
    if backend == "sqlite":
        return lambda **kw: SqliteBarsSink(tmp_path / "bars.db", **kw.get("sqlite", {}))
    dsn = request.getfixturevalue("pg_dsn")
    return lambda **kw: PostgresBarsSink(dsn, **kw.get("postgres", {}))


@contextlib.asynccontextmanager
async def writes_blocked(sink: Any) -> AsyncIterator[None]:
    """Another connection holds a lock that makes the sink's writes time out (retryable)."""
    if isinstance(sink, SqliteBarsSink):
        conn = sqlite3.connect(sink.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(sink.dsn)
    try:
        await pg.execute("BEGIN; LOCK TABLE bars IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        pg.terminate()  # ends the transaction; the server may have dropped it already


def coordinator(sink: Any, dlq_path: Path, **overrides: Any) -> WriteCoordinator[Any]:
    options: dict[str, Any] = {
        "workers": 1,
        "batch_size": 100,
        "flush_interval": 0.01,
        "retry_policy": NO_WAIT_RETRY,
        "circuit_breaker": CircuitBreaker(failure_threshold=1000, half_open_after_sec=0.05),
        "dlq": DeadLetterQueue(dlq_path),
    }
    options.update(overrides)
    return WriteCoordinator(sink=sink, **options)


async def test_invalid_bars_are_dead_lettered_not_retried(
    open_sink: SinkFactory, tmp_path: Path
) -> None:
    """An invalid bar is dead-lettered after one attempt although 50 were allowed."""
    dlq_path = tmp_path / "dlq.ndjson"
    bad = invalid_bar(low=1e9)
    async with open_sink() as sink:
        recorder = RecordingSink(sink)
        retry = RetryPolicy(max_attempts=50, initial_backoff_ms=0, max_backoff_ms=0)
        coord = coordinator(recorder, dlq_path, retry_policy=retry)
        async with coord:
            await coord.submit_many(make_bars(50))
            await wait_until(lambda: _written(coord, 50))
            await coord.submit(bad)
        assert await sink.count() == 50
    records = await DeadLetterQueue[Any](dlq_path).replay()
    assert len(records) == 1
    assert records[0].items == [bad.model_dump(mode="json")]
    assert "PermanentSinkError" in records[0].error
    assert recorder.calls.count((1, "PermanentSinkError")) == 1
    assert coord.stats().dead_lettered == 1


async def test_dlq_round_trip_stores_each_bar_exactly_once(
    open_sink: SinkFactory, tmp_path: Path
) -> None:
    """Dead-lettered bars replayed through a coordinator (twice) are stored exactly once."""
    dlq_path = tmp_path / "dlq.ndjson"
    bars = make_bars(120)
    options = {"sqlite": {"busy_timeout_ms": 0}, "postgres": {"command_timeout": 0.2}}
    async with open_sink(**options) as sink:
        async with writes_blocked(sink):
            async with coordinator(sink, dlq_path) as failing:
                await failing.submit_many(bars)
                await wait_until(lambda: _dead_lettered(failing, len(bars)))
        assert await sink.count() == 0
        records = await DeadLetterQueue[Any](dlq_path).replay()
        assert all(r.metadata.get("reason") == "retries_exhausted" for r in records)
        replayed = [item for record in records for item in record.items]
        assert sorted(replayed, key=_key) == sorted(
            (bar.model_dump(mode="json") for bar in bars), key=_key
        )
        for _ in range(2):  # the second replay must change nothing
            async with coordinator(sink, tmp_path / "dlq-replay.ndjson") as replaying:
                await replaying.submit_many(replayed)
            assert replaying.stats().written == len(bars)
            assert await sink.count() == len(bars)
    assert not (tmp_path / "dlq-replay.ndjson").exists()


@pytest.mark.postgres
async def test_postgres_restart_mid_run_loses_nothing(
    pg_server: PostgresServer, pg_dsn: str, tmp_path: Path
) -> None:
    """A PostgreSQL restart mid-run: failed batches are retried, every bar stored once."""
    dlq_path = tmp_path / "dlq.ndjson"
    bars = make_bars(3000, symbols=20)
    retry = RetryPolicy(max_attempts=200, initial_backoff_ms=10, max_backoff_ms=100)
    async with PostgresBarsSink(pg_dsn, max_size=4) as sink:
        coord = coordinator(sink, dlq_path, workers=4, batch_size=100, retry_policy=retry)
        async with coord:
            await coord.submit_many(bars[:1000])
            await wait_until(lambda: _written(coord, 1000))
            async with writes_blocked(sink):  # holds the next batches in flight...
                await coord.submit_many(bars[1000:2000])
                await wait_until(lambda: _lock_waiters(pg_dsn))
                restart = asyncio.create_task(asyncio.to_thread(pg_server.restart, "immediate"))
                await coord.submit_many(bars[2000:])  # ...and more arrive while it restarts
                await restart
        assert coord.stats().write_errors >= 1
        assert coord.stats().written == len(bars)
        assert coord.stats().dead_lettered == 0
        assert await sink.count() == len(bars)
    assert not dlq_path.exists()


async def test_only_the_invalid_bars_of_a_batch_are_dead_lettered(
    open_sink: SinkFactory, tmp_path: Path
) -> None:
    """1,000 valid bars with 3 invalid ones mixed in (as dicts), batch 500: 1,000 rows
    stored, exactly the 3 invalid in the DLQ."""
    dlq_path = tmp_path / "dlq.ndjson"
    items: list[dict[str, Any]] = [bar.model_dump(mode="json") for bar in make_bars(1000)]
    invalid = [
        {**items[0], "symbol": "BAD1", "volume": -5},
        {**items[0], "symbol": "BAD2", "low": 1e9},
        {key: value for key, value in items[0].items() if key != "close"} | {"symbol": "BAD3"},
    ]
    for position, bad in zip((17, 503, 990), invalid, strict=True):
        items.insert(position, bad)
    async with open_sink() as sink:
        coord = coordinator(sink, dlq_path, workers=2, batch_size=500, capacity=2000)
        async with coord:
            await coord.submit_many(items)
        assert await sink.count() == 1000
    dead = [
        item for record in await DeadLetterQueue[Any](dlq_path).replay() for item in record.items
    ]
    assert sorted(dead, key=lambda item: item["symbol"]) == invalid
    stats = coord.stats()
    assert (stats.written, stats.dead_lettered, stats.dropped) == (1000, 3, {})


@pytest.mark.postgres
async def test_postgres_restarted_during_a_drain_gets_every_bar(
    pg_server: PostgresServer, pg_dsn: str, tmp_path: Path
) -> None:
    """PostgreSQL down with the circuit open when stop(drain=True, timeout=10) begins, back
    mid-drain: every bar stored once, nothing dead-lettered, stop within the deadline."""
    dlq_path = tmp_path / "dlq.ndjson"
    bars = make_bars(3000, symbols=20)
    retry = RetryPolicy(max_attempts=3, initial_backoff_ms=10, max_backoff_ms=50)
    breaker = CircuitBreaker(failure_threshold=2, half_open_after_sec=0.05)
    async with PostgresBarsSink(pg_dsn, max_size=2, command_timeout=2) as sink:
        coord = coordinator(
            sink, dlq_path, workers=2, batch_size=100, retry_policy=retry, circuit_breaker=breaker
        )
        await coord.start()
        await coord.submit_many(bars[:1000])
        await wait_until(lambda: _written(coord, 1000))
        await asyncio.to_thread(pg_server.stop, "immediate")
        await coord.submit_many(bars[1000:])
        await wait_until(lambda: _circuit_open(coord))
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(coord.stop(drain=True, timeout=10))
        await asyncio.to_thread(pg_server.start)  # back while the coordinator drains
        await stopping
        assert loop.time() - started < 10.5
        assert coord.stats().written == len(bars)
        assert coord.stats().dead_lettered == 0
        assert await sink.count() == len(bars)
    assert not dlq_path.exists()


async def _circuit_open(coord: WriteCoordinator[Any]) -> bool:
    return coord.circuit_breaker.state != "closed"


@pytest.mark.parametrize(
    "make_sink",
    [
        lambda path: SqliteBarsSink(path / "bars.db"),
        lambda path: PostgresBarsSink("postgresql://writer@127.0.0.1:1/never_opened"),
    ],
    ids=["sqlite", "postgres"],
)
async def test_start_refuses_a_sink_never_opened(make_sink: SinkFactory, tmp_path: Path) -> None:
    """A real sink not opened before start(): a ConfigError naming the sink, not a DLQ full
    of failed batches later."""
    coord = coordinator(make_sink(tmp_path), tmp_path / "dlq.ndjson")
    with pytest.raises(ConfigError, match="is new: open it"):
        await coord.start()


async def test_start_refuses_a_closed_sink(tmp_path: Path) -> None:
    """A SQLite sink already closed when start() runs raises ConfigError naming the sink."""
    sink = SqliteBarsSink(tmp_path / "bars.db")
    async with sink:
        pass
    with pytest.raises(ConfigError, match="is closed: open it"):
        await coordinator(sink, tmp_path / "dlq.ndjson").start()


async def _written(coord: WriteCoordinator[Any], n: int) -> bool:
    return coord.stats().written >= n


async def _dead_lettered(coord: WriteCoordinator[Any], n: int) -> bool:
    return coord.stats().dead_lettered >= n


async def _lock_waiters(dsn: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) > 0 FROM pg_locks WHERE NOT granted"))
    finally:
        await conn.close()


def _key(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["vendor"], item["symbol"], item["timeframe"], item["ts"])
