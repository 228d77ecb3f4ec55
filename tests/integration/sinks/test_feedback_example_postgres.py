"""The feedback example writes into PostgreSQL when given --postgres-dsn."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "run_coordinator_feedback.py"


async def test_feedback_example_writes_every_bar_into_postgres(pg_dsn: str, tmp_path: Path) -> None:
    """A short run with --postgres-dsn exits 0 and the table holds every bar it produced."""
    asyncpg = pytest.importorskip("asyncpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--duration",
        "1.5",
        "--postgres-dsn",
        pg_dsn,
        "--dlq",
        str(tmp_path / "dlq.ndjson"),
        "--stall-every",
        "1.0",
        "--stall-sec",
        "0.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    out_bytes, _ = await asyncio.wait_for(proc.communicate(), 60)
    out = out_bytes.decode()
    assert proc.returncode == 0, out
    assert "into PostgreSQL" in out, out
    produced = int(out.split("bars produced")[1].split()[0].replace(",", ""))
    conn = await asyncpg.connect(pg_dsn)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM bars")
    finally:
        await conn.close()
    assert produced > 0
    assert stored == produced
