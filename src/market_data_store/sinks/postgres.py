"""``PostgresBarsSink``: bars into PostgreSQL (TimescaleDB hypertable where available).

Needs the ``postgres`` extra: asyncpg, imported when the sink opens. A pool of connections
serves concurrent ``write()`` calls. Each batch is bulk loaded with binary COPY straight into
the table (one statement, so one transaction); if that hits an existing key (a replayed or
overlapping batch), the batch is instead copied into a temporary table and merged with one
``INSERT ... ON CONFLICT DO UPDATE`` that skips rows whose values are unchanged, so a replayed
batch changes nothing. Rows are handed to COPY as the bars' own attribute tuples: ``ts`` is a
UTC datetime that asyncpg encodes as timestamptz, with no per-row Python work beyond that.

Errors: lost connections, a server shutting down or starting up, deadlocks, lock timeouts
and resource exhaustion raise ``RetryableSinkError`` (a broken connection is discarded and
the pool replaces it); invalid bars and data the server rejects raise ``PermanentSinkError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from loguru import logger

from market_data_store._context import AsyncOpenClose
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError, SinkError
from market_data_store.sinks._lifecycle import Lifecycle, SinkState
from market_data_store.sinks._metrics import SinkMetrics
from market_data_store.sinks._rows import rows_of
from market_data_store.sinks.bar import BAR_FIELDS, Bar

PgRow = tuple[Any, ...]

TABLE = "bars"
STAGE_TABLE = "mds_bars_stage"
COLUMNS = ", ".join(BAR_FIELDS)
SCHEMA_LOCK_KEY = 0x6D64735F62617273  # pg_advisory_xact_lock key: "mds_bars"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    vendor    text             NOT NULL,
    symbol    text             NOT NULL,
    timeframe text             NOT NULL,
    ts        timestamptz      NOT NULL,
    open      double precision NOT NULL,
    high      double precision NOT NULL,
    low       double precision NOT NULL,
    close     double precision NOT NULL,
    volume    double precision NOT NULL,
    PRIMARY KEY (vendor, symbol, timeframe, ts),
    CHECK (low <= open AND low <= close AND open <= high AND close <= high),
    CHECK (low > '-Infinity' AND high < 'Infinity'),
    CHECK (volume >= 0 AND volume < 'Infinity')
)
"""
CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} "
    f"(LIKE {TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
MERGE_STAGE = f"""
INSERT INTO {TABLE} AS t ({COLUMNS})
SELECT {COLUMNS} FROM {STAGE_TABLE} ORDER BY vendor, symbol, timeframe, ts
ON CONFLICT (vendor, symbol, timeframe, ts) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low,
    close = excluded.close, volume = excluded.volume
WHERE (t.open, t.high, t.low, t.close, t.volume)
    IS DISTINCT FROM (excluded.open, excluded.high, excluded.low, excluded.close, excluded.volume)
"""

# SQLSTATE classes worth retrying: connection exception, transaction rollback (deadlock,
# serialization), insufficient resources, lock not available, operator intervention
# (shutdown, starting up, statement timeout), system error.
RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
# Of those, the ones after which the connection cannot be trusted.
BROKEN_CONNECTION_CLASSES = frozenset({"08", "57"})

_bar_values = attrgetter(*BAR_FIELDS)


def pg_rows(batch: Sequence[Any]) -> list[PgRow]:
    """COPY records: each bar's fields in table order.

    Raises ``ValueError`` on a naive ``ts`` (possible only for a bar built without
    validation), which asyncpg would otherwise silently take for UTC.
    """
    rows = list(map(_bar_values, batch))
    if any(row[3].tzinfo is None for row in rows):
        raise ValueError("ts has no timezone")
    return rows


def pg_row(bar: Bar) -> PgRow:
    """The COPY record of one bar."""
    return pg_rows((bar,))[0]


def last_per_key(rows: list[PgRow]) -> list[PgRow]:
    """``rows`` with one row per key, the last one given (one upsert cannot hit a key twice)."""
    return list({row[:4]: row for row in rows}.values())


def classify_postgres_error(exc: BaseException) -> tuple[SinkError, bool] | None:
    """``(sink error, connection broken)`` for an asyncpg or network error, else None."""
    import asyncpg
    from asyncpg.exceptions import _base as asyncpg_base

    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        klass = sqlstate[:2]
        if klass in RETRYABLE_SQLSTATE_CLASSES:
            error: SinkError = RetryableSinkError(f"PostgreSQL {sqlstate}: {exc}")
            return error, klass in BROKEN_CONNECTION_CLASSES
        return PermanentSinkError(f"PostgreSQL rejected the batch ({sqlstate}): {exc}"), False
    if isinstance(exc, asyncpg_base.DataError):
        # Raised by the client when a value cannot be encoded for its column.
        return PermanentSinkError(f"a bar could not be encoded: {exc}"), False
    if isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError):
        return RetryableSinkError(f"PostgreSQL connection: {type(exc).__name__}: {exc}"), True
    if isinstance(exc, TypeError | ValueError):
        return PermanentSinkError(f"a bar could not be encoded: {type(exc).__name__}: {exc}"), False
    return None


async def _keep_session(connection: Any) -> None:
    """Pool reset hook: the sink leaves no session state behind, so skip the reset query."""


class PostgresBarsSink(AsyncOpenClose):
    """Writes ``Bar`` batches into the PostgreSQL database at ``dsn`` (table ``bars``).

    Use as ``async with PostgresBarsSink(dsn) as sink:``, or ``await open()`` / ``close()``.
    The pool holds ``min_size`` to ``max_size`` connections (give it one per coordinator
    worker). ``hypertable``: None makes the table a TimescaleDB hypertable when the extension
    is available and leaves it plain otherwise; True requires it; False never tries.
    ``command_timeout`` (seconds) bounds each statement. ``name`` labels metrics and logs.
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str = "postgres",
        min_size: int = 1,
        max_size: int = 4,
        command_timeout: float | None = 60.0,
        close_timeout: float = 10.0,
        hypertable: bool | None = None,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size!r}, max_size={max_size!r}"
            )
        self.dsn = dsn
        self.name = name
        self.is_hypertable = False
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._close_timeout = close_timeout
        self._hypertable = hypertable
        self._lifecycle = Lifecycle(f"PostgresBarsSink(name={name!r})")
        self._metrics = SinkMetrics(name)
        self._pool: Any = None

    @property
    def state(self) -> SinkState:
        """``new``, ``open`` or ``closed``."""
        return self._lifecycle.state

    async def open(self) -> None:
        """Create the pool and the table (a hypertable where TimescaleDB allows)."""
        self._lifecycle.check_can_open()
        try:
            import asyncpg
        except ImportError as exc:
            raise ImportError(
                "PostgresBarsSink needs asyncpg: pip install 'market-data-store[postgres]'"
            ) from exc

        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            command_timeout=self._command_timeout,
            reset=_keep_session,
        )
        try:
            async with pool.acquire() as conn:
                await self._create_schema(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._lifecycle.state = SinkState.OPEN
        logger.debug("sink {} opened (hypertable={})", self.name, self.is_hypertable)

    async def close(self) -> None:
        """Wait for writes in flight, then close the pool. Idempotent."""
        if not self._lifecycle.begin_close():
            return
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._close_timeout)
        except TimeoutError:
            logger.warning("sink {}: connections still busy after close timeout", self.name)
            pool.terminate()
        logger.debug("sink {} closed", self.name)

    async def write(self, batch: Sequence[Bar]) -> None:
        """Upsert ``batch`` (COPY, or COPY + merge on a key conflict); the batch is not modified.

        Items that are not ``Bar`` objects (e.g. the dicts a DLQ replay yields) are validated
        as bars first; one that fails makes the whole batch a ``PermanentSinkError``.
        """
        self._lifecycle.check_open()
        started = time.perf_counter()
        try:
            rows = rows_of(batch, pg_rows, pg_row)
            await self._copy(rows)
        except SinkError as exc:
            self._metrics.failed(exc)
            logger.warning("sink {} failed a batch of {} bars: {}", self.name, len(batch), exc)
            raise
        self._metrics.written(len(batch), time.perf_counter() - started)

    async def count(self) -> int:
        """Number of rows in the table."""
        self._lifecycle.check_open()
        try:
            async with self._pool.acquire() as conn:
                return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
        except Exception as exc:
            raise await self._sink_error(exc) from exc

    async def _copy(self, rows: list[PgRow]) -> None:
        from asyncpg.exceptions import UniqueViolationError

        try:
            async with self._pool.acquire() as conn:
                try:
                    await conn.copy_records_to_table(TABLE, records=rows, columns=BAR_FIELDS)
                except UniqueViolationError:
                    await self._merge(conn, rows)
        except Exception as exc:
            raise await self._sink_error(exc) from exc

    async def _merge(self, conn: Any, rows: list[PgRow]) -> None:
        async with conn.transaction():
            await conn.execute(CREATE_STAGE)
            await conn.copy_records_to_table(
                STAGE_TABLE, records=last_per_key(rows), columns=BAR_FIELDS
            )
            await conn.execute(MERGE_STAGE)

    async def _sink_error(self, exc: Exception) -> Exception:
        classified = classify_postgres_error(exc)
        if classified is None:
            return exc if isinstance(exc, SinkError) else PermanentSinkError(repr(exc))
        error, broken = classified
        if broken and self._pool is not None:
            # Idle connections were most likely broken by the same event (server restart):
            # have the pool replace every one of them on its next acquire.
            await self._pool.expire_connections()
        return error

    async def _create_schema(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
            await conn.execute(SCHEMA)
        if self._hypertable is not False:
            self.is_hypertable = await self._make_hypertable(conn)

    async def _make_hypertable(self, conn: Any) -> bool:
        import asyncpg

        available = await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if not available:
            if self._hypertable:
                raise RuntimeError("hypertable=True but the timescaledb extension is unavailable")
            return False
        try:
            async with conn.transaction():
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                await conn.execute(
                    "SELECT create_hypertable($1::regclass, 'ts', if_not_exists => TRUE, "
                    "migrate_data => TRUE)",
                    TABLE,
                )
        except asyncpg.PostgresError as exc:
            if self._hypertable:
                raise
            logger.warning("sink {}: keeping a plain table, no hypertable: {}", self.name, exc)
            return False
        return True
