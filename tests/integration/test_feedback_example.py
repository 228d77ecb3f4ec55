"""The main job, examples/run_coordinator_feedback.py, runs to completion."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "run_coordinator_feedback.py"


def test_feedback_example_runs_writes_every_bar_and_prints_every_event(tmp_path: Path) -> None:
    """A short run exits 0, prints each feedback event it received (the final OK "stopped"
    among them) and as many as its summary counts, stores every bar, and ends with the
    newest bars of the first symbol read back through the sink's read API. Which levels a
    run reaches depends on the machine's speed, so the test does not ask for SOFT or HARD
    (the state machine's own tests do, deterministically)."""
    db = tmp_path / "bars.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDS_")}
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--duration",
            "1.5",
            "--db",
            str(db),
            "--dlq",
            str(tmp_path / "dlq.ndjson"),
            "--stall-every",
            "0.6",
            "--stall-sec",
            "0.4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "summary" in out and "queue depth over time" in out, out
    event_lines = [line for line in out.splitlines() if " queue " in line and "  t=" in line]
    assert "OK   (stopped)" in event_lines[-1], out
    counted = out.split("events by level")[1].splitlines()[0]  # "OK 4, SOFT 3, HARD 3"
    assert sum(int(part.split()[1]) for part in counted.split(",")) == len(event_lines), out
    produced = int(out.split("bars produced")[1].split()[0].replace(",", ""))
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
        newest_us = conn.execute("SELECT MAX(ts) FROM bars WHERE symbol = 'AAPL'").fetchone()[0]
    conn.close()
    assert produced > 0
    assert stored == produced
    table = out.split("last bars of AAPL read back with sink.read()\n")[1].splitlines()
    rows = [line.split() for line in table[1:6]]
    assert len(rows) == 5 and all(len(row) == 6 for row in rows), out
    newest = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=newest_us)
    assert datetime.fromisoformat(rows[-1][0]) == newest
