"""The main job, examples/run_coordinator_feedback.py, runs to completion."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "run_coordinator_feedback.py"


def test_feedback_example_runs_writes_every_bar_and_reports_levels(tmp_path: Path) -> None:
    """A short run exits 0, prints level transitions and a summary, and stores every bar."""
    db = tmp_path / "bars.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDS_")}
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--duration",
            "2.5",
            "--db",
            str(db),
            "--dlq",
            str(tmp_path / "dlq.ndjson"),
            "--stall-every",
            "1.2",
            "--stall-sec",
            "0.6",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "HARD" in out and "SOFT" in out and "(queue_recovered)" in out, out
    assert "summary" in out and "queue depth over time" in out, out
    produced = int(out.split("bars produced")[1].split()[0].replace(",", ""))
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
    conn.close()
    assert produced > 0
    assert stored == produced
