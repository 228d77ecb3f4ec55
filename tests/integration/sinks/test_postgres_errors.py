"""PostgresBarsSink under faults: every error classified, restarts lose nothing, no password
in any log line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from loguru import logger
from sink_helpers import invalid_bar, make_bars, wait_until

from market_data_store.coordinator import (
    CircuitBreaker,
    DeadLetterQueue,
    RetryPolicy,
    WriteCoordinator,
)
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError
from market_data_store.sinks import Bar, PostgresBarsSink
from market_data_store.sinks._pg_errors import Redactor, classify, dsn_password
from market_data_store.sinks._pg_schema import VERSION_TABLE
from market_data_store.sinks._schema import SchemaVersionError
from market_data_store.testing.postgres import PostgresServer

asyncpg = pytest.importorskip("asyncpg")
exceptions = asyncpg.exceptions

PASSWORD = "Sup3r-S3cret%"


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(exceptions.AdminShutdownError("terminating"), id="admin-shutdown-57P01"),
        pytest.param(exceptions.CannotConnectNowError("starting up"), id="starting-up-57P03"),
        pytest.param(exceptions.TooManyConnectionsError("too many"), id="too-many-conns-53300"),
        pytest.param(exceptions.SerializationError("serialize"), id="serialization-40001"),
        pytest.param(exceptions.DeadlockDetectedError("deadlock"), id="deadlock-40P01"),
        pytest.param(exceptions.QueryCanceledError("timeout"), id="statement-timeout-57014"),
        pytest.param(exceptions.LockNotAvailableError("lock"), id="lock-timeout-55P03"),
        pytest.param(exceptions.ConnectionFailureError("gone"), id="connection-08006"),
        pytest.param(exceptions.InsufficientPrivilegeError("no"), id="privilege-42501"),
        pytest.param(exceptions.InternalServerError("oops"), id="internal-XX000"),
        pytest.param(exceptions.ConnectionDoesNotExistError("closed"), id="connection-closed"),
        pytest.param(exceptions.InterfaceError("another operation"), id="interface-error"),
        pytest.param(exceptions.InternalClientError("protocol"), id="internal-client-error"),
        pytest.param(ConnectionResetError("reset by peer"), id="os-connection-reset"),
        pytest.param(ConnectionRefusedError("refused"), id="os-connection-refused"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(RuntimeError("something new"), id="unknown-exception"),
        pytest.param(KeyError("something new"), id="unknown-lookup-error"),
    ],
)
def test_outages_and_unknown_errors_are_retryable(exc: Exception) -> None:
    """Outages (connection, I/O, timeouts, too many connections, shutdown) and unknowns retry."""
    error, _ = classify(exc, Redactor("postgresql://u@h/db"))
    assert isinstance(error, RetryableSinkError)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(exceptions.InvalidTextRepresentationError("bad"), id="invalid-text-22P02"),
        pytest.param(exceptions.NumericValueOutOfRangeError("big"), id="out-of-range-22003"),
        pytest.param(exceptions.CharacterNotInRepertoireError("0x00"), id="nul-byte-22021"),
        pytest.param(exceptions.StringDataRightTruncationError("long"), id="too-long-22001"),
        pytest.param(exceptions.UntranslatableCharacterError("\\u0000"), id="untranslatable"),
        pytest.param(exceptions.CheckViolationError("low > open"), id="check-violation-23514"),
        pytest.param(exceptions._base.DataError("cannot encode"), id="client-encoding"),
        pytest.param(OverflowError("int too large"), id="overflow"),
    ],
)
def test_data_errors_are_permanent(exc: Exception) -> None:
    """Errors caused by a batch's own values are PermanentSinkError (splitting isolates them)."""
    error, broken = classify(exc, Redactor("postgresql://u@h/db"))
    assert isinstance(error, PermanentSinkError)
    assert broken is False


@pytest.mark.postgres
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(invalid_bar(symbol="NUL\x00BYTE"), id="nul-byte"),
        pytest.param(invalid_bar(vendor="\udcff"), id="unencodable-text"),
        pytest.param(invalid_bar(volume=10**400), id="numeric-out-of-range"),
        pytest.param(invalid_bar(open="NaN-ish"), id="invalid-text"),
    ],
)
async def test_a_real_data_error_is_permanent_and_writes_nothing(pg_dsn: str, bad: Bar) -> None:
    """A bar the server or the driver rejects for its value fails the batch for good."""
    async with PostgresBarsSink(pg_dsn) as sink:
        with pytest.raises(PermanentSinkError):
            await sink.write([*make_bars(10), bad])
        assert await sink.count() == 0


@pytest.mark.postgres
async def test_an_unknown_driver_exception_during_a_write_is_retryable(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception the sink has never heard of fails the write as retryable; the retry works."""
    async with PostgresBarsSink(pg_dsn, min_size=1, max_size=1) as sink:
        real_copy = asyncpg.Connection.copy_to_table

        async def strange_failure(self: Any, *args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(asyncpg.Connection, "copy_to_table", real_copy)
            raise LookupError("a driver bug nobody classified")

        monkeypatch.setattr(asyncpg.Connection, "copy_to_table", strange_failure)
        with pytest.raises(RetryableSinkError, match="driver bug"):
            await sink.write(make_bars(5))
        await sink.write(make_bars(5))
        assert await sink.count() == 5


@pytest.mark.postgres
async def test_restarts_of_the_server_mid_write_lose_no_bar(
    pg_server: PostgresServer, pg_dsn: str, tmp_path: Path
) -> None:
    """Bars streamed while the server restarts twice are all written, none dead-lettered."""
    dlq_path = tmp_path / "dlq.ndjson"
    retry = RetryPolicy(max_attempts=1000, initial_backoff_ms=5, max_backoff_ms=100)
    breaker = CircuitBreaker(failure_threshold=5, half_open_after_sec=0.05)
    submitted = 0
    async with PostgresBarsSink(pg_dsn) as sink:
        coord: WriteCoordinator[Bar] = WriteCoordinator(
            sink=sink, retry_policy=retry, circuit_breaker=breaker, dlq=DeadLetterQueue(dlq_path)
        )
        async with coord:
            for mode in ("fast", "immediate"):
                restart = asyncio.create_task(asyncio.to_thread(pg_server.restart, mode))
                while not restart.done():  # a steady feed, so writes are in flight throughout
                    await coord.submit_many(make_bars(500, offset=submitted, symbols=50))
                    submitted += 500
                    await wait_until(
                        lambda n=submitted: coord.stats().written >= n - 2000, 30, "keeping up"
                    )
                await restart
            await wait_until(lambda: coord.stats().written == submitted, 30, "all written")
        stats = coord.stats()
        assert stats.write_errors >= 1, "no write failed: the restarts hit no write"
        assert (stats.written, stats.dead_lettered, stats.dropped) == (submitted, 0, {})
        assert await sink.count() == submitted
    assert not dlq_path.exists()


def with_password(dsn: str, password: str = PASSWORD) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{password.replace('%', '%25')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def package_logging_enabled() -> bool:
    """Whether loguru passes on records logged from inside ``market_data_store``."""
    seen: list[str] = []
    handler = logger.add(seen.append, level="TRACE", filter=lambda r: "mds_probe" in r["extra"])
    try:
        probe = compile("logger.bind(mds_probe=1).trace('probe')", "<probe>", "exec")
        exec(probe, {"__name__": "market_data_store._probe", "logger": logger})
    finally:
        logger.remove(handler)
    return bool(seen)


@pytest.fixture
def debug_log() -> Iterator[list[str]]:
    """Every line the library logs at DEBUG and above, with logging enabled as a user would;
    the package's enabled state is restored afterwards."""
    lines: list[str] = []
    was_enabled = package_logging_enabled()
    logger.enable("market_data_store")
    handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    try:
        yield lines
    finally:
        logger.remove(handler)
        if not was_enabled:
            logger.disable("market_data_store")


@pytest.mark.postgres
async def test_a_dsn_password_never_reaches_a_log_line_or_error(
    pg_server: PostgresServer, pg_dsn: str, debug_log: list[str]
) -> None:
    """At DEBUG, opening, writing, failing, refusing and closing never show the password."""
    dsn = with_password(pg_dsn)  # trust authentication accepts any password
    errors: list[str] = []
    async with PostgresBarsSink(dsn) as sink:
        errors.append(repr(sink))
        await sink.write(make_bars(5))
        with pytest.raises(PermanentSinkError) as permanent:
            await sink.write([invalid_bar(low=1e9)])
        errors.append(str(permanent.value))
        await sink._pool.execute(f"UPDATE {VERSION_TABLE} SET version = version + 1")
    with pytest.raises(SchemaVersionError) as newer:
        await PostgresBarsSink(dsn).open()
    errors.append(str(newer.value))
    missing = urlunsplit(urlsplit(dsn)._replace(path="/no_such_database"))
    with pytest.raises(RetryableSinkError) as unreachable:
        await PostgresBarsSink(missing).open()
    errors.append(str(unreachable.value))
    assert any("opened" in line for line in debug_log)
    assert any("***" in line for line in debug_log)
    for text in debug_log + errors:
        assert PASSWORD not in text and "Sup3r" not in text, text


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://writer:{PASSWORD.replace('%', '%25')}@db.example:5432/market",
        f"postgres://writer:{PASSWORD}@db.example/market?sslmode=require",
        f"host=db.example user=writer password={PASSWORD} dbname=market",
        f"host=db.example user=writer password='{PASSWORD}' dbname=market",
    ],
)
def test_the_redactor_masks_every_spelling_of_the_password(dsn: str) -> None:
    """An error or log text quoting the DSN or the password shows ``***`` instead."""
    assert dsn_password(dsn) is not None
    redact = Redactor(dsn)
    leaked = f"could not connect with {dsn}; password was {PASSWORD}"
    masked = redact(leaked)
    assert "Sup3r" not in masked
    assert "***" in masked
    error, _ = classify(OSError(leaked), redact)
    assert "Sup3r" not in str(error)


@pytest.fixture
async def no_server_dsn() -> AsyncIterator[str]:
    """A DSN on a port nothing listens on."""
    from market_data_store.testing.postgres import free_port

    yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/db"


async def test_an_unreachable_server_at_open_is_a_retryable_masked_error(
    no_server_dsn: str,
) -> None:
    """open() against no server raises RetryableSinkError, the password masked."""
    sink = PostgresBarsSink(no_server_dsn)
    with pytest.raises(RetryableSinkError) as caught:
        await sink.open()
    assert PASSWORD not in str(caught.value)
    assert not sink.is_open
