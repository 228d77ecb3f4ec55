"""Prometheus metrics (default registry) of the signal path: bus, subscribers, webhook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

FEEDBACK_EVENTS = Counter(
    "mds_feedback_events",
    "Feedback events published, by coordinator and level",
    ["coordinator_id", "level"],
)
FEEDBACK_SUBSCRIBERS = Gauge("mds_feedback_subscribers", "Subscribers registered on feedback buses")
FEEDBACK_SUBSCRIBER_ERRORS = Counter(
    "mds_feedback_subscriber_errors", "Exceptions raised by feedback subscribers", ["subscriber"]
)
FEEDBACK_COALESCED = Counter(
    "mds_feedback_coalesced", "Intermediate events skipped for subscribers that fell behind"
)
WEBHOOK_SENDS = Counter(
    "mds_feedback_webhook_sends", "Webhook POST attempts by outcome", ["outcome"]
)
WEBHOOK_DROPPED = Counter(
    "mds_feedback_webhook_dropped", "Webhook events given up on or superseded", ["reason"]
)

FEEDBACK_RECEIVED = Counter(
    "mds_feedback_received",
    "Webhook deliveries handled by FeedbackReceiver, by outcome",
    ["outcome"],
)


def cached_child(metric: Any, cache: dict[tuple[str, ...], Any]) -> Callable[..., Any]:
    """Return a ``labels(*values)`` that caches children (labels() takes a lock each call)."""

    def child(*values: str) -> Any:
        found = cache.get(values)
        if found is None:
            found = cache[values] = metric.labels(*values)
        return found

    return child


_feedback_event_children: dict[tuple[str, ...], Any] = {}
_feedback_event_child = cached_child(FEEDBACK_EVENTS, _feedback_event_children)


def count_feedback_event(coordinator_id: str, level: str) -> None:
    """Increment ``mds_feedback_events_total`` through a cached child."""
    _feedback_event_child(coordinator_id, level).inc()


def forget_coordinator(coordinator_id: str) -> None:
    """Remove the ``mds_feedback_events_total`` label sets of a coordinator id no longer live
    (and their cached children, which would otherwise count into removed series)."""
    for key in [key for key in _feedback_event_children if key[0] == coordinator_id]:
        del _feedback_event_children[key]
        try:
            FEEDBACK_EVENTS.remove(*key)
        except KeyError:
            pass
