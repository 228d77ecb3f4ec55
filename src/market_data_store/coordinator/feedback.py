"""Phase 6.0A import path of the feedback names; they live in ``market_data_store.feedback``."""

from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import BackpressureLevel, FeedbackEvent, FeedbackSubscriber

__all__ = [
    "BackpressureLevel",
    "FeedbackBus",
    "FeedbackEvent",
    "FeedbackSubscriber",
    "feedback_bus",
]
