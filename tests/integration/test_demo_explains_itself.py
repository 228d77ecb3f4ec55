"""The `make demo` example says what it does and never overwrites an earlier run's rows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "run_coordinator_feedback.py"


def run_demo(db: Path, dlq: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MDS_")}
    args = ["--duration", "0.4", "--db", str(db), "--dlq", str(dlq)]
    args += ["--stall-every", "1.0", "--stall-sec", "0.2", "--rate", "5000"]
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=db.parent,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def written_and_rows(out: str) -> tuple[int, int, int]:
    """(bars written, new rows, rows in the table now) from the summary."""
    found = re.search(
        r"bars written\s+([\d,]+)\s+\(new rows ([\d,]+); rows in the table now: ([\d,]+)\)", out
    )
    assert found is not None, out
    written, new, total = (int(g.replace(",", "")) for g in found.groups())
    return written, new, total


def test_second_run_adds_its_own_rows_and_dlq_path_shows_only_if_the_file_exists(
    tmp_path: Path,
) -> None:
    """Two runs into one database: each run's bars are new rows (fresh timestamps), the
    stall is announced as deliberate, and the DLQ path is printed only when the file exists."""
    db, dlq = tmp_path / "bars.db", tmp_path / "dlq.ndjson"
    first = run_demo(db, dlq)
    assert "stalls on purpose" in first
    assert str(dlq) not in first
    written1, new1, total1 = written_and_rows(first)
    assert written1 == new1 == total1 > 0

    dlq.touch()  # a dead-letter file from elsewhere: now the summary points to it
    second = run_demo(db, dlq)
    written2, new2, total2 = written_and_rows(second)
    assert written2 == new2 > 0
    assert total2 == total1 + written2
    assert str(dlq) in second
