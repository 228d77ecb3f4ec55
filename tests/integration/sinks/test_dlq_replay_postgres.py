"""The DLQ replay command into PostgreSQL: every record stored once, a second run no-op."""

from __future__ import annotations

from pathlib import Path

import pytest
from sink_helpers import make_bars

from market_data_store.coordinator import DeadLetterQueue
from market_data_store.dlq.__main__ import parse_args, replay
from market_data_store.sinks import Bar, PostgresBarsSink

pytestmark = pytest.mark.postgres
pytest.importorskip("asyncpg")


async def test_replay_into_postgres_stores_each_record_once(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--postgres-dsn: 3 records stored once; replaying the archive adds no row."""
    path = tmp_path / "dlq.ndjson"
    dlq: DeadLetterQueue[Bar] = DeadLetterQueue(path)
    all_bars = make_bars(30)
    for i in range(0, 30, 10):
        await dlq.save(all_bars[i : i + 10], "ConnectionError: server closed the connection")
    assert await replay(parse_args(["replay", str(path), "--postgres-dsn", pg_dsn])) == 0
    out = capsys.readouterr().out
    assert "stored 30 of 30 bars from 3 records" in out
    archive = out.rsplit(" as ", 1)[1].strip()  # "archived FILE as FILE.replayed-<time>"
    assert ".replayed-" in archive
    assert await replay(parse_args(["replay", str(archive), "--postgres-dsn", pg_dsn])) == 0
    assert "0 new rows (30 rows now)" in capsys.readouterr().out
    async with PostgresBarsSink(pg_dsn) as sink:
        assert await sink.count() == 30
