"""RetryPolicy backoff and classification, and the CircuitBreaker state machine on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from market_data_store.coordinator.policy import (
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    default_retry_classifier,
)
from market_data_store.coordinator.types import (
    ConfigError,
    MarketDataStoreError,
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
)

# -- RetryPolicy ---------------------------------------------------------------------------


def test_retry_policy_defaults_match_the_contract() -> None:
    """RetryPolicy() is 5 attempts, 50 ms initial, 2000 ms cap, x2, with jitter."""
    p = RetryPolicy()
    assert (p.max_attempts, p.initial_backoff_ms, p.max_backoff_ms) == (5, 50, 2000)
    assert (p.backoff_multiplier, p.jitter, p.classify_retryable) == (
        2.0,
        True,
        default_retry_classifier,
    )


def test_backoff_grows_by_the_multiplier_up_to_the_cap() -> None:
    """Without jitter the wait after attempt n is initial * multiplier**(n-1), capped by max."""
    p = RetryPolicy(initial_backoff_ms=10, max_backoff_ms=100, backoff_multiplier=3.0, jitter=False)
    assert [p.backoff_seconds(n) for n in range(1, 6)] == pytest.approx(
        [0.010, 0.030, 0.090, 0.100, 0.100]
    )


def test_jitter_stays_between_half_and_the_full_backoff() -> None:
    """With jitter every wait lies in [backoff / 2, backoff] and the waits are spread out."""
    p = RetryPolicy(initial_backoff_ms=100, max_backoff_ms=400, jitter=True)
    for attempt, full in ((1, 0.1), (2, 0.2), (3, 0.4), (6, 0.4)):
        waits = [p.backoff_seconds(attempt) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits)
        assert max(waits) - min(waits) > full / 10  # really random, not a constant


def test_zero_initial_backoff_never_waits() -> None:
    """initial_backoff_ms=0 (the test mode) makes every wait zero, jitter or not."""
    for jitter in (True, False):
        p = RetryPolicy(initial_backoff_ms=0, jitter=jitter, max_attempts=5000)
        assert {p.backoff_seconds(n) for n in (1, 2, 10, 4000)} == {0.0}


def test_backoff_for_a_very_late_attempt_is_the_cap() -> None:
    """A long-retrying policy (thousands of attempts) waits max_backoff_ms, never overflows."""
    p = RetryPolicy(max_attempts=10_000, jitter=False)
    assert p.backoff_seconds(1_100) == pytest.approx(2.0)
    assert p.backoff_seconds(10_000) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"initial_backoff_ms": -1}, "initial_backoff_ms"),
        ({"initial_backoff_ms": 100, "max_backoff_ms": 50}, "max_backoff_ms"),
        ({"initial_backoff_ms": 5000}, "initial_backoff_ms"),  # above the default cap
        ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
    ],
)
def test_invalid_retry_policy_raises_config_error_naming_the_argument(
    kwargs: dict[str, Any], name: str
) -> None:
    """Each out-of-range RetryPolicy argument raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=name):
        RetryPolicy(**kwargs)


class _DriverGlitch(Exception):
    """An exception type the classifier has never heard of (e.g. a driver's own)."""


class _Fatal(BaseException):
    """A BaseException that is not an Exception."""


class _Flagged(Exception):
    def __init__(self, retryable: bool) -> None:
        super().__init__()
        self.retryable = retryable


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (SinkError("generic"), True),
        (RetryableSinkError("locked"), True),
        (PermanentSinkError("bad rows"), False),
        (ValueError("bad value"), False),
        (TypeError("bad type"), False),
        (KeyError("missing"), False),
        (ConnectionError("reset"), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError("disk"), True),
        (RuntimeError("other"), True),
        (_DriverGlitch("unknown to the classifier"), True),
        (_Fatal("not an Exception"), True),
        (_Flagged(False), False),
        (_Flagged(True), True),
    ],
)
def test_default_retry_classifier(exc: BaseException, retryable: bool) -> None:
    """SinkErrors and `retryable` attributes decide; data errors are permanent; anything
    else (I/O, unknown driver errors, other BaseExceptions) is retried."""
    assert default_retry_classifier(exc) is retryable


def test_sink_error_subclass_can_declare_itself_permanent() -> None:
    """A SinkError subclass with retryable = False is classified permanent."""

    class Rejected(SinkError):
        retryable = False

    assert default_retry_classifier(Rejected()) is False


# -- CircuitBreaker ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: FakeClock, threshold: int = 3, after: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(threshold, after, clock=clock)


def test_breaker_defaults_match_the_contract() -> None:
    """CircuitBreaker() opens after 5 failures and probes after 60 s; it starts closed."""
    b = CircuitBreaker()
    assert (b.failure_threshold, b.half_open_after_sec, b.state) == (5, 60.0, "closed")


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    """The breaker stays closed below failure_threshold consecutive failures and opens at it."""
    b = breaker(FakeClock())
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    with pytest.raises(CircuitOpenError):
        b.check()


def test_a_success_resets_the_consecutive_failure_count() -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    b = breaker(FakeClock())
    for outcome in ("fail", "fail", "ok", "fail", "fail"):
        assert b.allow()
        b.record_success() if outcome == "ok" else b.record_failure()
    assert (b.state, b.consecutive_failures) == ("closed", 2)


def test_open_breaker_lets_one_probe_through_once_half_open() -> None:
    """After half_open_after_sec the breaker is half-open and allows exactly one probe."""
    clock = FakeClock()
    b = breaker(clock, threshold=1, after=10.0)
    b.allow()
    b.record_failure()
    clock.now += 9.9
    assert (b.state, b.allow()) == ("open", False)
    assert b.seconds_until_probe() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.state == "half_open"
    assert b.allow() is True  # the probe
    assert b.allow() is False  # everyone else waits for its outcome
    assert b.state == "half_open"


def test_probe_success_closes_the_breaker() -> None:
    """A successful probe closes the breaker and clears the failure count."""
    clock = FakeClock()
    b = breaker(clock, threshold=2)
    for _ in range(2):
        b.allow()
        b.record_failure()
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert (b.state, b.consecutive_failures) == ("closed", 0)
    assert all(b.allow() for _ in range(5))


def test_probe_failure_reopens_for_another_full_interval() -> None:
    """A failed probe reopens the breaker; the next probe is half_open_after_sec later."""
    clock = FakeClock()
    b = breaker(clock, threshold=2, after=10.0)
    for _ in range(2):
        b.allow()
        b.record_failure()
    clock.now += 10
    assert b.allow()
    b.record_failure()
    assert (b.state, b.allow()) == ("open", False)
    assert b.seconds_until_probe() == pytest.approx(10.0)
    clock.now += 10
    assert b.allow()


def test_released_probe_lets_another_caller_probe() -> None:
    """A probe abandoned without an outcome (cancelled) lets the next caller probe."""
    clock = FakeClock()
    b = breaker(clock, threshold=1)
    b.allow()
    b.record_failure()
    clock.now += 10
    assert b.allow()
    b.release_probe()
    assert b.allow()


def test_on_change_reports_every_transition() -> None:
    """on_change(old, new) sees closed -> open -> half_open -> open -> half_open -> closed."""
    clock = FakeClock()
    b = breaker(clock, threshold=1)
    seen: list[tuple[str, str]] = []
    b.on_change = lambda old, new: seen.append((old, new))
    b.allow()
    b.record_failure()
    clock.now += 10
    b.allow()
    b.record_failure()
    clock.now += 10
    b.allow()
    b.record_success()
    assert seen == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


@pytest.mark.parametrize(
    ("args", "name"),
    [((0, 1.0), "failure_threshold"), ((1, 0.0), "half_open_after_sec")],
)
def test_invalid_breaker_raises_config_error_naming_the_argument(
    args: tuple[int, float], name: str
) -> None:
    """Each out-of-range CircuitBreaker argument raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=name):
        CircuitBreaker(*args)


def test_circuit_open_error_is_a_library_error() -> None:
    """CircuitOpenError belongs to the library's exception tree."""
    assert issubclass(CircuitOpenError, MarketDataStoreError)
