"""The library is silent unless the application enables its logging (issue 13.2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

MARK = "--- logger.enable ---\n"
SCRIPT = f"MARK = {MARK!r}\n" + textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from loguru import logger
    import market_data_store
    from market_data_store import Bar, DeadLetterQueue, SqliteBarsSink, WriteCoordinator

    async def main(db: str) -> None:
        t0 = datetime(2024, 1, 2, tzinfo=UTC)
        bars = [
            Bar(vendor="v", symbol="AAPL", timeframe="1m", ts=t0 + timedelta(minutes=i),
                open=1.0, high=2.0, low=0.5, close=1.5, volume=1.0)
            for i in range(50)
        ]
        async with SqliteBarsSink(db) as sink:
            coordinator = WriteCoordinator(
                sink=sink, capacity=20, batch_size=10, dlq=DeadLetterQueue("dlq.ndjson")
            )
            async with coordinator:
                await coordinator.submit_many(bars)
            print(await sink.count())

    asyncio.run(main("quiet.db"))
    sys.stderr.write(MARK)
    logger.enable("market_data_store")  # the documented line: the same run now logs
    asyncio.run(main("loud.db"))
    """
)


def run_script(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MDS_")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_importing_and_running_a_coordinator_writes_nothing_to_stderr(tmp_path: Path) -> None:
    """Import, a SQLite sink and a coordinator through start, writes and stop: stderr stays
    empty until the application calls logger.enable("market_data_store"), then it logs."""
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["50", "50"]
    quiet, _, loud = result.stderr.partition(MARK)
    assert quiet == ""
    assert "market_data_store" in loud
