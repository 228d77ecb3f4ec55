"""market-data-store: an asyncio write path for market data with backpressure feedback.

The main names are re-exported here; ``market_data_store.coordinator`` holds the rest.
"""

from market_data_store.coordinator import (
    BackpressureLevel,
    BoundedQueue,
    CircuitBreaker,
    ConfigError,
    CoordinatorRuntimeSettings,
    DeadLetterQueue,
    FeedbackBus,
    FeedbackEvent,
    FeedbackSettings,
    FeedbackSubscriber,
    HttpFeedbackBroadcaster,
    RateController,
    RetryPolicy,
    Sink,
    WriteCoordinator,
    feedback_bus,
)
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink

__version__ = "0.6.0"

__all__ = [
    "BackpressureLevel",
    "Bar",
    "BoundedQueue",
    "CircuitBreaker",
    "ConfigError",
    "CoordinatorRuntimeSettings",
    "DeadLetterQueue",
    "FeedbackBus",
    "FeedbackEvent",
    "FeedbackSettings",
    "FeedbackSubscriber",
    "HttpFeedbackBroadcaster",
    "PostgresBarsSink",
    "RateController",
    "RetryPolicy",
    "Sink",
    "SqliteBarsSink",
    "WriteCoordinator",
    "__version__",
    "feedback_bus",
]
