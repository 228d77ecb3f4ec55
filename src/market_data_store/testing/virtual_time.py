"""An asyncio event loop on a virtual clock, for simulations and tests of timing behaviour.

``loop.time()`` moves only when every task is waiting, and then jumps straight to the next
timer: ``await asyncio.sleep(10)`` costs no real time, and what a simulation measures does
not depend on how busy the machine is. Real I/O still works (it is polled without blocking);
with no timer pending the loop blocks on real I/O as usual.

    result = run_virtual(main())
"""

from __future__ import annotations

import asyncio
import dataclasses
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from market_data_store.feedback.bus import FeedbackBus
from market_data_store.feedback.events import FeedbackEvent

T = TypeVar("T")

_MIN_STEP_SEC = 1e-9


class _VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0


class _VirtualTimeSelector(selectors.DefaultSelector):
    """Polls real I/O without blocking; when nothing is ready, jumps to the next timer."""

    def __init__(self, clock: _VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:  # no timer at all: only real I/O (another thread) can wake us
                return super().select(None)
            # At least a nanosecond: the loop runs timers due within its clock resolution
            # early, and a task sleeping less than that would otherwise spin at one instant.
            self._clock.now += max(timeout, _MIN_STEP_SEC)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock starts at 0 and jumps to the next timer when all wait."""

    def __init__(self) -> None:
        self._virtual = _VirtualClock()
        super().__init__(_VirtualTimeSelector(self._virtual))

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion in a fresh ``VirtualTimeLoop`` and close it."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


class LoopTimeBus(FeedbackBus):
    """A bus stamping each event's ``ts`` with the running loop's time as it is published,
    so events carry the virtual clock, as a coordinator's wall clock would stamp them."""

    def publish_nowait(self, event: FeedbackEvent) -> None:
        now = asyncio.get_running_loop().time()
        super().publish_nowait(dataclasses.replace(event, ts=now))
