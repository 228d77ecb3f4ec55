"""Retry policy (exponential backoff with jitter) and the circuit breaker around sink calls."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from market_data_store._validation import check_int
from market_data_store.coordinator.types import (
    CircuitOpenError,
    ConfigError,
    SinkError,
    check_range,
)

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "RetryPolicy",
    "default_retry_classifier",
]

CircuitState = Literal["closed", "open", "half_open"]

_PERMANENT = (ValueError, TypeError, LookupError, AttributeError, NotImplementedError)


def default_retry_classifier(exc: BaseException) -> bool:
    """True if retrying the same batch may succeed.

    A ``SinkError`` (or any exception with a boolean ``retryable`` attribute) says so itself;
    data and programming errors (ValueError, TypeError, LookupError, ...) are permanent;
    everything else (connection, timeout, OS errors) is retried.
    """
    if isinstance(exc, SinkError):
        return exc.retryable
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):
        return retryable
    return not isinstance(exc, _PERMANENT)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed batch is retried.

    ``initial_backoff_ms=0`` makes every wait zero (the test mode). Every number must be
    finite (NaN or infinity is a ``ConfigError`` naming the argument). ``max_attempts``
    counts sink calls while the circuit is closed: with the circuit open or half-open a
    batch is never given up for exhausted retries, it waits for the breaker's probes.

    Args:
        max_attempts: sink calls per batch before it is given up, an int >= 1 (default 5).
        initial_backoff_ms: wait after the first failure, ms, >= 0 (default 50).
        max_backoff_ms: cap on any wait, ms, >= ``initial_backoff_ms`` (default 2000).
        backoff_multiplier: growth of the wait per failed attempt, >= 1.0 (default 2.0).
        jitter: wait a random time between half and all of the backoff (default True).
        classify_retryable: ``exc -> bool``, True if retrying may succeed (default
            ``default_retry_classifier``); not part of equality.
    """

    max_attempts: int = 5
    initial_backoff_ms: float = 50
    max_backoff_ms: float = 2000
    backoff_multiplier: float = 2.0
    jitter: bool = True
    classify_retryable: Callable[[BaseException], bool] = field(
        default=default_retry_classifier, compare=False
    )

    def __post_init__(self) -> None:
        check_int("max_attempts", self.max_attempts, lo=1)
        check_range("initial_backoff_ms", self.initial_backoff_ms, lo=0)
        check_range("max_backoff_ms", self.max_backoff_ms, lo=0)
        if self.max_backoff_ms < self.initial_backoff_ms:  # name both: either may be the bad one
            raise ConfigError(
                f"max_backoff_ms must satisfy initial_backoff_ms ({self.initial_backoff_ms}) "
                f"<= max_backoff_ms, got {self.max_backoff_ms!r}"
            )
        check_range("backoff_multiplier", self.backoff_multiplier, lo=1.0)

    def backoff_seconds(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            grown_ms = self.initial_backoff_ms * self.backoff_multiplier ** (attempt - 1)
        except OverflowError:  # after ~1000 attempts; 0 ms stays 0 (the zero-wait mode)
            grown_ms = math.inf if self.initial_backoff_ms else 0.0
        base_ms = min(self.max_backoff_ms, grown_ms)
        if self.jitter:  # "equal jitter": never less than half the backoff, spread over the rest
            base_ms = base_ms / 2 + random.uniform(0, base_ms / 2)
        return base_ms / 1000.0


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failed calls; probes once when half-open.

    The breaker is synchronous state; ``on_change(old, new)`` is told of every transition.

    Args:
        failure_threshold: consecutive failed calls that open the circuit, >= 1 (default 5).
        half_open_after_sec: seconds the circuit stays open before a probe, > 0 (default 60.0).
        clock: monotonic seconds for those timings (default ``time.monotonic``).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        half_open_after_sec: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_range("failure_threshold", failure_threshold, lo=1)
        check_range("half_open_after_sec", half_open_after_sec, lo=0, lo_open=True)
        self.failure_threshold = failure_threshold
        self.half_open_after_sec = half_open_after_sec
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.on_change: Callable[[CircuitState, CircuitState], None] | None = None

    @property
    def state(self) -> CircuitState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (open and due for a probe)."""
        if self._state == "open" and self.seconds_until_probe() == 0.0:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failed calls since the last success."""
        return self._failures

    def seconds_until_probe(self) -> float:
        """How long until a probe may be let through (0.0 when one may go now)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.half_open_after_sec - self._clock())

    def allow(self) -> bool:
        """True if a call may go now; when half-open, only the first caller gets the probe."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if self.seconds_until_probe() > 0.0:
                return False
            self._set("half_open")
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def check(self) -> None:
        """``allow()`` or raise ``CircuitOpenError``."""
        if not self.allow():
            raise CircuitOpenError(
                f"circuit open after {self._failures} consecutive failures; "
                f"next probe in {self.seconds_until_probe():.2f} s"
            )

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        self._failures = 0
        self._probe_in_flight = False
        if self._state != "closed":
            self._set("closed")

    def record_failure(self) -> None:
        """A call failed: count it; open (or reopen after a failed probe) at the threshold."""
        self._failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or (self._state == "closed" and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self._set("open", force=True)

    def release_probe(self) -> None:
        """The probe call was abandoned (cancelled) without an outcome: let another try."""
        self._probe_in_flight = False

    def _set(self, new: CircuitState, *, force: bool = False) -> None:
        old = self._state
        if old == new and not force:
            return
        self._state = new
        if self.on_change is not None:
            self.on_change(old, new)
