"""``SqliteBarsSink``: bars into an embedded SQLite database (the default sink).

Writes: one connection, owned by one dedicated thread, does all writing, so the event loop
never waits on SQLite and concurrent ``write()`` calls queue up in order. Group commit: the
thread takes every batch waiting for it (up to ``GROUP_MAX_ROWS`` rows) into one
``BEGIN IMMEDIATE ... COMMIT`` transaction in WAL mode, so a commit's cost is shared by the
batches the coordinator's workers hand over meanwhile; each ``write()`` still returns or
raises for its own batch only. If a group's transaction fails for any reason but a busy or
locked database, its batches are written again one transaction each, so a bad batch fails
alone. Rows are upserted on their key, ``(symbol, timeframe, ts, vendor)``, so a replayed batch
leaves them as they were.
``ts`` is stored as integer microseconds since the Unix epoch (UTC): formatting a timestamp
per row as text would cost more than the rest of the write. The view ``bars_readable`` shows
it as ISO-8601 UTC text for people using the ``sqlite3`` shell.

Checkpoints: the writer does not copy the WAL back into the database itself (that would
stall writes, an fsync each time); every ``CHECKPOINT_EVERY_ROWS`` rows committed it asks
a third connection, on its own thread, for a PASSIVE checkpoint, which never blocks the
writer. The writer keeps SQLite's automatic checkpoint at ``BACKSTOP_CHECKPOINT_PAGES`` in
case the checkpointer falls behind, so the WAL stays bounded.

Reads: a second, read-only connection on a second thread. WAL lets it read while a write
is in progress, so reads neither wait for queued writes nor delay them; a read sees every
batch whose ``write()`` returned before the read began.

Schema (``_sqlite_schema``): ``PRAGMA user_version`` holds the schema version. Opening a
database of an older version (0: the first release, no version) migrates it in place in one
transaction, keeping every row (version 0 -> 1 rebuilds the table with its new key, once:
4.6 s for 1,000,000 rows measured on 2 busy cores); a database of a newer version is
refused with ``SchemaVersionError``.

Errors: a batch holding something that is not a valid bar, or rows the table's constraints
reject or SQLite cannot bind, raise ``PermanentSinkError`` (dead-letter it); everything
else (a busy, locked, read-only or full database, an I/O error, a missing table, unknown
exceptions) raises ``RetryableSinkError``: only a batch's own content is its fault.
Whatever happens, a failed write rolls its transaction back, so the database is never left
locked.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from loguru import logger

from market_data_store._context import AsyncOpenClose
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError, SinkError
from market_data_store.sinks._gc import gc_paused
from market_data_store.sinks._lifecycle import Lifecycle, SinkState
from market_data_store.sinks._metrics import SinkMetrics
from market_data_store.sinks._read import BarReads, PageKey
from market_data_store.sinks._rows import rows_of
from market_data_store.sinks._sqlite_schema import (
    SELECT_LATEST,
    SELECT_RANGE,
    TABLE,
    UPSERT,
    migrate,
)
from market_data_store.sinks.bar import (
    BAR_FIELDS,
    EPOCH,
    ONE_MICROSECOND,
    Bar,
    bars_from_rows,
    bars_of_series,
)

T = TypeVar("T")
SqliteRow = tuple[str, str, str, int, float, float, float, float, float]
Pending = tuple[Sequence[Any], "asyncio.Future[None]"]

GROUP_MAX_ROWS = 20_000
"""Group commit stops taking waiting batches once it holds this many rows."""
CHECKPOINT_EVERY_ROWS = 10_000
"""Rows committed between checkpoint requests (about SQLite's default 1,000 WAL pages when
50 symbols are interleaved; fewer pages when a feed appends to few series)."""
READ_MMAP_BYTES = 256 * 1024 * 1024
"""Address space (not memory) the read connection maps the database file into."""
BACKSTOP_CHECKPOINT_PAGES = 10_000
"""The writer's own automatic checkpoint, used only if the checkpointer falls behind."""

# Open read bounds; every datetime (years 1 to 9999) lies strictly inside them.
MIN_TS_US = -(2**63)
MAX_TS_US = 2**63 - 1

# What only the batch's own content causes: a constraint it violates, a value too big or of the
# wrong type (IntegrityError, DataError), a value SQLite cannot bind (ProgrammingError,
# InterfaceError, or OverflowError and the like for an int beyond 64 bits, a lone surrogate).
# Anything else (busy, locked, read-only, full, I/O, a table dropped under the sink...) is the
# database's state, which a retry or an operator can fix: dead-lettering good bars for it
# would be wrong.
BATCH_CONTENT_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    OverflowError,
    TypeError,
    ValueError,
)


# sqlite_rows() spells the fields out in this order (the columns of UPSERT).
_ROW_FIELDS = ("vendor", "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume")
if _ROW_FIELDS != BAR_FIELDS:  # pragma: no cover - a guard for whoever reorders BAR_FIELDS
    raise ImportError("sqlite_rows() must list BAR_FIELDS in their order")


def sqlite_rows(batch: Sequence[Any]) -> list[SqliteRow]:
    """Rows for ``UPSERT``: the bar's fields in table order with ``ts`` in epoch microseconds.

    Reads each bar's ``__dict__`` (no attribute lookups). A bar whose ``ts`` equals the
    previous bar's reuses its microseconds: interleaved symbols in time order share each
    timestamp, and comparing two UTC datetimes costs a fifth of converting one (hashing one
    for a dict cache costs more than converting it; both measured). Only a UTC timestamp is
    remembered: equality within one zone compares wall times, exact only for a fixed offset,
    while equality across zones compares instants. Raises ``TypeError`` for an item that is
    not a ``Bar`` (the caller then takes the checked path).
    """
    if not all(map(isinstance, batch, itertools.repeat(Bar))):
        raise TypeError("the batch holds items that are not Bar objects")
    epoch, one_us, utc = EPOCH, ONE_MICROSECOND, UTC
    last: datetime | None = None
    last_us = 0
    rows: list[SqliteRow] = []
    append = rows.append
    for fields in map(vars, batch):  # subscripting the dict: 15 % faster than an itemgetter
        ts = fields["ts"]
        if ts != last:
            last_us = (ts - epoch) // one_us
            last = ts if ts.tzinfo is utc else None
        append(
            (
                fields["vendor"],
                fields["symbol"],
                fields["timeframe"],
                last_us,
                fields["open"],
                fields["high"],
                fields["low"],
                fields["close"],
                fields["volume"],
            )
        )
    return rows


def sqlite_row(bar: Bar) -> SqliteRow:
    """The ``UPSERT`` row of one bar."""
    return sqlite_rows((bar,))[0]


def epoch_us(value: datetime | None, default: int) -> int:
    """``value`` (timezone-aware) in microseconds since the epoch; ``default`` for None."""
    return default if value is None else (value - EPOCH) // ONE_MICROSECOND


def classify_sqlite_error(exc: BaseException) -> SinkError:
    """The sink error for anything a write or read raised.

    Permanent: data SQLite rejects or cannot bind (``BATCH_CONTENT_ERRORS``). Retryable:
    everything else, the database's state and unknown exceptions alike.
    """
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, BATCH_CONTENT_ERRORS):
        return PermanentSinkError(f"SQLite rejected the batch: {type(exc).__name__}: {exc}")
    return RetryableSinkError(f"SQLite (retryable): {type(exc).__name__}: {exc}")


def is_busy(error: SinkError) -> bool:
    """Whether ``error`` comes from a busy or locked database (retrying each batch would only
    wait on the same lock again)."""
    cause = error.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def settle(outcomes: list[asyncio.Future[None]], errors: list[SinkError | None]) -> None:
    """Complete each batch's future (on the event loop) with its own outcome."""
    for outcome, error in zip(outcomes, errors, strict=True):
        if outcome.done():
            continue
        if error is None:
            outcome.set_result(None)
        else:
            outcome.set_exception(error)


class SqliteBarsSink(BarReads, AsyncOpenClose):
    """Writes ``Bar`` batches into the SQLite database at ``path`` (table ``bars``) and reads
    them back.

    Use as ``async with SqliteBarsSink(path) as sink:``, or ``await open()`` / ``close()``.

    Args:
        path: the database file, created on ``open()`` if missing (its folder must exist).
        name: labels the sink's metrics and log lines (default ``"sqlite"``).
        busy_timeout_ms: how long one write waits for another process's lock before raising
            ``RetryableSinkError``, ms, >= 0 (default 5000).
        synchronous: SQLite's durability setting, ``"OFF"``, ``"NORMAL"`` (default) or
            ``"FULL"``: NORMAL in WAL mode survives a process crash; FULL also survives a
            power cut, at a cost per commit.
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
        self._reader: ThreadPoolExecutor | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._rows_since_checkpoint = 0
        self._checkpoint_queued = False
        self._conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._pending: deque[Pending] = deque()  # appended on the loop, taken by the thread
        self._writer_due = False  # a job is queued that has not yet looked at _pending

    @property
    def state(self) -> SinkState:
        """``new``, ``open`` or ``closed``."""
        return self._lifecycle.state

    async def open(self) -> None:
        """Connect, switch to WAL mode, create or migrate the schema, open the read and
        checkpoint connections.

        Raises ``SchemaVersionError`` for a database written by a newer release.
        """
        self._lifecycle.check_can_open()
        loop = asyncio.get_running_loop()
        executor = self._thread("")
        reader, checkpointer = self._thread("-read"), self._thread("-checkpoint")
        try:
            self._conn = await loop.run_in_executor(executor, self._connect)
            self._read_conn = await loop.run_in_executor(reader, self._connect_reader)
            self._checkpoint_conn = await loop.run_in_executor(
                checkpointer, self._connect_checkpointer
            )
        except BaseException:
            await loop.run_in_executor(reader, self._disconnect_reader)
            await loop.run_in_executor(executor, self._disconnect)
            for thread in (executor, reader, checkpointer):
                thread.shutdown(wait=False)
            raise
        self._executor, self._reader, self._checkpointer = executor, reader, checkpointer
        self._lifecycle.state = SinkState.OPEN
        logger.debug("sink {} opened {}", self.name, self.path)

    async def close(self) -> None:
        """Finish queued writes and reads, close the connections, stop the threads.

        Idempotent.
        """
        if not self._lifecycle.begin_close():
            return
        loop = asyncio.get_running_loop()
        closing = [
            (self._reader, self._disconnect_reader),
            # Queued after any write already handed to the thread: those finish first.
            (self._executor, self._disconnect),
            (self._checkpointer, self._disconnect_checkpointer),
        ]
        self._executor = self._reader = self._checkpointer = None
        try:
            for thread, disconnect in closing:
                if thread is not None:
                    await loop.run_in_executor(thread, disconnect)
        finally:
            for thread, _ in closing:
                if thread is not None:
                    thread.shutdown(wait=False)
        logger.debug("sink {} closed", self.name)

    def _thread(self, suffix: str) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mds-{self.name}{suffix}")

    async def write(self, batch: Sequence[Bar]) -> None:
        """Upsert ``batch`` in one transaction (shared with other waiting batches); the batch
        is not modified.

        Items that are not ``Bar`` objects (e.g. the dicts a DLQ replay yields) are validated
        as bars first; one that fails makes the whole batch a ``PermanentSinkError``.
        """
        self._lifecycle.check_open()
        assert self._executor is not None
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[None] = loop.create_future()
        self._pending.append((batch, outcome))
        if not self._writer_due:  # else the writer's thread has yet to look: it finds it
            self._writer_due = True
            self._executor.submit(self._write_pending, loop)
        try:
            await outcome
        except SinkError as exc:
            self._metrics.failed(exc)
            logger.warning("sink {} failed a batch of {} bars: {}", self.name, len(batch), exc)
            raise
        self._metrics.written(len(batch), time.perf_counter() - started)

    async def count(self) -> int:
        """Number of rows in the table."""
        return await self._read(self._count)

    async def _read_range(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None,
        end: datetime | None,
        vendor: str | None,
        after: PageKey | None,
        limit: int | None,
    ) -> list[Bar]:
        params: dict[str, Any] = {
            "symbol": symbol,
            "timeframe": timeframe,
            "vendor": vendor,
            "start": epoch_us(start, MIN_TS_US),
            "end": epoch_us(end, MAX_TS_US),
            "limit": -1 if limit is None else limit,
        }
        if after is not None:
            params["after_ts"] = epoch_us(after[0], 0)
            params["after_vendor"] = after[1]
        sql = SELECT_RANGE[vendor is not None, after is not None]
        return await self._read(self._select, sql, params)

    async def _read_latest(
        self, symbols: list[str], timeframe: str, vendor: str | None
    ) -> dict[str, Bar]:
        return await self._read(self._latest, symbols, timeframe, vendor)

    async def _read(self, func: Callable[..., T], *args: Any) -> T:
        self._lifecycle.check_open()
        assert self._reader is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, func, *args)
        except sqlite3.Error as exc:
            raise classify_sqlite_error(exc) from exc

    # Everything below runs on the sink's threads: the writer's or the reader's.

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )
        conn.execute("PRAGMA query_only=ON")
        # Read pages straight from the file mapping rather than copying them into the cache.
        conn.execute(f"PRAGMA mmap_size={READ_MMAP_BYTES}")
        return conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )

    def _disconnect_checkpointer(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _request_checkpoint(self, rows: int) -> None:
        """On the writer's thread: count committed rows, queue a checkpoint when due."""
        self._rows_since_checkpoint += rows
        checkpointer = self._checkpointer
        if self._rows_since_checkpoint < CHECKPOINT_EVERY_ROWS or checkpointer is None:
            return
        if self._checkpoint_queued:  # the last one is still running: it will catch up
            return
        self._rows_since_checkpoint = 0
        self._checkpoint_queued = True
        try:
            checkpointer.submit(self._checkpoint)
        except RuntimeError:  # closing: the last connection to close checkpoints
            self._checkpoint_queued = False

    def _checkpoint(self) -> None:
        """On the checkpointer's thread: copy the WAL back without blocking the writer."""
        try:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the writer's backstop checkpoint still bounds the WAL
            logger.debug("sink {}: checkpoint failed: {}", self.name, exc)
        finally:
            self._checkpoint_queued = False

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _disconnect_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    def _write_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write every batch waiting (up to ``GROUP_MAX_ROWS`` rows) and settle their futures.

        A ``write()`` queues a job only when none is due (``_writer_due``: queued, not yet
        looking); the job writes groups until it finds nothing waiting. One job per batch
        cost a ``ThreadPoolExecutor.submit`` each and woke the thread for nothing while the
        loop still held the GIL.
        """
        while True:
            # Cleared before looking: a batch appended from here on queues another job.
            self._writer_due = False
            group: list[Pending] = []
            rows = 0
            while self._pending and rows < GROUP_MAX_ROWS:
                batch, outcome = self._pending.popleft()
                if not outcome.cancelled():
                    group.append((batch, outcome))
                    rows += len(batch)
            if not group:
                return
            try:
                with gc_paused():  # conversion makes thousands of tuples and no cycles
                    errors = self._write_group([batch for batch, _ in group])
            except Exception as exc:  # a bug here must fail the batches, not leave them waiting
                error = RetryableSinkError(f"SQLite write failed: {type(exc).__name__}: {exc}")
                errors = [error] * len(group)
            try:
                loop.call_soon_threadsafe(settle, [outcome for _, outcome in group], errors)
            except RuntimeError:  # the loop has closed: no one is waiting any more
                pass

    def _write_group(self, batches: list[Sequence[Any]]) -> list[SinkError | None]:
        """Each batch's error (None: written); one transaction, else one per batch."""
        errors: list[SinkError | None] = [None] * len(batches)
        converted: list[tuple[int, list[SqliteRow]]] = []
        for index, batch in enumerate(batches):
            try:
                converted.append((index, rows_of(batch, sqlite_rows, sqlite_row)))
            except Exception as exc:
                errors[index] = classify_sqlite_error(exc)
        if not converted:
            return errors
        try:
            self._transaction(itertools.chain.from_iterable(rows for _, rows in converted))
            self._request_checkpoint(sum(len(rows) for _, rows in converted))
            return errors
        except SinkError as exc:
            if len(converted) == 1 or is_busy(exc):
                for index, _ in converted:
                    errors[index] = exc
                return errors
        for index, rows in converted:  # the group failed: find the batch(es) at fault
            try:
                self._transaction(rows)
                self._request_checkpoint(len(rows))
            except SinkError as exc:
                errors[index] = exc
        return errors

    def _transaction(self, rows: Iterable[SqliteRow]) -> None:
        """Upsert ``rows`` in one transaction, raising a classified ``SinkError``."""
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(UPSERT, rows)
            conn.execute("COMMIT")
        except Exception as exc:
            raise classify_sqlite_error(exc) from exc
        finally:
            # Whatever failed (even a value SQLite cannot bind), never leave the lock held.
            if conn.in_transaction:
                conn.rollback()

    def _count(self) -> int:
        assert self._read_conn is not None
        row = self._read_conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return int(row[0])

    def _select(self, sql: str, params: dict[str, Any]) -> list[Bar]:
        assert self._read_conn is not None
        rows = self._read_conn.execute(sql, params).fetchall()
        return bars_of_series(params["symbol"], params["timeframe"], rows, ts_epoch_us=True)

    def _latest(self, symbols: list[str], timeframe: str, vendor: str | None) -> dict[str, Bar]:
        assert self._read_conn is not None
        sql = SELECT_LATEST[vendor is not None]
        found: dict[str, Bar] = {}
        for symbol in symbols:
            params = (symbol, timeframe) if vendor is None else (symbol, timeframe, vendor)
            rows = self._read_conn.execute(sql, params).fetchall()
            if rows:
                found[symbol] = bars_from_rows(rows, ts_epoch_us=True)[0]
        return found
