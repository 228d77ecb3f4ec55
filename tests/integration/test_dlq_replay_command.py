"""``python -m market_data_store.dlq replay``: every record stored once, then archived."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from market_data_store.coordinator import DeadLetterQueue
from market_data_store.dlq.__main__ import main
from market_data_store.sinks import Bar

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
RECORD_SIZES = (4, 3, 5)


def bars(n: int, first: int) -> list[Bar]:
    """``n`` bars with distinct keys; bar ``i`` has volume ``i`` so rows can be told apart."""
    return [
        Bar(
            vendor="v",
            symbol=f"S{i % 3}",
            timeframe="1m",
            ts=T0 + timedelta(minutes=i),
            open=10.0,
            high=11.0,
            low=9.0,
            close=10.5,
            volume=float(i),
        )
        for i in range(first, first + n)
    ]


def write_dlq_file(path: Path) -> set[tuple[str, float]]:
    """Three records of bars plus one corrupt line; returns (symbol, volume) of every bar."""

    async def fill() -> list[Bar]:
        dlq: DeadLetterQueue[Bar] = DeadLetterQueue(path)
        saved: list[Bar] = []
        for size in RECORD_SIZES:
            batch = bars(size, len(saved))
            await dlq.save(batch, RuntimeError("database is locked"), {"coordinator_id": "c"})
            saved += batch
            if len(saved) == RECORD_SIZES[0]:
                with path.open("a", encoding="utf-8") as fh:
                    fh.write("cut short by a crash\n")
        return saved

    return {(bar.symbol, bar.volume) for bar in asyncio.run(fill())}


def stored_rows(db: Path) -> list[tuple[str, float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT symbol, volume FROM bars ORDER BY volume").fetchall()
    conn.close()
    return rows


def test_replay_stores_every_record_once_and_archives_the_file(tmp_path: Path) -> None:
    """The command (run as ``python -m``) stores every bar of every record, prints it, and
    renames the file to FILE.replayed-<time>."""
    dlq, db = tmp_path / "dlq.ndjson", tmp_path / "bars.db"
    expected = write_dlq_file(dlq)
    command = ["replay", str(dlq), "--sqlite", str(db), "--page-size", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "market_data_store.dlq", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(stored_rows(db)) == sorted(expected)
    assert "stored 12 of 12 bars from 3 records" in result.stdout
    assert "12 new rows" in result.stdout
    assert result.stdout.count("record ") == 3
    assert not dlq.exists()
    assert [p.name.startswith("dlq.ndjson.replayed-") for p in tmp_path.glob("dlq.ndjson*")] == [
        True
    ]


def test_a_second_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run again on FILE (now archived): nothing to do; on the archive itself: 0 new rows."""
    dlq, db = tmp_path / "dlq.ndjson", tmp_path / "bars.db"
    write_dlq_file(dlq)
    assert main(["replay", str(dlq), "--sqlite", str(db)]) == 0
    first = stored_rows(db)
    capsys.readouterr()

    assert main(["replay", str(dlq), "--sqlite", str(db)]) == 0
    assert "nothing to replay" in capsys.readouterr().out
    assert stored_rows(db) == first

    (archive,) = tmp_path.glob("dlq.ndjson.replayed-*")
    assert main(["replay", str(archive), "--sqlite", str(db)]) == 0
    out = capsys.readouterr().out
    assert "stored 12 of 12 bars" in out and "0 new rows (12 rows now)" in out
    assert stored_rows(db) == first


def test_a_file_with_invalid_items_is_kept_for_another_try(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An item that is not a valid bar: the valid ones are stored, exit 1, file kept."""
    dlq, db = tmp_path / "dlq.ndjson", tmp_path / "bars.db"
    write_dlq_file(dlq)
    asyncio.run(DeadLetterQueue(dlq).save([{"symbol": "X", "close": "nan"}], "bad row"))
    assert main(["replay", str(dlq), "--sqlite", str(db)]) == 1
    assert len(stored_rows(db)) == 12
    (kept,) = tmp_path.glob("dlq.ndjson.replaying-*")
    assert str(kept) in capsys.readouterr().out
    assert not list(tmp_path.glob("dlq.ndjson.replayed-*"))


def test_dead_letter_queue_is_the_same_class_from_both_imports() -> None:
    """market_data_store.dlq re-exports the coordinator's DeadLetterQueue (one class)."""
    import market_data_store.coordinator as coordinator
    import market_data_store.dlq as dlq

    assert dlq.DeadLetterQueue is coordinator.DeadLetterQueue
    assert dlq.DLQRecord is coordinator.DLQRecord
