"""Settings from the environment and ``.env``: ``MDS_*`` for the coordinator, ``MDS_FB_*`` for
feedback (defined in ``market_data_store.feedback.settings``, re-exported here). Each class
ignores the other's variables. A bad value raises ``ConfigError`` naming the environment
variable and its allowed range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from market_data_store._settings import MdsSettings
from market_data_store.coordinator.queue import default_high_watermark, default_low_watermark
from market_data_store.feedback.settings import (
    FeedbackSettings,
    check_webhook_url,
    decode_webhook_secret,
)

DEFAULT_BATCH_SIZE = 500
"""The coordinator's batch size when none is given (bounded by the capacity)."""


def default_batch_size(capacity: int) -> int:
    """The batch size used when none is given: ``DEFAULT_BATCH_SIZE``, or the capacity when
    that is smaller."""
    return min(DEFAULT_BATCH_SIZE, capacity)


__all__ = [
    "CoordinatorRuntimeSettings",
    "FeedbackSettings",
    "check_webhook_url",
    "decode_webhook_secret",
]


class CoordinatorRuntimeSettings(MdsSettings):
    """``WriteCoordinator`` parameters from ``MDS_*`` variables (see ``from_settings``).

    Numbers must be finite. ``retry_*`` fields become the ``RetryPolicy``, ``breaker_*`` the
    ``CircuitBreaker`` (same units and ranges as there).

    Args:
        coord_id: ``MDS_COORD_ID``, the id on feedback events and metrics; default "default".
        capacity: ``MDS_CAPACITY``, the queue's size limit in items; default 10000; > 0.
        workers: ``MDS_WORKERS``, concurrent sink writers; default 4; 1..1024.
        batch_size: ``MDS_BATCH_SIZE``; default None (500, or capacity if smaller); 1..capacity.
        flush_interval: ``MDS_FLUSH_INTERVAL``, seconds; default 0.25; 0 < value <= 3600.
        max_batch_size: ``MDS_MAX_BATCH_SIZE``; default None (2000, clamped); batch_size..capacity.
        high_watermark: ``MDS_HIGH_WATERMARK``; default None (80 % of capacity); 1..capacity.
        low_watermark: ``MDS_LOW_WATERMARK``; default None (capacity // 2, < high); 0..high - 1.
        recover_watermark: ``MDS_RECOVER_WATERMARK``; default None (see BoundedQueue); 0..low.
        overflow_strategy: ``MDS_OVERFLOW_STRATEGY``, block, drop_oldest or error; default block.
        retry_max_attempts: ``MDS_RETRY_MAX_ATTEMPTS``; default 5; >= 1.
        retry_initial_backoff_ms: ``MDS_RETRY_INITIAL_BACKOFF_MS``; default 50; >= 0.
        retry_max_backoff_ms: ``MDS_RETRY_MAX_BACKOFF_MS``; default 2000; >= initial backoff.
        retry_backoff_multiplier: ``MDS_RETRY_BACKOFF_MULTIPLIER``; default 2.0; >= 1.0.
        retry_jitter: ``MDS_RETRY_JITTER``; default true.
        breaker_failure_threshold: ``MDS_BREAKER_FAILURE_THRESHOLD``; default 5; >= 1.
        breaker_half_open_after_sec: ``MDS_BREAKER_HALF_OPEN_AFTER_SEC``; default 60.0; > 0.
        dlq_path: ``MDS_DLQ_PATH``, the dead-letter NDJSON file; default None (no DLQ).
    """

    model_config = SettingsConfigDict(
        env_prefix="MDS_",
        env_file=".env",
        extra="ignore",
        case_sensitive=False,
        allow_inf_nan=False,  # NaN or infinity in any number is a ConfigError naming it
    )

    coord_id: str = Field(default="default", min_length=1)
    capacity: int = Field(default=10_000, gt=0)
    workers: int = Field(default=4, gt=0, le=1024)
    batch_size: int | None = Field(default=None, gt=0)  # None: 500, or capacity if smaller
    flush_interval: float = Field(default=0.25, gt=0, le=3600)
    max_batch_size: int | None = Field(default=None, gt=0)
    high_watermark: int | None = Field(default=None, gt=0)
    low_watermark: int | None = Field(default=None, ge=0)
    recover_watermark: int | None = Field(default=None, ge=0)
    overflow_strategy: Literal["block", "drop_oldest", "error"] = "block"
    retry_max_attempts: int = Field(default=5, ge=1)
    retry_initial_backoff_ms: float = Field(default=50, ge=0)
    retry_max_backoff_ms: float = Field(default=2000, ge=0)
    retry_backoff_multiplier: float = Field(default=2.0, ge=1.0)
    retry_jitter: bool = True
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_half_open_after_sec: float = Field(default=60.0, gt=0)
    dlq_path: Path | None = None

    @model_validator(mode="after")
    def _check_watermarks(self) -> CoordinatorRuntimeSettings:
        high = self.high_watermark
        if high is not None and high > self.capacity:
            raise ValueError(
                f"MDS_HIGH_WATERMARK must satisfy 0 < MDS_HIGH_WATERMARK <= MDS_CAPACITY "
                f"({self.capacity}), got {high}"
            )
        effective_high = high if high is not None else default_high_watermark(self.capacity)
        if self.low_watermark is not None and self.low_watermark >= effective_high:
            raise ValueError(
                f"MDS_LOW_WATERMARK must satisfy 0 <= MDS_LOW_WATERMARK < high watermark "
                f"({effective_high}), got {self.low_watermark}"
            )
        if self.batch_size is not None and self.batch_size > self.capacity:
            raise ValueError(
                f"MDS_BATCH_SIZE must satisfy 0 < MDS_BATCH_SIZE <= MDS_CAPACITY "
                f"({self.capacity}), got {self.batch_size}"
            )
        self._check_recover_watermark(effective_high)
        self._check_max_batch_size()
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms:
            raise ValueError(
                "MDS_RETRY_MAX_BACKOFF_MS must be >= MDS_RETRY_INITIAL_BACKOFF_MS "
                f"({self.retry_initial_backoff_ms}), got {self.retry_max_backoff_ms}"
            )
        return self

    def _check_recover_watermark(self, high: int) -> None:
        if self.recover_watermark is None:
            return
        low = self.low_watermark
        if low is None:
            low = default_low_watermark(self.capacity, high)
        if self.recover_watermark > low:
            raise ValueError(
                f"MDS_RECOVER_WATERMARK must satisfy 0 <= MDS_RECOVER_WATERMARK <= low "
                f"watermark ({low}), got {self.recover_watermark}"
            )

    def _check_max_batch_size(self) -> None:
        size = self.max_batch_size
        batch_size = self.batch_size or default_batch_size(self.capacity)
        if size is not None and not batch_size <= size <= self.capacity:
            raise ValueError(
                f"MDS_MAX_BATCH_SIZE must satisfy MDS_BATCH_SIZE ({batch_size}) <= "
                f"MDS_MAX_BATCH_SIZE <= MDS_CAPACITY ({self.capacity}), got {size}"
            )
