"""Asyncio write path for market data: bounded queue, batching workers, sinks, backpressure.

Quickstart (install from a checkout with ``pip install '.[feedback]'``)::

    import asyncio
    from datetime import UTC, datetime
    from market_data_store import Bar, SqliteBarsSink, WriteCoordinator

    async def main() -> None:
        async with SqliteBarsSink("market_data.db") as sink:
            async with WriteCoordinator(sink=sink, coord_id="bars") as coordinator:
                bar = Bar(vendor="demo", symbol="AAPL", timeframe="1m", ts=datetime.now(UTC),
                          open=10.0, high=11.0, low=9.5, close=10.5, volume=100.0)
                await coordinator.submit(bar)  # waits while the queue is full
            print(coordinator.stats().written)  # 1: leaving the block drained the queue

    asyncio.run(main())

``feedback_bus().subscribe(callback)`` (an ``async def``) receives a ``FeedbackEvent``
(OK / SOFT / HARD) whenever a queue's pressure level changes; ``RateController`` turns those
into a producer rate. ``WriteCoordinator.from_settings(sink=...)`` reads ``MDS_*`` variables
(environment or ``.env``); an unknown ``MDS_*`` name gets an ``UnknownSettingWarning``.
The library logs with loguru, disabled at import as loguru advises for libraries:
``logger.enable("market_data_store")`` turns it on.
"""

from loguru import logger

from market_data_store._settings import UnknownSettingWarning
from market_data_store.coordinator import (
    BackpressureCallback,
    BackpressureLevel,
    BoundedQueue,
    CircuitBreaker,
    CoordinatorHealth,
    CoordinatorRuntimeSettings,
    CoordinatorStats,
    DeadLetterQueue,
    DLQRecord,
    FeedbackBus,
    FeedbackEvent,
    FeedbackSettings,
    FeedbackSubscriber,
    HttpFeedbackBroadcaster,
    RateController,
    RetryPolicy,
    Sink,
    WriteCoordinator,
    default_retry_classifier,
    feedback_bus,
)
from market_data_store.errors import (
    CircuitOpenError,
    ConfigError,
    CoordinatorNotRunningError,
    InvalidFeedbackError,
    MarketDataStoreError,
    PermanentSinkError,
    QueueClosedError,
    QueueFullError,
    RetryableSinkError,
    SchemaPrivilegeError,
    SchemaVersionError,
    SinkError,
    WebhookVerificationError,
)
from market_data_store.feedback import FeedbackReceiver
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink

# A library does not decide what an application logs: silent until the application enables it.
logger.disable("market_data_store")

__version__ = "0.8.0"

__all__ = [
    "BackpressureCallback",
    "BackpressureLevel",
    "Bar",
    "BoundedQueue",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigError",
    "CoordinatorHealth",
    "CoordinatorNotRunningError",
    "CoordinatorRuntimeSettings",
    "CoordinatorStats",
    "DLQRecord",
    "DeadLetterQueue",
    "FeedbackBus",
    "FeedbackEvent",
    "FeedbackReceiver",
    "FeedbackSettings",
    "FeedbackSubscriber",
    "HttpFeedbackBroadcaster",
    "InvalidFeedbackError",
    "MarketDataStoreError",
    "PermanentSinkError",
    "PostgresBarsSink",
    "QueueClosedError",
    "QueueFullError",
    "RateController",
    "RetryPolicy",
    "RetryableSinkError",
    "SchemaPrivilegeError",
    "SchemaVersionError",
    "Sink",
    "SinkError",
    "SqliteBarsSink",
    "UnknownSettingWarning",
    "WebhookVerificationError",
    "WriteCoordinator",
    "__version__",
    "default_retry_classifier",
    "feedback_bus",
]
