"""What every bar sink promises, checked against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sink_helpers import invalid_bar, make_bars

from market_data_store.coordinator.types import PermanentSinkError, Sink
from market_data_store.sinks import (
    Bar,
    PostgresBarsSink,
    SinkState,
    SinkStateError,
    SqliteBarsSink,
)

BarSink = SqliteBarsSink | PostgresBarsSink
MakeSink = Callable[[str], BarSink]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_sink(request: pytest.FixtureRequest, tmp_path: Path) -> MakeSink:
    """Builds an unopened sink of either kind, named for its metrics."""
    if request.param == "sqlite":
        return lambda name: SqliteBarsSink(tmp_path / "bars.db", name=name)
    pytest.importorskip("asyncpg")
    dsn: str = request.getfixturevalue("pg_dsn")
    return lambda name: PostgresBarsSink(dsn, name=name)


@pytest.fixture
async def sink(make_sink: MakeSink) -> AsyncIterator[BarSink]:
    async with make_sink(f"contract-{uuid.uuid4().hex[:8]}") as opened:
        yield opened


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_sink_implements_the_sink_protocol(sink: BarSink) -> None:
    """Both sinks are ``Sink[Bar]`` for the coordinator."""
    assert isinstance(sink, Sink)


async def test_the_batch_is_not_modified(sink: BarSink) -> None:
    """write() leaves the list it was given as it was, a repeated key included."""
    bars = make_bars(10)
    batch: list[Bar] = [*bars, bars[0]]
    await sink.write(batch)
    assert batch == [*bars, bars[0]]


async def test_concurrent_writes_all_land(sink: BarSink) -> None:
    """Batches written concurrently from several tasks are all stored."""
    await asyncio.gather(*(sink.write(make_bars(100, offset=i * 100)) for i in range(8)))
    assert await sink.count() == 800


async def test_metrics_count_rows_latency_and_errors(sink: BarSink) -> None:
    """Rows written, write latency and permanent errors are exported labelled by sink."""
    name = sink.name
    rows = sample("mds_sink_rows_written_total", sink=name)
    batches = sample("mds_sink_write_latency_seconds_count", sink=name)
    errors = sample("mds_sink_write_errors_total", sink=name, kind="permanent")
    await sink.write(make_bars(7))
    with pytest.raises(PermanentSinkError):
        await sink.write([invalid_bar(low=1e9)])
    assert sample("mds_sink_rows_written_total", sink=name) == rows + 7
    assert sample("mds_sink_write_latency_seconds_count", sink=name) == batches + 1
    assert sample("mds_sink_write_errors_total", sink=name, kind="permanent") == errors + 1


async def test_lifecycle_new_open_closed(make_sink: MakeSink) -> None:
    """A sink refuses work before open and after close, opens once, and closes idempotently."""
    sink = make_sink("contract-lifecycle")
    assert sink.state is SinkState.NEW
    with pytest.raises(SinkStateError, match="not open yet"):
        await sink.write(make_bars(1))
    with pytest.raises(SinkStateError, match="not open yet"):
        await sink.count()
    await sink.open()
    assert sink.state is SinkState.OPEN
    with pytest.raises(SinkStateError, match="already open"):
        await sink.open()
    await sink.write(make_bars(2))
    await sink.close()
    await sink.close()
    assert sink.state is SinkState.CLOSED
    with pytest.raises(SinkStateError, match="closed"):
        await sink.write(make_bars(1))
    with pytest.raises(SinkStateError, match="closed"):
        await sink.count()
    with pytest.raises(SinkStateError, match="cannot be reopened"):
        await sink.open()
