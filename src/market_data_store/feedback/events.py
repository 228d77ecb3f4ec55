"""Pressure levels, the immutable ``FeedbackEvent`` and the ``FeedbackSubscriber`` protocol."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

MEASURED_REASON = "measured"
"""The reason of a queue's report of fresh rates while its level stays SOFT or HARD: the same
level again, not a transition."""


class BackpressureLevel(str, Enum):  # noqa: UP042 - the contract spells (str, Enum)
    """Pressure on a coordinator's queue; ``"ok" < "soft" < "hard"`` in urgency."""

    OK = "ok"
    SOFT = "soft"
    HARD = "hard"


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One immutable pressure signal from one coordinator.

    Args:
        coordinator_id: the coordinator that emitted it.
        queue_size: items in its queue when emitted.
        capacity: its queue's capacity in items (``utilization`` is 0.0 when this is 0).
        level: the pressure level.
        reason: why, beyond a level change (``"circuit_open"``, ``"stopped"``, ...), or None.
        ts: when emitted, ``time.time()`` seconds (default: now).
        seq: one more than the coordinator's previous event (its first is 1); 0 when unnumbered.
        drain_rate: items/s workers took from the queue over about the last second, as the
            queue measured it; None when not measured (its first instants, user-built events).
        arrival_rate: items/s that entered the queue over the same window (taken, queued
            and dropped), None when not measured. A producer's share of the drain is
            ``drain_rate * own rate / arrival_rate``.
    """

    coordinator_id: str
    queue_size: int
    capacity: int
    level: BackpressureLevel
    reason: str | None = None
    ts: float = field(default_factory=time.time)
    seq: int = 0
    drain_rate: float | None = None
    arrival_rate: float | None = None

    @classmethod
    def create(
        cls,
        coordinator_id: str,
        queue_size: int,
        capacity: int,
        level: BackpressureLevel | str,
        reason: str | None = None,
    ) -> FeedbackEvent:
        """An event stamped now with ``seq`` 0 (the plan's constructor); ``level`` may be
        a ``BackpressureLevel`` or its value (``"ok"``, ``"soft"``, ``"hard"``)."""
        return cls(coordinator_id, queue_size, capacity, BackpressureLevel(level), reason)

    @property
    def utilization(self) -> float:
        """queue_size / capacity, 0.0 when capacity is 0."""
        return self.queue_size / self.capacity if self.capacity else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``utilization`` (the webhook payload)."""
        data = asdict(self)
        data["level"] = self.level.value
        data["utilization"] = self.utilization
        return data


@runtime_checkable
class FeedbackSubscriber(Protocol):
    """Anything awaitable with one event: a coroutine function, a bound method, an object."""

    async def __call__(self, event: FeedbackEvent) -> None: ...


def encode_event(event: FeedbackEvent) -> str:
    """The JSON payload of ``event`` (``to_dict()``, compact): the webhook's body and what the
    Redis transport publishes."""
    return json.dumps(event.to_dict(), separators=(",", ":"))
