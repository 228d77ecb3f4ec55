"""The signal path: pressure events, the bus, and the transports that carry them to producers.

- ``events``: ``BackpressureLevel``, ``FeedbackEvent``, ``FeedbackSubscriber``
- ``bus``: ``FeedbackBus`` and the process-wide ``feedback_bus()``
- ``http_broadcast``: ``HttpFeedbackBroadcaster`` (POSTs events to a webhook; extra ``feedback``)
- ``receiver``: ``FeedbackReceiver`` (verifies webhook deliveries into a local bus; ASGI app)
- ``redis_transport``: ``RedisFeedbackPublisher`` / ``RedisFeedbackListener`` (events across
  hosts on Redis; extra ``redis``)
- ``autowire``: the process-wide transports ``MDS_FB_*`` settings enable for coordinators
- ``rate_controller``: ``RateController`` (turns events into an allowed rate for a producer)
- ``settings``: ``FeedbackSettings`` (``MDS_FB_*``)
"""

from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import BackpressureLevel, FeedbackEvent, FeedbackSubscriber
from market_data_store.feedback.http_broadcast import HttpFeedbackBroadcaster
from market_data_store.feedback.rate_controller import RateController
from market_data_store.feedback.receiver import FeedbackReceiver
from market_data_store.feedback.redis_transport import (
    RedisFeedbackListener,
    RedisFeedbackPublisher,
)
from market_data_store.feedback.settings import FeedbackSettings

__all__ = [
    "BackpressureLevel",
    "FeedbackBus",
    "FeedbackEvent",
    "FeedbackReceiver",
    "FeedbackSettings",
    "FeedbackSubscriber",
    "HttpFeedbackBroadcaster",
    "RateController",
    "RedisFeedbackListener",
    "RedisFeedbackPublisher",
    "feedback_bus",
]
