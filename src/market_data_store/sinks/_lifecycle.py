"""Lifecycle state shared by the bar sinks: new -> open -> closed, never back."""

from __future__ import annotations

from enum import StrEnum

from market_data_store.coordinator.types import MarketDataStoreError


class SinkState(StrEnum):
    """Where a sink is in its life. A closed sink cannot be reopened."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class SinkStateError(MarketDataStoreError, RuntimeError):
    """The sink is not in a state that allows the call: not opened yet, already open, or closed.

    This is a programming error, not a database failure, so it is not a ``SinkError``; it is
    marked not retryable, so a coordinator dead-letters the batch at once instead of retrying.
    """

    retryable = False


class Lifecycle:
    """Tracks one sink's state and raises ``SinkStateError`` with a message naming the sink."""

    __slots__ = ("_label", "state")

    def __init__(self, label: str) -> None:
        self._label = label
        self.state = SinkState.NEW

    def check_can_open(self) -> None:
        """Raise unless the sink is new (open once; a closed sink stays closed)."""
        if self.state is SinkState.OPEN:
            raise SinkStateError(f"{self._label} is already open")
        if self.state is SinkState.CLOSED:
            raise SinkStateError(f"{self._label} is closed and cannot be reopened")

    def check_open(self) -> None:
        """Raise unless the sink is open."""
        if self.state is SinkState.OPEN:
            return
        if self.state is SinkState.NEW:
            raise SinkStateError(
                f"{self._label} is not open yet: use 'async with' or await open() first"
            )
        raise SinkStateError(f"{self._label} is closed")

    def begin_close(self) -> bool:
        """Mark the sink closed; False if it already was (so close() is idempotent)."""
        if self.state is SinkState.CLOSED:
            return False
        self.state = SinkState.CLOSED
        return True
