"""PostgresBarsSink against a throwaway PostgreSQL server (see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sink_helpers import invalid_bar, make_bars, wait_until

from market_data_store.coordinator.types import (
    ConfigError,
    PermanentSinkError,
    RetryableSinkError,
    Sink,
)
from market_data_store.sinks import Bar, PostgresBarsSink, SinkState
from market_data_store.testing.postgres import PostgresServer

pytestmark = pytest.mark.postgres
asyncpg = pytest.importorskip("asyncpg")


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresBarsSink]:
    async with PostgresBarsSink(pg_dsn, name="pg-test") as opened:
        yield opened


@pytest.fixture
async def reader(pg_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def stored(conn: Any, *, with_xmin: bool = False) -> list[tuple[Any, ...]]:
    xmin = ", xmin::text" if with_xmin else ""
    records = await conn.fetch(
        f"SELECT vendor, symbol, timeframe, ts, open, high, low, close, volume{xmin} "
        "FROM bars ORDER BY vendor, symbol, timeframe, ts"
    )
    return [tuple(record) for record in records]


def as_bars(rows: list[tuple[Any, ...]]) -> set[Bar]:
    fields = ("vendor", "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume")
    return {Bar(**dict(zip(fields, row[:9], strict=True))) for row in rows}


async def test_open_creates_a_plain_table_without_timescaledb(
    sink: PostgresBarsSink, reader: Any
) -> None:
    """Opening creates the bars table; without the timescaledb extension it stays plain."""
    if await reader.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    ):
        pytest.skip("timescaledb is installed here: the plain-table path is not taken")
    assert await reader.fetchval("SELECT to_regclass('bars') IS NOT NULL")
    assert sink.is_hypertable is False
    assert await sink.count() == 0
    assert isinstance(sink, Sink)


async def test_requiring_a_hypertable_without_timescaledb_fails(pg_dsn: str, reader: Any) -> None:
    """hypertable=True fails to open where the timescaledb extension is unavailable."""
    if await reader.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    ):
        pytest.skip("timescaledb is installed here")
    sink = PostgresBarsSink(pg_dsn, hypertable=True)
    with pytest.raises(RuntimeError, match="timescaledb"):
        await sink.open()
    assert sink.state is SinkState.NEW
    await sink.close()


async def test_written_bars_read_back_equal(sink: PostgresBarsSink, reader: Any) -> None:
    """Written bars are stored once, ts as integer epoch microseconds, and read back equal."""
    bars = make_bars(60)
    await sink.write(bars)
    assert await sink.count() == 60
    assert as_bars(await stored(reader)) == set(bars)


async def test_replayed_batch_changes_nothing(sink: PostgresBarsSink, reader: Any) -> None:
    """A replayed batch leaves every row untouched: same values, same xmin (no rewrite)."""
    bars = make_bars(40)
    await sink.write(bars)
    before = await stored(reader, with_xmin=True)
    await sink.write(bars)
    await sink.write(list(reversed(bars)))
    assert await stored(reader, with_xmin=True) == before
    assert await sink.count() == 40


async def test_a_batch_overlapping_stored_rows_is_merged(
    sink: PostgresBarsSink, reader: Any
) -> None:
    """A batch overlapping stored keys is merged: new rows added, changed row updated."""
    bars = make_bars(30)
    await sink.write(bars[:20])
    corrected = bars[0].model_copy(update={"volume": 99.0})
    await sink.write([corrected, *bars[1:]])
    assert as_bars(await stored(reader)) == {corrected, *bars[1:]}


async def test_a_key_twice_in_one_batch_keeps_the_last(sink: PostgresBarsSink, reader: Any) -> None:
    """The same key twice in one batch stores the later bar."""
    bar = make_bars(1)[0]
    later = bar.model_copy(update={"volume": 7.0})
    await sink.write([bar, later])
    assert as_bars(await stored(reader)) == {later}


async def test_dicts_from_a_dead_letter_replay_are_accepted(
    sink: PostgresBarsSink, reader: Any
) -> None:
    """Items in their JSON form (as a DLQ replay yields them) are validated and stored."""
    bars = make_bars(5)
    await sink.write([bar.model_dump(mode="json") for bar in bars])  # type: ignore[misc]
    assert as_bars(await stored(reader)) == set(bars)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("not a bar", id="string"),
        pytest.param({"symbol": "AAPL"}, id="incomplete-dict"),
        pytest.param(invalid_bar(low=1e9), id="low-above-body"),
        pytest.param(invalid_bar(volume=-1.0), id="negative-volume"),
        pytest.param(invalid_bar(close=float("nan")), id="nan-close"),
        pytest.param(invalid_bar(high=float("inf")), id="infinite-high"),
        pytest.param(invalid_bar(open="ten"), id="text-price"),
        pytest.param(invalid_bar(ts=invalid_bar().ts.replace(tzinfo=None)), id="naive-ts"),
    ],
)
async def test_a_batch_holding_an_invalid_bar_fails_for_good_and_writes_nothing(
    sink: PostgresBarsSink, reader: Any, bad: Any
) -> None:
    """A batch with an invalid bar raises PermanentSinkError and stores none of its rows."""
    with pytest.raises(PermanentSinkError):
        await sink.write([*make_bars(20), bad])
    assert await stored(reader) == []
    await sink.write(make_bars(3))
    assert await sink.count() == 3


async def test_an_invalid_bar_on_the_merge_path_fails_for_good(
    sink: PostgresBarsSink, reader: Any
) -> None:
    """An invalid bar on the merge path is permanent too and the merge is rolled back."""
    bars = make_bars(10)
    await sink.write(bars)
    before = await stored(reader)
    with pytest.raises(PermanentSinkError):
        await sink.write([*bars, *make_bars(5, offset=10), invalid_bar(low=1e9)])
    assert await stored(reader) == before


async def test_a_server_restart_is_retryable_and_the_pool_recovers(
    pg_server: PostgresServer, pg_dsn: str
) -> None:
    """A write in flight during a restart is retryable; the retry succeeds, nothing lost."""
    async with PostgresBarsSink(pg_dsn, min_size=2, max_size=2) as sink:
        await asyncio.gather(sink.write(make_bars(10)), sink.write(make_bars(10, offset=10)))
        locker = await asyncio.wait_for(asyncpg.connect(pg_dsn), 10)
        try:
            await locker.execute("BEGIN; LOCK TABLE bars IN ACCESS EXCLUSIVE MODE")
            in_flight = asyncio.create_task(sink.write(make_bars(10, offset=20)))
            await wait_until(
                lambda: locker.fetchval("SELECT count(*) > 0 FROM pg_locks WHERE NOT granted")
            )
            # "immediate" kills the locker without releasing its lock, so the write cannot
            # slip through between the two sessions' ends.
            await asyncio.to_thread(pg_server.restart, "immediate")
            with pytest.raises(RetryableSinkError):
                await asyncio.wait_for(in_flight, 10)
        finally:
            locker.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            try:
                await sink.write(make_bars(10, offset=20))
                break
            except RetryableSinkError as exc:
                assert loop.time() < deadline, f"still failing after the restart: {exc}"
                await asyncio.sleep(0.05)
        assert await sink.count() == 30


async def test_an_unreachable_server_is_retryable(pg_server: PostgresServer, pg_dsn: str) -> None:
    """With the server down, write() raises RetryableSinkError (not a permanent error)."""
    async with PostgresBarsSink(pg_dsn, min_size=1, max_size=1) as sink:
        await asyncio.to_thread(pg_server.stop)
        try:
            for _ in range(2):  # the broken pooled connection, then a refused reconnect
                with pytest.raises(RetryableSinkError):
                    await sink.write(make_bars(3))
        finally:
            await asyncio.to_thread(pg_server.start)
        await sink.write(make_bars(3))
        assert await sink.count() == 3


async def test_rows_survive_a_new_sink(pg_dsn: str) -> None:
    """A second sink on the same database sees the rows and keeps the existing table."""
    async with PostgresBarsSink(pg_dsn) as first:
        await first.write(make_bars(9))
    async with PostgresBarsSink(pg_dsn) as second:
        assert await second.count() == 9


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("command_timeout", float("nan")),
        ("command_timeout", 0.0),
        ("command_timeout", float("inf")),
        ("close_timeout", -1.0),
        ("close_timeout", float("nan")),
    ],
)
def test_bad_timeouts_are_rejected_at_construction_naming_the_argument(
    option: str, value: float
) -> None:
    """A timeout that is NaN, infinite, zero or negative is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=rf"{option} must .*satisf\w+ 0 < {option}"):
        PostgresBarsSink("postgresql://x", **{option: value})


async def test_open_sets_up_one_connection_per_default_worker(sink: PostgresBarsSink) -> None:
    """By default the pool opens all 4 connections (the coordinator's default workers) at once."""
    assert sink._pool.get_size() == 4
    assert sink._pool.get_idle_size() == 4


def test_bad_pool_sizes_are_rejected_at_construction() -> None:
    """min_size > max_size or max_size < 1 fails at construction."""
    with pytest.raises(ValueError, match="min_size"):
        PostgresBarsSink("postgresql://x", min_size=3, max_size=2)
    with pytest.raises(ValueError, match="max_size"):
        PostgresBarsSink("postgresql://x", min_size=0, max_size=0)


async def test_the_binary_copy_encoding_round_trips_edge_values(sink: PostgresBarsSink) -> None:
    """The sink's COPY encoder round trips edge timestamps, zones, non-ASCII text and prices."""
    zone = timezone(timedelta(hours=-5, minutes=-30))
    stamps = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2024, 3, 10, 1, 59, 59, 123_456, tzinfo=zone),
        datetime(2262, 4, 11, 23, 47, 16, 854_775, tzinfo=UTC),
    ]
    bars = [
        Bar(
            vendor="börse-ß",
            symbol=f"ÄB{i}",
            timeframe="1m",
            ts=ts,
            open=1e-300,
            high=1.7e308,
            low=-1.7e308,
            close=-0.0,
            volume=12,
        )
        for i, ts in enumerate(stamps)
    ]
    await sink.write(bars)
    read = [bar for b in bars for bar in await sink.read(b.symbol, "1m")]
    assert read == bars
    assert all(bar.ts.tzinfo is UTC for bar in read)


async def test_iter_bars_holds_at_most_one_page_of_rows(
    sink: PostgresBarsSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iter_bars fetches page_size rows per query (bounded memory) and yields every bar once."""
    bars = make_bars(100, symbols=1)
    await sink.write(bars)
    fetched: list[int] = []
    real_fetch = sink._fetch

    async def counting_fetch(sql: str, *args: Any) -> list[Any]:
        rows = await real_fetch(sql, *args)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(sink, "_fetch", counting_fetch)
    got = [bar async for bar in sink.iter_bars("SYM0", "1m", page_size=7)]
    assert got == bars
    assert max(fetched) == 7
    assert sum(fetched) == 100
