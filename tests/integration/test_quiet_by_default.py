"""The library is silent unless the application enables its logging (issue 13.2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from loguru import logger
    import market_data_store
    from market_data_store import Bar, DeadLetterQueue, SqliteBarsSink, WriteCoordinator

    if sys.argv[1] == "enable":
        logger.enable("market_data_store")

    async def main() -> None:
        t0 = datetime(2024, 1, 2, tzinfo=UTC)
        bars = [
            Bar(vendor="v", symbol="AAPL", timeframe="1m", ts=t0 + timedelta(minutes=i),
                open=1.0, high=2.0, low=0.5, close=1.5, volume=1.0)
            for i in range(50)
        ]
        async with SqliteBarsSink("bars.db") as sink:
            coordinator = WriteCoordinator(
                sink=sink, capacity=20, batch_size=10, dlq=DeadLetterQueue("dlq.ndjson")
            )
            async with coordinator:
                await coordinator.submit_many(bars)
            print(await sink.count())

    asyncio.run(main())
    """
)


def run_script(mode: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MDS_")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_importing_and_running_a_coordinator_writes_nothing_to_stderr(tmp_path: Path) -> None:
    """Import, a SQLite sink and a coordinator through start, writes and stop: stderr empty."""
    result = run_script("default", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "50"
    assert result.stderr == ""


def test_enabling_the_library_logger_shows_its_lines(tmp_path: Path) -> None:
    """logger.enable("market_data_store") (the documented line) makes the same run log."""
    result = run_script("enable", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "market_data_store" in result.stderr
