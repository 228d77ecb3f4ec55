"""Real sinks for OHLCV bars: ``SqliteBarsSink`` (embedded default) and ``PostgresBarsSink``.

``PostgresBarsSink`` needs the ``postgres`` extra (asyncpg), imported when a sink opens, so
this package imports without it.
"""

from market_data_store.errors import SchemaPrivilegeError, SchemaVersionError
from market_data_store.sinks._lifecycle import SinkState, SinkStateError
from market_data_store.sinks.bar import Bar
from market_data_store.sinks.postgres import PostgresBarsSink
from market_data_store.sinks.sqlite import SqliteBarsSink

__all__ = [
    "Bar",
    "PostgresBarsSink",
    "SchemaPrivilegeError",
    "SchemaVersionError",
    "SinkState",
    "SinkStateError",
    "SqliteBarsSink",
]
