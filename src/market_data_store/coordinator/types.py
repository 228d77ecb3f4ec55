"""Sink protocol, callback aliases and the library's exception tree.

Every error the library raises on purpose derives from ``MarketDataStoreError``::

    MarketDataStoreError
    ├── ConfigError (also ValueError)       bad constructor argument or setting
    ├── QueueFullError                      overflow_strategy="error" and no room
    ├── QueueClosedError                    put on a queue that was closed
    ├── CoordinatorNotRunningError          submit() before start() or after stop()
    ├── CircuitOpenError                    the circuit breaker refuses a call
    └── SinkError                           raised by sinks
        ├── RetryableSinkError              transient: retry the same batch
        └── PermanentSinkError              the batch can never succeed: dead-letter it
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar, runtime_checkable

T_contra = TypeVar("T_contra", contravariant=True)

BackpressureCallback = Callable[[], Awaitable[None]]
"""Phase 4 watermark callback: ``on_high`` on entering HARD, ``on_low`` on HARD -> OK."""

DropCallback = Callable[[T_contra], Awaitable[None] | None]
"""Called with each item that ``drop_oldest`` pushes out; may be sync or async."""

OverflowStrategy = Literal["block", "drop_oldest", "error"]
OVERFLOW_STRATEGIES: tuple[OverflowStrategy, ...] = ("block", "drop_oldest", "error")


@runtime_checkable
class Sink(Protocol[T_contra]):
    """Where batches go. The batch belongs to the sink: the caller never mutates it afterwards."""

    async def write(self, batch: Sequence[T_contra]) -> None: ...


class MarketDataStoreError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(MarketDataStoreError, ValueError):
    """An argument or setting is out of its allowed range; the message names it."""


class QueueFullError(MarketDataStoreError):
    """The queue has no room and its overflow strategy is ``"error"``."""


class QueueClosedError(MarketDataStoreError):
    """The queue was closed: it takes no more items."""


class CoordinatorNotRunningError(MarketDataStoreError):
    """``submit()`` was called on a coordinator that is not running."""


class CircuitOpenError(MarketDataStoreError):
    """The circuit breaker is open and refuses the call."""


class SinkError(MarketDataStoreError):
    """Raised by a sink; ``retryable`` tells the worker whether to try the batch again."""

    retryable: bool = True


class RetryableSinkError(SinkError):
    """A transient failure (connection lost, database locked): the same batch may succeed."""

    retryable = True


class PermanentSinkError(SinkError):
    """The batch can never succeed (invalid rows): it goes straight to the dead-letter queue."""

    retryable = False


def check_range(
    name: str,
    value: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ``ConfigError`` naming ``name`` and its allowed range unless lo <= value <= hi."""
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        raise ConfigError(f"{name} must satisfy {left}{name}{right}, got {value!r}")
