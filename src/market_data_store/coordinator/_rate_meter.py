"""RateMeter: the drain and arrival rates a queue measures at its takes, for feedback events.

A queue has workers take whole batches; what left it over about the last ``WINDOW_SEC`` is
the drain, what entered it (taken + queued + dropped, so no put reads a clock) the arrivals.
A take is sampled as (time, taken, arrived) at most once per ``SAMPLE_SEC``; every take
is remembered as the newest one. The drain's window runs from the newest sample at
least ``WINDOW_SEC`` older than the newest take (or the oldest, if that spans
``MIN_SPAN_SEC``) to the newest take: both are taken just after a take, so the window holds whole
takes however wide a batch is. The arrivals' window ends at the emission instead (arrivals
need no take). A take that had to wait for items, or that emptied the queue, says the
workers outrun the arrivals (the sink is not what limits the drain, as while workers first
fill their pipeline): the window starts afresh there. When no take has happened for longer
than the window spans (a stalled sink) the drain's window ends at the emission too, so the
drain measured falls.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW_SEC = 0.5
"""The rates span about this long. Shorter follows a sink that changes sooner; a window
holds whole takes, so it is exact for regular takes whatever its length (closed_loop_sim:
at 1.0 s the wide four-producer scenarios made 0.57 level changes/s, at 0.5 s 0.33)."""
SAMPLE_SEC = 0.1
"""Takes are sampled at most this often."""
MIN_SPAN_SEC = 0.25
"""A shorter window (a queue's first instants) measures nothing: the rates are None."""
REPORT_SEC = 1.0
"""While SOFT or HARD, a take reports fresh rates once this long has passed since the level
changed or since the last report."""


class RateMeter:
    """Counts what a queue's takes removed and samples it against time (see the module).

    Every take updates ``taken`` and ``took_at`` (two attribute stores: the queue does it
    inline); only a take at or after ``sample_due``, or one that restarts the
    window, calls ``record``. The newest take always ends the drain's window.
    """

    __slots__ = ("report_at", "sample_due", "samples", "taken", "took_at")

    def __init__(self) -> None:
        self.taken = 0
        self.took_at = -math.inf  # when the newest take happened
        self.samples: deque[tuple[float, int, int]] = deque()  # (time, taken, arrived)
        self.sample_due = -math.inf  # a take from then on is sampled
        self.report_at = math.inf  # a report is due from then (-inf: set at the next take)

    def record(self, now: float, queued: int, dropped: int, *, restart: bool) -> None:
        """Sample the queue right after a take (``restart``: the workers outran arrivals)."""
        samples = self.samples
        if restart:
            samples.clear()
        self.took_at = now
        samples.append((now, self.taken, self.taken + queued + dropped))
        self.sample_due = now + SAMPLE_SEC
        while len(samples) >= 2 and samples[1][0] <= now - WINDOW_SEC:
            samples.popleft()  # samples[0] stays the newest one at least a window old

    def rates(
        self, now: float | None, queued: int, dropped: int
    ) -> tuple[float | None, float | None]:
        """(drain, arrival) in items/s at ``now`` (None: the last take's time), or Nones."""
        samples = self.samples
        if not samples or (len(samples) < 2 and self.took_at <= samples[0][0]):
            return None, None
        start, taken0, arrived0 = samples[0]
        end = self.took_at
        if now is None:
            now = end
        if now - end > max(end - start, WINDOW_SEC):  # longer than a take interval: stalled
            end = now
        span = end - start
        if span < MIN_SPAN_SEC:
            return None, None
        arrived = self.taken + queued + dropped - arrived0
        return (self.taken - taken0) / span, arrived / (now - start)

    def report_due(self, now: float) -> bool:
        """Whether a take at ``now`` (at or after ``report_at``) reports fresh rates; the
        first take after a change to SOFT or HARD only sets when the first report is due."""
        due = self.report_at != -math.inf
        self.report_at = now + REPORT_SEC
        return due

    def level_changed(self, pressed: bool) -> None:
        """Reports come a whole ``REPORT_SEC`` after a change to SOFT or HARD (``pressed``),
        none while OK: a take compares its time with ``report_at`` and nothing else."""
        self.report_at = -math.inf if pressed else math.inf
