"""Public API of the write path: queue, workers, policies, DLQ and settings.

The signal path's names (``feedback_bus``, ``FeedbackEvent``, ...) live in
``market_data_store.feedback`` and are re-exported here, so the Phase 6.0A import
``from market_data_store.coordinator import feedback_bus, FeedbackEvent`` keeps working.
"""

from market_data_store.coordinator.dlq import DeadLetterQueue, DLQRecord
from market_data_store.coordinator.policy import (
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    default_retry_classifier,
)
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.settings import CoordinatorRuntimeSettings, FeedbackSettings
from market_data_store.coordinator.types import (
    BackpressureCallback,
    ConfigError,
    CoordinatorNotRunningError,
    MarketDataStoreError,
    PermanentSinkError,
    QueueClosedError,
    QueueFullError,
    RetryableSinkError,
    Sink,
    SinkError,
)
from market_data_store.coordinator.worker import SinkWorker
from market_data_store.coordinator.write_coordinator import (
    CoordinatorHealth,
    CoordinatorStats,
    WriteCoordinator,
)
from market_data_store.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    FeedbackSubscriber,
    HttpFeedbackBroadcaster,
    RateController,
    feedback_bus,
)

__all__ = [
    "BackpressureCallback",
    "BackpressureLevel",
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
    "FeedbackSettings",
    "FeedbackSubscriber",
    "HttpFeedbackBroadcaster",
    "MarketDataStoreError",
    "PermanentSinkError",
    "QueueClosedError",
    "QueueFullError",
    "RateController",
    "RetryPolicy",
    "RetryableSinkError",
    "Sink",
    "SinkError",
    "SinkWorker",
    "WriteCoordinator",
    "default_retry_classifier",
    "feedback_bus",
]
