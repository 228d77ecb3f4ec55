"""Public API of the coordinator: queue, workers, policies, DLQ, feedback and settings."""

from market_data_store.coordinator.dlq import DeadLetterQueue, DLQRecord
from market_data_store.coordinator.feedback import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    FeedbackSubscriber,
    feedback_bus,
)
from market_data_store.coordinator.http_broadcast import HttpFeedbackBroadcaster
from market_data_store.coordinator.policy import (
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    default_retry_classifier,
)
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.coordinator.rate_controller import RateController
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
