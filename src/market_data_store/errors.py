"""The library's exception tree.

Every error the library raises on purpose derives from ``MarketDataStoreError``::

    MarketDataStoreError
    ├── ConfigError (also ValueError)       bad constructor argument or setting
    ├── QueueFullError                      overflow_strategy="error" and no room
    ├── QueueClosedError                    put on a queue that was closed
    ├── CoordinatorNotRunningError          submit() before start() or after stop()
    ├── CircuitOpenError                    the circuit breaker refuses a call
    ├── WebhookVerificationError (also ValueError)  a received webhook is not authentic
    ├── InvalidFeedbackError (also ValueError)      a received webhook is not a valid event
    ├── SchemaVersionError (also RuntimeError)      a database of a newer release: refused
    ├── SchemaPrivilegeError (also PermissionError) a schema change this role may not make
    └── SinkError                           raised by sinks
        ├── RetryableSinkError              transient: retry the same batch
        └── PermanentSinkError              the batch can never succeed: dead-letter it
"""

from __future__ import annotations


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


class WebhookVerificationError(MarketDataStoreError, ValueError):
    """A received webhook failed Standard Webhooks verification: missing or malformed
    headers, a timestamp outside the tolerance, or no matching signature (HTTP 401)."""


class InvalidFeedbackError(MarketDataStoreError, ValueError):
    """A received webhook body is not a valid ``FeedbackEvent`` (HTTP 400)."""


class SinkError(MarketDataStoreError):
    """Raised by a sink; ``retryable`` tells the worker whether to try the batch again."""

    retryable: bool = True


class RetryableSinkError(SinkError):
    """A transient failure (connection lost, database locked): the same batch may succeed."""

    retryable = True


class PermanentSinkError(SinkError):
    """The batch can never succeed (invalid rows): it goes straight to the dead-letter queue."""

    retryable = False


class SchemaVersionError(MarketDataStoreError, RuntimeError):
    """The database was written by a newer release of this library than the one opening it.

    Opening it could lose or misread data, so the sink refuses; upgrade the library.
    """


class SchemaPrivilegeError(MarketDataStoreError, PermissionError):
    """The database needs its schema created or migrated, and this role may not do it."""
