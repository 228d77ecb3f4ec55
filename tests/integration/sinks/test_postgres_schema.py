"""PostgresBarsSink's schema: the series-first key, its version, migration, least privilege."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sink_helpers import T0, make_bars

from market_data_store.sinks import PostgresBarsSink, SchemaPrivilegeError, SinkState
from market_data_store.sinks._pg_schema import SCHEMA_VERSION, VERSION_TABLE
from market_data_store.sinks._schema import SchemaVersionError
from market_data_store.sinks.bar import BAR_FIELDS
from market_data_store.sinks.postgres import range_query

pytestmark = pytest.mark.postgres
asyncpg = pytest.importorskip("asyncpg")

# The table exactly as the round-one release (schema version 1, no version table) made it.
ROUND_ONE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
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


INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def series_plan(conn: Any) -> dict[str, Any]:
    """EXPLAIN of a read by symbol, timeframe and time range without vendor, as read() runs it."""
    sql, args = range_query(T0, T0.replace(hour=16), None, None, None)
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", "SYM7", "1m", *args)
    top: dict[str, Any] = json.loads(plan)[0]["Plan"]
    return top


def scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every scan node of a plan tree (a bitmap scan shows as its heap and its index node)."""
    found = [plan] if "Scan" in plan["Node Type"] else []
    for child in plan.get("Plans", []):
        found += scans(child)
    return found


def is_index_search(plan: dict[str, Any]) -> bool:
    """True if the plan reads the table only through the key, led by symbol."""
    nodes = scans(plan)
    index_nodes = [n for n in nodes if n["Node Type"] in INDEX_SCANS]
    return (
        all(n["Node Type"] != "Seq Scan" for n in nodes)
        and bool(index_nodes)
        and all(
            n.get("Index Name") == "bars_pkey" and "symbol" in n.get("Index Cond", "")
            for n in index_nodes
        )
    )


async def primary_key(conn: Any) -> list[str]:
    return list(
        await conn.fetchval(
            "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = 'bars'::regclass AND i.indisprimary"
        )
    )


async def load(conn: Any, n: int) -> list[Any]:
    """``n`` bars over 50 symbols copied straight into the table, then ANALYZEd."""
    bars = make_bars(n, symbols=50)
    await conn.copy_records_to_table(
        "bars", records=[tuple(getattr(b, f) for f in BAR_FIELDS) for b in bars]
    )
    await conn.execute("ANALYZE bars")
    return bars


async def test_a_series_read_without_vendor_is_an_index_search(pg_dsn: str, admin: Any) -> None:
    """read(symbol, timeframe, start, end) without vendor searches the key, never scans the table.

    No enable_seqscan=off: on a tiny table the planner prefers a seq scan whatever the
    indexes, so the test loads enough rows (20,000 over 50 symbols, ANALYZEd) that it picks
    a seq scan exactly when no index leads with symbol, as the round-one key did (the
    migration test asserts that plan first). The index search may be a bitmap scan.
    """
    async with PostgresBarsSink(pg_dsn):
        await load(admin, 20_000)
    plan = await series_plan(admin)
    assert is_index_search(plan), plan
    assert await primary_key(admin) == ["symbol", "timeframe", "ts", "vendor"]


async def test_a_round_one_database_is_migrated_in_place_keeping_every_row(
    pg_dsn: str, admin: Any
) -> None:
    """A round-one database opens: re-keyed in place, versioned, every row read back equal."""
    await admin.execute(ROUND_ONE_SCHEMA)
    bars = await load(admin, 20_000)
    assert not is_index_search(await series_plan(admin))  # the old key: a seq scan
    async with PostgresBarsSink(pg_dsn) as sink:
        assert await sink.count() == len(bars)
        stored = [bar for s in range(50) for bar in await sink.read(f"SYM{s}", "1m")]
        assert sorted(stored, key=repr) == sorted(bars, key=repr)
        await sink.write(bars[:500])  # a replay still changes nothing
        assert await sink.count() == len(bars)
    assert await primary_key(admin) == ["symbol", "timeframe", "ts", "vendor"]
    assert await admin.fetchval(f"SELECT version FROM {VERSION_TABLE}") == SCHEMA_VERSION
    await admin.execute("ANALYZE bars")
    assert is_index_search(await series_plan(admin))


async def test_a_current_database_opens_again_unchanged(pg_dsn: str, admin: Any) -> None:
    """Reopening a current database keeps its rows and its single version row."""
    async with PostgresBarsSink(pg_dsn) as sink:
        await sink.write(make_bars(30))
    async with PostgresBarsSink(pg_dsn) as sink:
        assert await sink.count() == 30
    assert await admin.fetch(f"SELECT component, version FROM {VERSION_TABLE}") == [
        ("bars", SCHEMA_VERSION)
    ]


async def test_a_database_of_a_newer_release_is_refused(pg_dsn: str, admin: Any) -> None:
    """A database whose schema version is newer than this release's fails to open, clearly."""
    async with PostgresBarsSink(pg_dsn) as sink:
        await sink.write(make_bars(5))
    await admin.execute(f"UPDATE {VERSION_TABLE} SET version = $1", SCHEMA_VERSION + 1)
    sink = PostgresBarsSink(pg_dsn)
    with pytest.raises(SchemaVersionError, match=rf"version {SCHEMA_VERSION + 1}.*upgrade"):
        await sink.open()
    assert sink.state is SinkState.NEW
    assert await admin.fetchval("SELECT count(*) FROM bars") == 5


@contextlib.asynccontextmanager
async def least_privilege_role(pg_dsn: str, admin: Any, tables: str) -> AsyncIterator[str]:
    """DSN of a fresh login role with SELECT, INSERT, UPDATE on ``tables`` and schema USAGE
    only (no CREATE, no TEMP); the role is dropped afterwards."""
    role = f"mds_writer_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        database = urlsplit(pg_dsn).path.lstrip("/")
        await admin.execute(f'REVOKE TEMP ON DATABASE "{database}" FROM PUBLIC, {role}')
        await admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await admin.execute(f"GRANT SELECT, INSERT, UPDATE ON {tables} TO {role}")
        parts = urlsplit(pg_dsn)
        yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")


@pytest.fixture
async def writer_dsn(pg_dsn: str, admin: Any) -> AsyncIterator[str]:
    """DSN of a least-privilege role on a database the owner has already opened."""
    async with PostgresBarsSink(pg_dsn):  # the owner creates the schema
        pass
    async with least_privilege_role(pg_dsn, admin, f"bars, {VERSION_TABLE}") as dsn:
        yield dsn


async def test_a_least_privilege_writer_opens_writes_and_reads(writer_dsn: str, admin: Any) -> None:
    """A role with only SELECT/INSERT/UPDATE and schema USAGE opens, writes, replays, reads."""
    role = urlsplit(writer_dsn).username
    assert not await admin.fetchval("SELECT has_schema_privilege($1, 'public', 'CREATE')", role)
    assert not await admin.fetchval(
        "SELECT has_database_privilege($1, current_database(), 'TEMP')", role
    )
    bars = make_bars(40)
    async with PostgresBarsSink(writer_dsn) as sink:
        await sink.write(bars)
        await sink.write(bars)  # a replay takes the merge path
        assert await sink.count() == 40
        assert await sink.read("SYM0", "1m") == [b for b in bars if b.symbol == "SYM0"]
        assert (await sink.latest(["SYM1"], "1m"))["SYM1"] == bars[-4]


async def test_a_least_privilege_writer_cannot_migrate_and_says_who_can(
    pg_dsn: str, admin: Any
) -> None:
    """A role without DDL rights opening a round-one database gets a clear, actionable error."""
    await admin.execute(ROUND_ONE_SCHEMA)
    async with least_privilege_role(pg_dsn, admin, "bars") as dsn:
        sink = PostgresBarsSink(dsn)
        with pytest.raises(SchemaPrivilegeError, match=r"migrate schema version 1 .*owner"):
            await sink.open()
        assert sink.state is SinkState.NEW
    async with PostgresBarsSink(pg_dsn):  # the owner migrates: the table is untouched so far
        pass
    assert await primary_key(admin) == ["symbol", "timeframe", "ts", "vendor"]
