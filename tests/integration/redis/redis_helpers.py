"""Helpers shared by the Redis transport tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from market_data_store.feedback import FeedbackBus, FeedbackEvent

DEMO = Path(__file__).resolve().parents[3] / "examples" / "run_redis_feedback_demo.py"


class Recorder:
    """A bus subscriber keeping every event it gets, in order."""

    def __init__(self, bus: FeedbackBus) -> None:
        self.events: list[FeedbackEvent] = []
        bus.subscribe(self)

    async def __call__(self, event: FeedbackEvent) -> None:
        self.events.append(event)

    def last(self, coordinator_id: str) -> FeedbackEvent | None:
        """The last event received from ``coordinator_id``."""
        mine = [e for e in self.events if e.coordinator_id == coordinator_id]
        return mine[-1] if mine else None


def spawn_demo(*args: str) -> subprocess.Popen[str]:
    """The Redis demo script as a subprocess (one role), its stdout piped, no MDS_* from
    outside."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MDS_")}
    return subprocess.Popen(
        [sys.executable, str(DEMO), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
