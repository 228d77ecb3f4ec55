"""``PostgresBarsSink``: bars into PostgreSQL (TimescaleDB hypertable where available).

Needs the ``postgres`` extra: asyncpg, imported when the sink opens. A pool of connections
serves concurrent ``write()`` calls and reads. Each batch is bulk loaded with binary COPY
straight into the table (one statement, so one transaction); if that hits an existing key (a
replayed or overlapping batch), the batch is instead passed as one array per column to one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE`` that skips rows whose values are
unchanged, so a replayed batch changes nothing. The COPY data is encoded here (``_pg_copy``),
reusing each batch's repeated symbols and timestamps.

Schema, key and versions: see ``_pg_schema``. Errors: see ``_pg_errors`` (only a batch's own
bad data is a ``PermanentSinkError``; everything else, unknown exceptions included, is a
``RetryableSinkError``). A password in the DSN never appears in a log line or an error
message of the sink.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

from loguru import logger

from market_data_store._context import AsyncOpenClose
from market_data_store._validation import check_int, check_range
from market_data_store.coordinator.types import ConfigError, SinkError
from market_data_store.sinks._lifecycle import Lifecycle, SinkState
from market_data_store.sinks._metrics import SinkMetrics
from market_data_store.sinks._pg_copy import copy_payload
from market_data_store.sinks._pg_errors import Redactor, classify
from market_data_store.sinks._pg_schema import (
    KEY_COLUMNS,
    SCHEMA_VERSION,
    TABLE,
    ensure_schema,
)
from market_data_store.sinks._read import BarReads, PageKey
from market_data_store.sinks._rows import CONVERSION_ERRORS, checked_rows
from market_data_store.sinks.bar import (
    BAR_FIELDS,
    SERIES_FIELDS,
    Bar,
    bars_from_rows,
    bars_of_series,
)

PgRow = tuple[Any, ...]

COLUMNS = ", ".join(BAR_FIELDS)
COLUMN_TYPES = ("text", "text", "text", "timestamptz") + ("float8",) * 5
# The conflict path: the batch as one array per column, upserted by one statement (no
# temporary table, so no TEMP privilege needed); unchanged rows are not rewritten.
MERGE_ARRAYS = f"""
INSERT INTO {TABLE} AS t ({COLUMNS})
SELECT * FROM unnest({", ".join(f"${i}::{kind}[]" for i, kind in enumerate(COLUMN_TYPES, 1))})
    AS s({COLUMNS})
ORDER BY {", ".join(KEY_COLUMNS)}
ON CONFLICT ({", ".join(KEY_COLUMNS)}) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low,
    close = excluded.close, volume = excluded.volume
WHERE (t.open, t.high, t.low, t.close, t.volume)
    IS DISTINCT FROM (excluded.open, excluded.high, excluded.low, excluded.close, excluded.volume)
"""
# Reads search the (symbol, timeframe, ts, vendor) key; $1 symbol, $2 timeframe, then the
# optional bounds. A series read leaves out symbol and timeframe, which all its rows share.
SELECT_SERIES = (
    f"SELECT {', '.join(SERIES_FIELDS)} FROM {TABLE} WHERE symbol = $1 AND timeframe = $2"
)
SELECT_LATEST = f"""
SELECT b.* FROM unnest($1::text[]) AS wanted(symbol)
CROSS JOIN LATERAL (
    SELECT {COLUMNS} FROM {TABLE}
    WHERE symbol = wanted.symbol AND timeframe = $2 AND ($3::text IS NULL OR vendor = $3)
    ORDER BY ts DESC, vendor DESC LIMIT 1
) AS b
"""

_bar_values = attrgetter(*BAR_FIELDS)


def pg_rows(batch: Sequence[Any]) -> list[PgRow]:
    """Each bar's fields in table order (the merge path's arrays, benchmarks' bare COPY).

    The merge path gets only bars that ``copy_payload`` encoded, which refuses a naive
    ``ts``.
    """
    return list(map(_bar_values, batch))


def last_per_key(rows: list[PgRow]) -> list[PgRow]:
    """``rows`` with one row per key, the last one given (one upsert cannot hit a key twice)."""
    return list({row[:4]: row for row in rows}.values())


def batch_payload(batch: Sequence[Any]) -> tuple[bytes, Sequence[Bar]]:
    """``(binary COPY payload, bars)`` of ``batch``.

    Bars are encoded as they are; when that fails (an item that is a dict, or not a valid
    bar), each item is validated as a ``Bar`` and encoded alone, so the
    ``PermanentSinkError`` names the first bad one.
    """
    try:
        return copy_payload(batch), batch
    except CONVERSION_ERRORS:
        bars = checked_rows(batch, _encodable)
        return copy_payload(bars), bars


def _encodable(bar: Bar) -> Bar:
    copy_payload((bar,))
    return bar


def range_query(
    start: datetime | None,
    end: datetime | None,
    vendor: str | None,
    after: tuple[datetime, str] | None,
    limit: int | None,
) -> tuple[str, list[Any]]:
    """SQL and the arguments after ``$1, $2`` for a series read in ``(ts, vendor)`` order.

    ``after`` is the key of the last bar of the previous page (keyset pagination).
    """
    sql, args = [SELECT_SERIES], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args) + 2}"

    if vendor is not None:
        sql.append(f"AND vendor = {arg(vendor)}")
    if start is not None:
        sql.append(f"AND ts >= {arg(start)}")
    if end is not None:
        sql.append(f"AND ts < {arg(end)}")
    if after is not None:
        sql.append(f"AND (ts, vendor) > ({arg(after[0])}, {arg(after[1])})")
    sql.append("ORDER BY ts, vendor")
    if limit is not None:
        sql.append(f"LIMIT {arg(limit)}")
    return " ".join(sql), args


async def _keep_session(connection: Any) -> None:
    """Pool reset hook: the sink leaves no session state behind, so skip the reset query."""


class PostgresBarsSink(BarReads, AsyncOpenClose):
    """Writes ``Bar`` batches into the PostgreSQL database at ``dsn`` (table ``bars``) and
    reads them back.

    Use as ``async with PostgresBarsSink(dsn) as sink:``, or ``await open()`` / ``close()``.
    ``state`` is ``SinkState.NEW`` / ``OPEN`` / ``CLOSED`` (``is_open`` is True only while
    open). Opening creates the schema, migrates a database of an older release in place, and
    refuses one of a newer release (``SchemaVersionError``).

    Args:
        dsn: the asyncpg connection string; its password is masked in logs and errors.
        name: labels the sink's metrics and log lines (default ``"postgres"``).
        min_size: connections the pool opens at ``open()``, 0 <= min_size <= max_size;
            None (default) opens all ``max_size``, so the first batches do not wait for them.
        max_size: the most connections the pool holds, >= 1 (default 4): give it one per
            coordinator worker (4 matches the coordinator's default ``workers``).
        command_timeout: seconds one statement may take, 0 < value < inf, or None for no
            limit (default 60.0).
        close_timeout: seconds ``close()`` waits for busy connections before terminating
            the pool, 0 < value < inf (default 10.0).
        hypertable: None (default) makes a new table a TimescaleDB hypertable when the
            extension is available and leaves it plain otherwise; True requires it (and
            converts an existing plain table); False never tries.
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str = "postgres",
        min_size: int | None = None,
        max_size: int = 4,
        command_timeout: float | None = 60.0,
        close_timeout: float = 10.0,
        hypertable: bool | None = None,
    ) -> None:
        check_int("max_size", max_size, lo=1)
        if min_size is None:
            min_size = max_size
        check_int("min_size", min_size, lo=0)
        if min_size > max_size:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
                f"got min_size={min_size!r}, max_size={max_size!r}"
            )
        if command_timeout is not None:
            check_range("command_timeout", command_timeout, lo=0, lo_open=True)
        check_range("close_timeout", close_timeout, lo=0, lo_open=True)
        self.dsn = dsn
        self.name = name
        self.is_hypertable = False
        self._redact = Redactor(dsn)
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._close_timeout = close_timeout
        self._hypertable = hypertable
        self._lifecycle = Lifecycle(f"PostgresBarsSink(name={name!r})")
        self._metrics = SinkMetrics(name)
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"PostgresBarsSink({self._redact(self.dsn)!r}, name={self.name!r})"

    @property
    def state(self) -> SinkState:
        """``new``, ``open`` or ``closed``."""
        return self._lifecycle.state

    @property
    def is_open(self) -> bool:
        """True between a successful ``open()`` and ``close()``: the sink takes writes."""
        return self._lifecycle.state is SinkState.OPEN

    async def open(self) -> None:
        """Create the pool, then create or migrate the schema (a hypertable where allowed)."""
        self._lifecycle.check_can_open()
        try:
            import asyncpg
        except ImportError as exc:
            raise ImportError(
                "PostgresBarsSink needs asyncpg: pip install 'market-data-store-asyncio[postgres]'"
            ) from exc
        where = f"PostgreSQL database {self._redact(self.dsn)}"
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                reset=_keep_session,
            )
        except Exception as exc:
            logger.warning("sink {} cannot connect to {}: {}", self.name, where, self._text(exc))
            raise classify(exc, self._redact)[0] from None
        try:
            async with pool.acquire() as conn:
                found = await ensure_schema(conn, where)
                await self._setup_hypertable(conn, created=found == 0)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._lifecycle.state = SinkState.OPEN
        logger.debug(
            "sink {} opened {} (schema version {} -> {}, hypertable={})",
            self.name,
            where,
            found,
            SCHEMA_VERSION,
            self.is_hypertable,
        )

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
            payload, bars = batch_payload(batch)
            await self._copy(payload, bars)
        except SinkError as exc:
            self._metrics.failed(exc)
            logger.warning("sink {} failed a batch of {} bars: {}", self.name, len(batch), exc)
            raise
        self._metrics.written(len(batch), time.perf_counter() - started)

    async def count(self) -> int:
        """Number of rows in the table."""
        return int(await self._fetchval(f"SELECT count(*) FROM {TABLE}"))

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
        sql, args = range_query(start, end, vendor, after, limit)
        rows = await self._fetch(sql, symbol, timeframe, *args)
        return bars_of_series(symbol, timeframe, rows)

    async def _read_latest(
        self, symbols: list[str], timeframe: str, vendor: str | None
    ) -> dict[str, Bar]:
        if not symbols:
            self._lifecycle.check_open()
            return {}
        bars = bars_from_rows(await self._fetch(SELECT_LATEST, symbols, timeframe, vendor))
        return {bar.symbol: bar for bar in bars}

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self._lifecycle.check_open()
        try:
            async with self._pool.acquire() as conn:
                rows: list[Any] = await conn.fetch(sql, *args)
                return rows
        except Exception as exc:
            raise await self._sink_error(exc) from None

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        self._lifecycle.check_open()
        try:
            async with self._pool.acquire() as conn:
                return await conn.fetchval(sql, *args)
        except Exception as exc:
            raise await self._sink_error(exc) from None

    async def _copy(self, payload: bytes, bars: Sequence[Bar]) -> None:
        from asyncpg.exceptions import UniqueViolationError  # the asyncpg extra: at use

        try:
            async with self._pool.acquire() as conn:
                try:
                    # A memoryview: asyncpg would take plain bytes for a file name.
                    await conn.copy_to_table(
                        TABLE, source=memoryview(payload), columns=BAR_FIELDS, format="binary"
                    )
                except UniqueViolationError:
                    await self._merge(conn, bars)
        except Exception as exc:
            raise await self._sink_error(exc) from None

    async def _merge(self, conn: Any, bars: Sequence[Bar]) -> None:
        rows = last_per_key(pg_rows(bars))
        await conn.execute(MERGE_ARRAYS, *map(list, zip(*rows, strict=True)))

    async def _sink_error(self, exc: Exception) -> SinkError:
        """The sink error for ``exc`` (its message masked); lets the pool replace broken
        connections."""
        error, broken = classify(exc, self._redact)
        if broken and self._pool is not None:
            # Idle connections were most likely broken by the same event (server restart):
            # have the pool replace every one of them on its next acquire.
            await self._pool.expire_connections()
        return error

    def _text(self, exc: BaseException) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")

    async def _setup_hypertable(self, conn: Any, *, created: bool) -> None:
        if self._hypertable is False:
            return
        self.is_hypertable = await self._is_hypertable(conn)
        if self.is_hypertable or not (created or self._hypertable):
            return  # an existing plain table stays plain unless hypertable=True asks
        self.is_hypertable = await self._make_hypertable(conn)

    async def _is_hypertable(self, conn: Any) -> bool:
        installed = await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'timescaledb'"
        )
        if not installed:
            return False
        return bool(
            await conn.fetchval(
                "SELECT count(*) > 0 FROM timescaledb_information.hypertables "
                "WHERE hypertable_name = $1",
                TABLE,
            )
        )

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
            logger.warning(
                "sink {}: keeping a plain table, no hypertable: {}", self.name, self._text(exc)
            )
            return False
        return True
