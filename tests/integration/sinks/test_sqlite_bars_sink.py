"""SqliteBarsSink against a real SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import invalid_bar, make_bars

from market_data_store.coordinator import default_retry_classifier
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError, Sink
from market_data_store.sinks import Bar, SinkState, SinkStateError, SqliteBarsSink
from market_data_store.sinks.sqlite import ts_from_epoch_us


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bars.db"


@pytest.fixture
async def sink(db_path: Path) -> AsyncIterator[SqliteBarsSink]:
    async with SqliteBarsSink(db_path, name="sqlite-test") as opened:
        yield opened


@pytest.fixture
def reader(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the same file, as another process would have."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def stored(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM bars ORDER BY vendor, symbol, timeframe, ts").fetchall()


def as_bar(row: tuple[Any, ...]) -> Bar:
    vendor, symbol, timeframe, ts, o, h, lo, c, volume = row
    return Bar(
        vendor=vendor,
        symbol=symbol,
        timeframe=timeframe,
        ts=ts_from_epoch_us(ts),
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=volume,
    )


async def test_open_creates_the_table_in_wal_mode(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """Opening creates the bars table and switches the database to WAL."""
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stored(reader) == []
    assert await sink.count() == 0
    assert isinstance(sink, Sink)


async def test_written_bars_read_back_equal(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """Written bars are stored once, ts as integer epoch microseconds, and read back equal."""
    bars = make_bars(50)
    await sink.write(bars)
    rows = stored(reader)
    assert await sink.count() == 50
    assert all(isinstance(row[3], int) for row in rows)
    assert rows[0][3] == int(bars[0].ts.timestamp()) * 1_000_000 + bars[0].ts.microsecond
    key = lambda b: (b.vendor, b.symbol, b.timeframe, b.ts)  # noqa: E731
    assert [as_bar(row) for row in rows] == sorted(bars, key=key)


async def test_replayed_batch_leaves_rows_as_they_were(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """Writing the same batch again changes neither the row count nor any value."""
    bars = make_bars(40)
    await sink.write(bars)
    before = stored(reader)
    await sink.write(bars)
    await sink.write(list(reversed(bars)))
    assert stored(reader) == before
    assert await sink.count() == 40


async def test_a_corrected_bar_replaces_the_stored_one(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """A bar with an existing key overwrites the stored values (last write wins)."""
    bar = make_bars(1)[0]
    await sink.write([bar])
    corrected = bar.model_copy(update={"close": bar.high, "volume": 5.0})
    await sink.write([corrected, bar.model_copy(update={"volume": 6.0})])
    assert [as_bar(row) for row in stored(reader)] == [bar.model_copy(update={"volume": 6.0})]


async def test_dicts_from_a_dead_letter_replay_are_accepted(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """Items in their JSON form (as a DLQ replay yields them) are validated and stored."""
    bars = make_bars(5)
    await sink.write([bar.model_dump(mode="json") for bar in bars])  # type: ignore[misc]
    assert {as_bar(row) for row in stored(reader)} == set(bars)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("not a bar", id="string"),
        pytest.param({"symbol": "AAPL"}, id="incomplete-dict"),
        pytest.param(invalid_bar(low=1e9), id="low-above-body"),
        pytest.param(invalid_bar(volume=-1.0), id="negative-volume"),
        pytest.param(invalid_bar(close=float("nan")), id="nan-close"),
        pytest.param(invalid_bar(high=float("inf")), id="infinite-high"),
        pytest.param(invalid_bar(ts=invalid_bar().ts.replace(tzinfo=None)), id="naive-ts"),
    ],
)
async def test_a_batch_holding_an_invalid_bar_fails_for_good_and_writes_nothing(
    sink: SqliteBarsSink, reader: sqlite3.Connection, bad: Any
) -> None:
    """A batch with an invalid bar raises PermanentSinkError and stores none of its rows."""
    with pytest.raises(PermanentSinkError):
        await sink.write([*make_bars(20), bad])
    assert stored(reader) == []
    await sink.write(make_bars(3))  # the sink is still usable
    assert await sink.count() == 3


async def test_the_error_names_the_invalid_item(sink: SqliteBarsSink) -> None:
    """The permanent error says which item of the batch is not a bar."""
    with pytest.raises(PermanentSinkError, match="item 2 of the batch"):
        await sink.write([*make_bars(2), {"symbol": ""}])  # type: ignore[list-item]


async def test_a_locked_database_is_retryable(db_path: Path, reader: sqlite3.Connection) -> None:
    """A locked database raises RetryableSinkError; the batch succeeds once unlocked."""
    bars = make_bars(10)
    async with SqliteBarsSink(db_path, busy_timeout_ms=0) as sink:
        reader.execute("BEGIN IMMEDIATE")
        with pytest.raises(RetryableSinkError, match="locked"):
            await sink.write(bars)
        reader.execute("ROLLBACK")
        await sink.write(bars)
        assert await sink.count() == 10


async def test_database_work_does_not_block_the_event_loop(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    """A write waiting on a lock leaves the event loop free to release that lock."""
    async with SqliteBarsSink(db_path, busy_timeout_ms=30_000) as sink:
        reader.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(sink.write(make_bars(5)))
        for _ in range(20):  # the loop keeps turning while SQLite waits for the lock
            await asyncio.sleep(0.005)
        assert not write.done()
        reader.execute("ROLLBACK")
        await asyncio.wait_for(write, timeout=10)
        assert await sink.count() == 5


async def test_close_waits_for_writes_in_flight(db_path: Path) -> None:
    """close() lets a write already started finish; its rows are stored."""
    sink = SqliteBarsSink(db_path)
    await sink.open()
    write = asyncio.create_task(sink.write(make_bars(500)))
    await asyncio.sleep(0)  # the write is now queued on the sink's thread
    await sink.close()
    await write
    async with SqliteBarsSink(db_path) as reopened:
        assert await reopened.count() == 500


async def test_rows_survive_reopening_the_file(db_path: Path) -> None:
    """Rows written by one sink are there for a new sink on the same file."""
    async with SqliteBarsSink(db_path) as first:
        await first.write(make_bars(12))
    async with SqliteBarsSink(db_path) as second:
        assert await second.count() == 12


def test_bad_arguments_are_rejected_at_construction(db_path: Path) -> None:
    """A negative busy timeout or an unknown synchronous mode fails at construction."""
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SqliteBarsSink(db_path, busy_timeout_ms=-1)
    with pytest.raises(ValueError, match="synchronous"):
        SqliteBarsSink(db_path, synchronous="SOMETIMES")  # type: ignore[arg-type]


async def test_a_failed_open_leaves_the_sink_new(tmp_path: Path) -> None:
    """open() on a path that cannot be created raises and the sink stays new (not open)."""
    sink = SqliteBarsSink(tmp_path / "missing-dir" / "bars.db")
    with pytest.raises(sqlite3.OperationalError):
        await sink.open()
    assert sink.state is SinkState.NEW
    await sink.close()


def test_writing_to_an_unopened_sink_is_not_retried() -> None:
    """A SinkStateError is a programming error: the default classifier does not retry it."""

    assert default_retry_classifier(SinkStateError("sink is not open yet")) is False
