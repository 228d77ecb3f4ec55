"""The SQLite bar table: its schema, versions and migrations, and the SQL the sink runs.

``PRAGMA user_version`` holds the schema version: 0 is the first release's (no version).
``migrate`` brings an older database to ``SCHEMA_VERSION`` in place, in one transaction,
keeping every row, and refuses a newer one with ``SchemaVersionError``.
"""

from __future__ import annotations

import sqlite3

from loguru import logger

from market_data_store.sinks._schema import check_schema_version
from market_data_store.sinks.bar import BAR_FIELDS, SERIES_FIELDS

TABLE = "bars"
COLUMNS = ", ".join(BAR_FIELDS)
SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema below; 0 is the first release's (no version)."""

# The key leads with the series, (symbol, timeframe, ts, vendor): a read of one series and
# time range is one range search of the table itself, in the order read() returns, and a
# commit of interleaved symbols touches one leaf page per symbol in one b-tree. Measured
# (benchmarks/bench_sinks.py --keys) against a time-first key (ts, vendor, symbol,
# timeframe), which appends at the right edge but needs a second index for reads: writes
# equal within noise, series reads 1.3-1.5x faster here; the first release's vendor-first key
# plus that index writes slower.
TABLE_COLUMNS = """
    vendor    TEXT    NOT NULL,
    symbol    TEXT    NOT NULL,
    timeframe TEXT    NOT NULL,
    ts        INTEGER NOT NULL,  -- microseconds since 1970-01-01T00:00:00Z
    open      REAL    NOT NULL,
    high      REAL    NOT NULL,
    low       REAL    NOT NULL,
    close     REAL    NOT NULL,
    volume    REAL    NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts, vendor),
    CHECK (low <= open AND low <= close AND open <= high AND close <= high),
    CHECK (low > -9e999 AND high < 9e999),
    CHECK (volume >= 0 AND volume < 9e999)
"""
CREATE_TABLE = f"CREATE TABLE IF NOT EXISTS {TABLE} ({TABLE_COLUMNS}) WITHOUT ROWID"
# Version 0 (the first release) keyed the table (vendor, symbol, timeframe, ts), so a read
# without vendor scanned it: migrating rebuilds it in key order, keeping every row.
MIGRATE_FROM_0 = (
    f"CREATE TABLE {TABLE}_v1 ({TABLE_COLUMNS}) WITHOUT ROWID",
    f"INSERT INTO {TABLE}_v1 ({COLUMNS}) SELECT {COLUMNS} FROM {TABLE} "
    "ORDER BY symbol, timeframe, ts, vendor",
    f"DROP TABLE {TABLE}",
    f"ALTER TABLE {TABLE}_v1 RENAME TO {TABLE}",
)
# ts as ISO-8601 UTC text with microseconds (floor division, so before 1970 works too).
CREATE_READABLE_VIEW = f"""
CREATE VIEW IF NOT EXISTS bars_readable AS
SELECT vendor, symbol, timeframe,
    strftime('%Y-%m-%dT%H:%M:%S', (ts - us) / 1000000, 'unixepoch')
        || printf('.%06dZ', us) AS ts,
    open, high, low, close, volume
FROM (SELECT *, ((ts % 1000000) + 1000000) % 1000000 AS us FROM {TABLE})
"""
SCHEMA = (CREATE_TABLE, CREATE_READABLE_VIEW)

UPSERT = f"""
INSERT INTO {TABLE} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (vendor, symbol, timeframe, ts) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low,
    close = excluded.close, volume = excluded.volume
"""


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction (no-op when it is there).

    Raises ``SchemaVersionError`` for a database written by a newer release.
    """
    version = user_version(conn)
    check_schema_version(version, SCHEMA_VERSION, f"SQLite database {path!r}")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = user_version(conn)  # another process may have migrated meanwhile
        check_schema_version(version, SCHEMA_VERSION, f"SQLite database {path!r}")
        if version < SCHEMA_VERSION:
            if version == 0 and table_exists(conn, TABLE):
                for statement in MIGRATE_FROM_0:
                    conn.execute(statement)
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            logger.info("SQLite {}: schema version {} -> {}", path, version, SCHEMA_VERSION)
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.rollback()


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the database holds a table called ``name``."""
    sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
    return bool(conn.execute(sql, (name,)).fetchone()[0])


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the database header."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def select_sql(*, vendor: bool, after: bool) -> str:
    """The range query of ``read``/``iter_bars``; ``after`` adds the keyset of the last page."""
    where = ["symbol = :symbol", "timeframe = :timeframe", "ts >= :start", "ts < :end"]
    if vendor:
        where.append("vendor = :vendor")
    if after and vendor:
        where.append("ts > :after_ts")
    elif after:
        where.append("ts >= :after_ts AND (ts > :after_ts OR vendor > :after_vendor)")
    return (
        f"SELECT {', '.join(SERIES_FIELDS)} FROM {TABLE} WHERE {' AND '.join(where)} "
        "ORDER BY ts, vendor LIMIT :limit"
    )


SELECT_RANGE = {
    (vendor, after): select_sql(vendor=vendor, after=after)
    for vendor in (False, True)
    for after in (False, True)
}
# The bar read() would return last: newest ts, ties to the last vendor in name order.
SELECT_LATEST = {
    False: f"SELECT {COLUMNS} FROM {TABLE} WHERE symbol = ? AND timeframe = ? "
    "ORDER BY ts DESC, vendor DESC LIMIT 1",
    True: f"SELECT {COLUMNS} FROM {TABLE} WHERE symbol = ? AND timeframe = ? AND vendor = ? "
    "ORDER BY ts DESC LIMIT 1",
}
