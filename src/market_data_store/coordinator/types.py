"""Sink protocol and callback aliases; the exception tree lives in ``market_data_store.errors``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar, runtime_checkable

from market_data_store._validation import check_range
from market_data_store.errors import (
    CircuitOpenError,
    ConfigError,
    CoordinatorNotRunningError,
    MarketDataStoreError,
    PermanentSinkError,
    QueueClosedError,
    QueueFullError,
    RetryableSinkError,
    SinkError,
)

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


__all__ = [
    "OVERFLOW_STRATEGIES",
    "BackpressureCallback",
    "CircuitOpenError",
    "ConfigError",
    "CoordinatorNotRunningError",
    "DropCallback",
    "MarketDataStoreError",
    "OverflowStrategy",
    "PermanentSinkError",
    "QueueClosedError",
    "QueueFullError",
    "RetryableSinkError",
    "Sink",
    "SinkError",
    "check_range",
]
