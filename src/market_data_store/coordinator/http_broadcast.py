"""Phase 6.0A import path of ``HttpFeedbackBroadcaster`` (``market_data_store.feedback``)."""

from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster

__all__ = ["HttpFeedbackBroadcaster"]
