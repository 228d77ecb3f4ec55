"""The examples run as scripts, end to end, and report what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MDS_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_http_demo_runs(tmp_path: Path) -> None:
    """The webhook demo exits 0 and its receiver verified every signed event it got."""
    result = run_example("run_http_feedback_demo.py", "--duration", "0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    verified = re.search(r"verified (\d+)/(\d+) signatures", result.stdout)
    assert verified is not None, result.stdout
    assert int(verified[1]) == int(verified[2]) >= 2
    assert re.search(r"\bhard\b.*\byes\b", result.stdout)
    assert re.search(r"\bok\b.*\bstopped\b.*\byes\b", result.stdout)
