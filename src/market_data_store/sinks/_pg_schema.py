"""The PostgreSQL bars schema, its version, and migrating older databases in place.

Version 1 is the round-one table, keyed ``(vendor, symbol, timeframe, ts)``, without a
version table. Version 2 keys the table ``(symbol, timeframe, ts, vendor)``: one index
serves the upsert, a read by symbol and time range with or without vendor (ties ordered by
vendor, as the read API returns them) and the latest bar per symbol; a write touches that
one index only (a second index for reads cost a third of the write speed, see the commit
that chose this key). The version is kept in ``mds_schema_version``.

Opening a database already at the current version issues no DDL at all, so a role with only
``SELECT, INSERT, UPDATE`` on ``bars`` and ``mds_schema_version`` and ``USAGE`` on the schema
can use it (no ``TEMP`` either: a replayed batch is merged without a temporary table).
Creating or migrating needs the tables' owner and
happens under an advisory lock, in one transaction, so concurrent openers migrate once;
re-keying a large round-one table rebuilds its key index and blocks writers meanwhile.
"""

from __future__ import annotations

from typing import Any

from market_data_store.errors import SchemaPrivilegeError
from market_data_store.sinks._schema import check_schema_version

TABLE = "bars"
VERSION_TABLE = "mds_schema_version"
COMPONENT = "bars"
SCHEMA_VERSION = 2
KEY_COLUMNS = ("symbol", "timeframe", "ts", "vendor")
SCHEMA_LOCK_KEY = 0x6D64735F62617273  # pg_advisory_xact_lock key: "mds_bars"

CREATE_TABLE = f"""
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
    CONSTRAINT {TABLE}_pkey PRIMARY KEY ({", ".join(KEY_COLUMNS)}),
    CHECK (low <= open AND low <= close AND open <= high AND close <= high),
    CHECK (low > '-Infinity' AND high < 'Infinity'),
    CHECK (volume >= 0 AND volume < 'Infinity')
)
"""
CREATE_VERSION_TABLE = f"""
CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
    component text    PRIMARY KEY,
    version   integer NOT NULL
)
"""
SET_VERSION = f"""
INSERT INTO {VERSION_TABLE} (component, version) VALUES ($1, $2)
ON CONFLICT (component) DO UPDATE SET version = excluded.version
"""
PRIMARY_KEY_NAME = """
SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'
"""


async def found_version(conn: Any) -> int:
    """The schema version of the database: 0 empty, 1 round one, else the recorded one."""
    has_table, has_versions = await conn.fetchrow(
        "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL", TABLE, VERSION_TABLE
    )
    if has_versions:
        version = await conn.fetchval(
            f"SELECT version FROM {VERSION_TABLE} WHERE component = $1", COMPONENT
        )
        if version is not None:
            return int(version)
    return 1 if has_table else 0


async def ensure_schema(conn: Any, where: str) -> int:
    """Bring the database to ``SCHEMA_VERSION``; the version found before (0 for none).

    Raises ``SchemaVersionError`` for a database of a newer release, ``SchemaPrivilegeError``
    when the role may not create or migrate the schema. Issues no DDL when the database is
    current.
    """
    import asyncpg

    found = await found_version(conn)
    check_schema_version(found, SCHEMA_VERSION, where)
    if found == SCHEMA_VERSION:
        return found
    try:
        return await _upgrade(conn, where)
    except asyncpg.InsufficientPrivilegeError as exc:
        action = "create the schema" if found == 0 else f"migrate schema version {found}"
        raise SchemaPrivilegeError(
            f"{where}: this role may not {action} to version {SCHEMA_VERSION} ({exc}); open "
            "it once as the owner of its tables (or a role allowed to CREATE in its schema), "
            "after which SELECT, INSERT, UPDATE on the tables are enough"
        ) from None


async def _upgrade(conn: Any, where: str) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        found = await found_version(conn)  # another opener may have migrated meanwhile
        check_schema_version(found, SCHEMA_VERSION, where)
        if found == 0:
            await conn.execute(CREATE_TABLE)
        elif found == 1:
            await _migrate_1_to_2(conn)
        if found < SCHEMA_VERSION:
            await conn.execute(CREATE_VERSION_TABLE)
            await conn.execute(SET_VERSION, COMPONENT, SCHEMA_VERSION)
    return found


async def _migrate_1_to_2(conn: Any) -> None:
    """Re-key the round-one table series-first; every row stays (the key set is the same)."""
    old_key = await conn.fetchval(PRIMARY_KEY_NAME, TABLE)
    if old_key is not None:
        await conn.execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{old_key}"')
    await conn.execute(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY ({', '.join(KEY_COLUMNS)})"
    )
