"""Fixtures for the sink tests: bars, and a throwaway PostgreSQL server for the session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from market_data_store.testing._server import serve_for_tests
from market_data_store.testing.postgres import (
    PostgresServer,
    PostgresUnavailableError,
    postgres_required,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; skips (fails under MDS_REQUIRE_POSTGRES=1)
    where none can be started."""
    yield from serve_for_tests(
        PostgresServer(), PostgresUnavailableError, required=postgres_required, what="PostgreSQL"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that needs the server must carry the ``postgres`` marker, so that
    ``pytest -m "not postgres"`` starts none."""
    if "pg_server" in getattr(item, "fixturenames", ()):
        _require_postgres_marker(item)


def _require_postgres_marker(node: pytest.Item) -> None:
    if node.get_closest_marker("postgres") is None:
        pytest.fail(f"{node.nodeid} starts PostgreSQL but is not marked postgres", pytrace=False)


@pytest.fixture
async def pg_dsn(pg_server: PostgresServer, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """DSN of a fresh, empty database on the session server, dropped after the test."""
    _require_postgres_marker(request.node)  # also when requested by getfixturevalue()
    asyncpg = pytest.importorskip("asyncpg")
    name = f"mds_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield pg_server.dsn_for(name)
    finally:
        pg_server.start()  # a test may have left it stopped
        admin = await asyncpg.connect(pg_server.dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
