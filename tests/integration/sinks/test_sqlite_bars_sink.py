"""SqliteBarsSink against a real SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import invalid_bar, make_bars, wait_until

from market_data_store.coordinator import default_retry_classifier
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError, Sink
from market_data_store.sinks import (
    Bar,
    SchemaVersionError,
    SinkState,
    SinkStateError,
    SqliteBarsSink,
)
from market_data_store.sinks import _sqlite_schema as sqlite_schema
from market_data_store.sinks import sqlite as sqlite_sink
from market_data_store.sinks.bar import EPOCH, ONE_MICROSECOND


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
        ts=EPOCH + ts * ONE_MICROSECOND,
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


async def test_a_missing_table_is_retryable_and_writes_once_restored(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    """A database-side failure that is not the batch's fault (here the table dropped under the
    sink) is retryable, not a verdict on the bars; the same batch lands once it is fixed."""
    bars = make_bars(10)
    async with SqliteBarsSink(db_path) as sink:
        reader.execute("DROP TABLE bars")
        with pytest.raises(RetryableSinkError, match="no such table"):
            await sink.write(bars)
        reader.execute(sqlite_schema.CREATE_TABLE)
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


# -- issue 9 item 5: a failed write never leaves the database locked ----------------------


class UnbindableValue:
    """A value whose adaptation for SQLite raises an exception that is not sqlite3.Error."""

    def __conform__(self, protocol: object) -> object:
        raise RuntimeError("adapter exploded")


@pytest.mark.parametrize(
    ("bad_value", "error"),
    [
        pytest.param(2**70, PermanentSinkError, id="overflow"),
        pytest.param("\ud800", PermanentSinkError, id="lone-surrogate"),
        pytest.param(UnbindableValue(), RetryableSinkError, id="unknown-exception"),
    ],
)
async def test_a_failure_outside_sqlite3_error_rolls_back_and_releases_the_lock(
    db_path: Path, bad_value: object, error: type[Exception]
) -> None:
    """A bind failure that is not sqlite3.Error is classified, rolls back, and leaves the
    database writable at once by another connection and by the next batch."""
    async with SqliteBarsSink(db_path) as sink:
        bad = invalid_bar(volume=bad_value)
        with pytest.raises(error):
            await sink.write([*make_bars(20), bad])
        other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" if held
            other.execute("ROLLBACK")
        finally:
            other.close()
        await sink.write(make_bars(5))
        assert await sink.count() == 5


def test_errors_are_classified() -> None:
    """Busy/locked and unknown errors are retryable; constraint and bind errors permanent."""
    classify = sqlite_sink.classify_sqlite_error
    assert classify(sqlite3.OperationalError("database is locked")).retryable
    assert classify(RuntimeError("driver hiccup")).retryable
    assert not classify(sqlite3.IntegrityError("CHECK constraint failed")).retryable
    assert not classify(OverflowError("Python int too large")).retryable
    assert not classify(sqlite3.ProgrammingError("Error binding parameter 1")).retryable


# -- issue 14: indexes, schema version, readable view --------------------------------------


def plan_of(conn: sqlite3.Connection, sql: str, params: Any) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


async def test_reads_by_series_are_index_searches(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """Range reads with and without vendor, and latest(), search an index: no table scan,
    no sort."""
    await sink.write(make_bars(200))
    params = {
        "symbol": "SYM1",
        "timeframe": "1m",
        "vendor": "test",
        "start": 0,
        "end": 2**62,
        "limit": -1,
        "after_ts": 0,
        "after_vendor": "a",
    }
    plans = [plan_of(reader, sql, params) for sql in sqlite_sink.SELECT_RANGE.values()]
    plans += [
        plan_of(reader, sqlite_sink.SELECT_LATEST[False], ("SYM1", "1m")),
        plan_of(reader, sqlite_sink.SELECT_LATEST[True], ("SYM1", "1m", "test")),
    ]
    for plan in plans:
        assert plan.startswith("SEARCH bars USING"), plan
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan


# The table exactly as the round-one release (schema version 0: no user_version, no view)
# made it, keyed vendor first: a frozen copy on purpose, never to follow _sqlite_schema.
ROUND_ONE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    vendor    TEXT    NOT NULL,
    symbol    TEXT    NOT NULL,
    timeframe TEXT    NOT NULL,
    ts        INTEGER NOT NULL,  -- microseconds since 1970-01-01T00:00:00Z
    open      REAL    NOT NULL,
    high      REAL    NOT NULL,
    low       REAL    NOT NULL,
    close     REAL    NOT NULL,
    volume    REAL    NOT NULL,
    PRIMARY KEY (vendor, symbol, timeframe, ts),
    CHECK (low <= open AND low <= close AND open <= high AND close <= high),
    CHECK (low > -9e999 AND high < 9e999),
    CHECK (volume >= 0 AND volume < 9e999)
) WITHOUT ROWID
"""


def round_one_row(bar: Bar) -> tuple[Any, ...]:
    us = int(bar.ts.timestamp()) * 1_000_000 + bar.ts.microsecond
    return (
        bar.vendor,
        bar.symbol,
        bar.timeframe,
        us,
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
    )


async def test_a_round_one_database_is_migrated_keeping_every_row(db_path: Path) -> None:
    """A database written by the first release (no user_version) opens, is migrated in place
    to the current schema version, and reads back every row."""
    bars = make_bars(300, symbols=3)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(ROUND_ONE_SCHEMA)
    conn.executemany(
        "INSERT INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [round_one_row(b) for b in bars]
    )
    conn.close()
    async with SqliteBarsSink(db_path) as sink:
        assert await sink.count() == 300
        for symbol in ("SYM0", "SYM1", "SYM2"):
            expected = [b for b in bars if b.symbol == symbol]
            assert await sink.read(symbol, "1m") == expected
        await sink.write(make_bars(10, offset=300, symbols=3))
        assert await sink.count() == 310
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()


async def test_a_migrated_database_opens_again_unchanged(db_path: Path) -> None:
    """Reopening a database of the current version migrates nothing and keeps the rows."""
    async with SqliteBarsSink(db_path) as first:
        await first.write(make_bars(20))
    async with SqliteBarsSink(db_path) as second:
        assert await second.read("SYM0", "1m") == [b for b in make_bars(20) if b.symbol == "SYM0"]


async def test_a_database_from_a_newer_release_is_refused(db_path: Path) -> None:
    """A database whose user_version is newer than this release's is refused, untouched."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {sqlite_schema.SCHEMA_VERSION + 1}")
    conn.close()
    sink = SqliteBarsSink(db_path)
    with pytest.raises(SchemaVersionError, match="newer than version"):
        await sink.open()
    assert sink.state is SinkState.NEW
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


async def test_bars_readable_shows_iso_8601_utc_timestamps(
    sink: SqliteBarsSink, reader: sqlite3.Connection
) -> None:
    """The bars_readable view shows ts as ISO-8601 UTC text to the microsecond, before and
    after 1970."""
    stamps = [
        datetime(2024, 1, 2, 14, 30, 5, 123456, tzinfo=UTC),
        datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1900, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
    ]
    bars = [
        make_bars(1)[0].model_copy(update={"ts": ts, "symbol": f"S{i}"})
        for i, ts in enumerate(stamps)
    ]
    await sink.write(bars)
    shown = dict(reader.execute("SELECT symbol, ts FROM bars_readable").fetchall())
    assert shown == {b.symbol: b.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for b in bars}
    assert reader.execute("SELECT close FROM bars_readable WHERE symbol = 'S0'").fetchone() == (
        bars[0].close,
    )


async def test_reads_do_not_wait_for_a_blocked_writer(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    """A read is answered while a write waits on another connection's lock (WAL readers)."""
    async with SqliteBarsSink(db_path, busy_timeout_ms=30_000) as sink:
        await sink.write(make_bars(10, symbols=1))
        reader.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(sink.write(make_bars(5, offset=10, symbols=1)))
        try:
            got = await asyncio.wait_for(sink.read("SYM0", "1m"), timeout=10)
            assert got == make_bars(10, symbols=1)
            assert not write.done()
        finally:
            reader.execute("ROLLBACK")
            await asyncio.wait_for(write, timeout=10)
        assert len(await sink.read("SYM0", "1m")) == 15


# -- issue 11: group commit ----------------------------------------------------------------


async def queue_behind_a_lock(
    sink: SqliteBarsSink, reader: sqlite3.Connection, batches: list[list[Bar]]
) -> list[asyncio.Task[None]]:
    """Write ``batches[0]`` while ``reader`` holds the write lock, so the writer thread waits
    on it; start the other writes once it does, so they queue up; then release the lock."""
    reader.execute("BEGIN IMMEDIATE")
    try:
        first = asyncio.create_task(sink.write(batches[0]))
        await asyncio.sleep(0)  # one step: the write has handed its batch over
        await wait_until(lambda: not sink._pending and not first.done(), what="writer waits")
        rest = [asyncio.create_task(sink.write(batch)) for batch in batches[1:]]
        await wait_until(lambda: len(sink._pending) == len(rest), what="batches queued")
    finally:
        reader.execute("ROLLBACK")
    return [first, *rest]


async def test_waiting_batches_share_one_transaction(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    """Batches that wait while the writer is busy are committed together, not one by one."""
    async with SqliteBarsSink(db_path, busy_timeout_ms=30_000) as sink:
        statements: list[str] = []
        assert sink._executor is not None and sink._conn is not None
        conn = sink._conn
        await asyncio.get_running_loop().run_in_executor(
            sink._executor, conn.set_trace_callback, statements.append
        )
        batches = [make_bars(50, offset=50 * i) for i in range(6)]
        writes = await queue_behind_a_lock(sink, reader, batches)
        await asyncio.wait_for(asyncio.gather(*writes), timeout=30)
        assert await sink.count() == 300
        assert statements.count("COMMIT") == 2  # the first batch, then the five that waited


async def test_a_bad_batch_in_a_group_fails_alone(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    """A batch the database rejects fails alone; the batches grouped with it are written."""
    async with SqliteBarsSink(db_path, busy_timeout_ms=30_000) as sink:
        batches = [make_bars(50, offset=50 * i) for i in range(5)]
        batches[3] = [*batches[3][:10], invalid_bar(low=1e9)]
        writes = await queue_behind_a_lock(sink, reader, batches)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*writes, return_exceptions=True), timeout=30
        )
        assert [type(o) for o in outcomes] == [type(None)] * 3 + [PermanentSinkError, type(None)]
        assert await sink.count() == 200


async def test_a_locked_group_fails_every_batch_retryably(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    """When the database stays locked, each waiting batch gets a retryable error at once."""
    async with SqliteBarsSink(db_path, busy_timeout_ms=0) as sink:
        reader.execute("BEGIN IMMEDIATE")
        try:
            outcomes = await asyncio.gather(
                *(sink.write(make_bars(10, offset=10 * i)) for i in range(4)),
                return_exceptions=True,
            )
        finally:
            reader.execute("ROLLBACK")
        assert all(isinstance(o, RetryableSinkError) for o in outcomes)
        assert await sink.count() == 0


def test_row_conversion_matches_the_bar_values() -> None:
    """Rows carry each bar's values, ts as epoch microseconds."""
    bars = make_bars(30, symbols=10)
    eastern = invalid_bar(ts=bars[0].ts.astimezone(timezone(timedelta(hours=-5))))
    rows = sqlite_sink.sqlite_rows([*bars, eastern])
    expected_ts = [int(b.ts.timestamp()) * 1_000_000 + b.ts.microsecond for b in bars]
    assert [row[3] for row in rows[:-1]] == expected_ts
    assert rows[-1][3] == expected_ts[0]
    assert [row[:3] + row[4:] for row in rows[:-1]] == [
        (b.vendor, b.symbol, b.timeframe, b.open, b.high, b.low, b.close, b.volume) for b in bars
    ]
    with pytest.raises(TypeError):
        sqlite_sink.sqlite_rows([*bars, {"symbol": "AAPL"}])


def test_row_conversion_reuses_a_timestamp_only_for_the_same_instant() -> None:
    """Equal UTC timestamps share their microseconds; wall times equal in one zone but at
    different instants (a DST fold) do not."""
    from zoneinfo import ZoneInfo

    bars = make_bars(3, symbols=3)  # three symbols, one timestamp
    new_york = ZoneInfo("America/New_York")
    first = datetime(2024, 11, 3, 1, 30, tzinfo=new_york)  # EDT, UTC-4
    second = first.replace(fold=1)  # the same wall time an hour later, EST, UTC-5
    assert first == second and first.timestamp() != second.timestamp()
    folded = [invalid_bar(ts=first), invalid_bar(ts=second), invalid_bar(ts=first)]
    rows = sqlite_sink.sqlite_rows([*bars, *folded])
    expected = [round(b.ts.timestamp() * 1e6) for b in [*bars, *folded]]
    assert [row[3] for row in rows] == expected


def file_size(path: Path) -> int:
    return path.stat().st_size


async def test_the_checkpointer_copies_the_wal_back_without_the_writer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed rows reach the database file through the checkpoint thread, while the
    writer's own automatic checkpoint stays a far-off backstop."""
    monkeypatch.setattr(sqlite_sink, "CHECKPOINT_EVERY_ROWS", 100)
    async with SqliteBarsSink(db_path) as sink:
        assert sink._conn is not None and sink._executor is not None
        conn = sink._conn
        backstop = await asyncio.get_running_loop().run_in_executor(
            sink._executor, lambda: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert backstop == sqlite_sink.BACKSTOP_CHECKPOINT_PAGES
        empty_size = file_size(db_path)
        for i in range(3):
            await sink.write(make_bars(100, offset=100 * i))
        await wait_until(lambda: file_size(db_path) > empty_size, what="checkpoint")
        assert await sink.count() == 300


async def test_writes_leave_the_garbage_collector_enabled(sink: SqliteBarsSink) -> None:
    """The writer pauses the cyclic GC around a group and re-enables it, even on failure."""
    assert gc.isenabled()
    await sink.write(make_bars(50))
    with pytest.raises(PermanentSinkError):
        await sink.write([invalid_bar(low=1e9)])
    assert gc.isenabled()


async def test_iter_bars_holds_one_page_at_a_time(
    sink: SqliteBarsSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iter_bars fetches at most page_size rows per query, and the next page only when the
    consumer has taken the previous one."""
    await sink.write(make_bars(100, symbols=1))
    pages: list[int] = []
    select = sink._select

    def recording_select(sql: str, params: dict[str, Any]) -> list[Bar]:
        page = select(sql, params)
        pages.append(len(page))
        return page

    monkeypatch.setattr(sink, "_select", recording_select)
    bars = sink.iter_bars("SYM0", "1m", page_size=30)
    first = [await anext(bars) for _ in range(30)]
    assert pages == [30]
    rest = [bar async for bar in bars]
    assert pages == [30, 30, 30, 10]
    assert first + rest == make_bars(100, symbols=1)
