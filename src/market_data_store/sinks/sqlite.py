"""``SqliteBarsSink``: bars into an embedded SQLite database (the default sink).

One connection, owned by one dedicated thread, does all database work, so the event loop
never waits on SQLite and concurrent ``write()`` calls queue up in order. Each batch is one
``BEGIN IMMEDIATE ... COMMIT`` transaction in WAL mode and upserts on
``(vendor, symbol, timeframe, ts)``, so a replayed batch leaves the rows as they were.
``ts`` is stored as integer microseconds since the Unix epoch (UTC): formatting a timestamp
per row as text would cost more than the rest of the write.

Errors: a batch holding something that is not a valid bar, or rows the table's constraints
reject, raise ``PermanentSinkError`` (dead-letter it); a busy or locked database, and other
operational failures (disk full, I/O error), raise ``RetryableSinkError``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Literal, TypeVar

from loguru import logger

from market_data_store._context import AsyncOpenClose
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError, SinkError
from market_data_store.sinks._lifecycle import Lifecycle, SinkState
from market_data_store.sinks._metrics import SinkMetrics
from market_data_store.sinks._rows import rows_of
from market_data_store.sinks.bar import BAR_FIELDS, Bar

T = TypeVar("T")
SqliteRow = tuple[str, str, str, int, float, float, float, float, float]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

TABLE = "bars"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
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
UPSERT = f"""
INSERT INTO {TABLE} ({", ".join(BAR_FIELDS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (vendor, symbol, timeframe, ts) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low,
    close = excluded.close, volume = excluded.volume
"""

# Primary result codes of failures that may pass: busy/locked, out of memory or disk, I/O.
RETRYABLE_SQLITE_CODES = frozenset(
    getattr(sqlite3, name)
    for name in (
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_NOMEM",
        "SQLITE_IOERR",
        "SQLITE_FULL",
        "SQLITE_CANTOPEN",
        "SQLITE_PROTOCOL",
        "SQLITE_INTERRUPT",
    )
)

_bar_values = attrgetter(*BAR_FIELDS)


def sqlite_rows(batch: Sequence[Any]) -> list[SqliteRow]:
    """Rows for ``UPSERT``: the bar's fields in table order with ``ts`` in epoch microseconds."""
    return [
        (vendor, symbol, timeframe, (ts - EPOCH) // ONE_MICROSECOND, o, h, lo, c, volume)
        for vendor, symbol, timeframe, ts, o, h, lo, c, volume in map(_bar_values, batch)
    ]


def sqlite_row(bar: Bar) -> SqliteRow:
    """The ``UPSERT`` row of one bar."""
    return sqlite_rows((bar,))[0]


def ts_from_epoch_us(value: int) -> datetime:
    """The UTC datetime stored as ``value`` microseconds since the epoch."""
    return EPOCH + value * ONE_MICROSECOND


def classify_sqlite_error(exc: sqlite3.Error) -> SinkError:
    """``RetryableSinkError`` for a busy, locked or failing database; else permanent."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if isinstance(exc, sqlite3.OperationalError) and (
        primary is None or primary in RETRYABLE_SQLITE_CODES
    ):
        return RetryableSinkError(f"SQLite: {exc}")
    return PermanentSinkError(f"SQLite rejected the batch: {type(exc).__name__}: {exc}")


class SqliteBarsSink(AsyncOpenClose):
    """Writes ``Bar`` batches into the SQLite database at ``path`` (table ``bars``).

    Use as ``async with SqliteBarsSink(path) as sink:``, or ``await open()`` / ``close()``.
    ``busy_timeout_ms`` is how long one write waits for another process's lock before
    raising ``RetryableSinkError``; ``synchronous`` is SQLite's durability setting (NORMAL
    in WAL mode survives a process crash; FULL also survives a power cut, at a cost per
    commit). ``name`` labels the sink's metrics and log lines.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "sqlite",
        busy_timeout_ms: int = 5000,
        synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms!r}")
        if synchronous not in ("OFF", "NORMAL", "FULL"):
            raise ValueError(f"synchronous must be OFF, NORMAL or FULL, got {synchronous!r}")
        self.path = os.fspath(path)
        self.name = name
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        self._lifecycle = Lifecycle(f"SqliteBarsSink({self.path!r})")
        self._metrics = SinkMetrics(name)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @property
    def state(self) -> SinkState:
        """``new``, ``open`` or ``closed``."""
        return self._lifecycle.state

    async def open(self) -> None:
        """Connect, switch to WAL mode and create the table if needed."""
        self._lifecycle.check_can_open()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mds-{self.name}")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        self._lifecycle.state = SinkState.OPEN
        logger.debug("sink {} opened {}", self.name, self.path)

    async def close(self) -> None:
        """Finish queued writes, close the connection and stop the thread. Idempotent."""
        if not self._lifecycle.begin_close():
            return
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            # Queued after any write already handed to the thread, so those finish first.
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=False)
        logger.debug("sink {} closed", self.name)

    async def write(self, batch: Sequence[Bar]) -> None:
        """Upsert ``batch`` in one transaction; the batch is not modified.

        Items that are not ``Bar`` objects (e.g. the dicts a DLQ replay yields) are validated
        as bars first; one that fails makes the whole batch a ``PermanentSinkError``.
        """
        started = time.perf_counter()
        try:
            await self._run(self._write_batch, batch)
        except SinkError as exc:
            self._metrics.failed(exc)
            logger.warning("sink {} failed a batch of {} bars: {}", self.name, len(batch), exc)
            raise
        self._metrics.written(len(batch), time.perf_counter() - started)

    async def count(self) -> int:
        """Number of rows in the table."""
        return await self._run(self._count)

    async def _run(self, func: Callable[[Any], T], arg: Any = None) -> T:
        self._lifecycle.check_open()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, arg)

    # Everything below runs on the sink's thread.

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write_batch(self, batch: Sequence[Any]) -> None:
        rows = rows_of(batch, sqlite_rows, sqlite_row)
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(UPSERT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            raise classify_sqlite_error(exc) from exc

    def _count(self, _: object) -> int:
        assert self._conn is not None
        row = self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return int(row[0])
