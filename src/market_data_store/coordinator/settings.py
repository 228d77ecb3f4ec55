"""Settings from the environment and ``.env``: ``MDS_*`` for the coordinator, ``MDS_FB_*`` for
feedback. Each class ignores the other's variables. A bad value raises ``ConfigError`` naming
the environment variable and its allowed range.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from market_data_store.coordinator.types import ConfigError


class _MdsSettings(BaseSettings):
    """Turns pydantic's validation errors into one ``ConfigError`` naming the variables."""

    _prefix: ClassVar[str] = "MDS_"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = [str(part) for part in err["loc"] if part != "__root__"]
                name = f"{type(self)._prefix}{loc[0].upper()}" if loc else type(self).__name__
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {msg} (got {err.get('input')!r})" if loc else msg)
            raise ConfigError(f"invalid {type(self).__name__}: " + "; ".join(problems)) from None


class CoordinatorRuntimeSettings(_MdsSettings):
    """``WriteCoordinator`` parameters from ``MDS_*`` variables (see ``from_settings``)."""

    model_config = SettingsConfigDict(
        env_prefix="MDS_", env_file=".env", extra="ignore", case_sensitive=False
    )

    coord_id: str = Field(default="default", min_length=1)
    capacity: int = Field(default=10_000, gt=0)
    workers: int = Field(default=4, gt=0, le=1024)
    batch_size: int = Field(default=500, gt=0)
    flush_interval: float = Field(default=0.25, gt=0, le=3600)
    high_watermark: int | None = Field(default=None, gt=0)
    low_watermark: int | None = Field(default=None, ge=0)
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
        high = self.high_watermark if self.high_watermark is not None else None
        if high is not None and high > self.capacity:
            raise ValueError(
                f"MDS_HIGH_WATERMARK must satisfy 0 < MDS_HIGH_WATERMARK <= MDS_CAPACITY "
                f"({self.capacity}), got {high}"
            )
        effective_high = high if high is not None else max(1, int(self.capacity * 0.8))
        if self.low_watermark is not None and self.low_watermark >= effective_high:
            raise ValueError(
                f"MDS_LOW_WATERMARK must satisfy 0 <= MDS_LOW_WATERMARK < high watermark "
                f"({effective_high}), got {self.low_watermark}"
            )
        if self.retry_max_backoff_ms < self.retry_initial_backoff_ms:
            raise ValueError(
                "MDS_RETRY_MAX_BACKOFF_MS must be >= MDS_RETRY_INITIAL_BACKOFF_MS "
                f"({self.retry_initial_backoff_ms}), got {self.retry_max_backoff_ms}"
            )
        return self


class FeedbackSettings(_MdsSettings):
    """Webhook broadcast of feedback events, from ``MDS_FB_*`` variables."""

    _prefix: ClassVar[str] = "MDS_FB_"
    model_config = SettingsConfigDict(
        env_prefix="MDS_FB_", env_file=".env", extra="ignore", case_sensitive=False
    )

    enable_http_broadcast: bool = False
    feedback_webhook_url: str | None = None
    http_timeout: float = Field(default=2.0, gt=0, le=300)
    http_max_retries: int = Field(default=3, ge=0, le=100)
    webhook_secret: SecretStr | None = None

    @model_validator(mode="after")
    def _check_webhook(self) -> FeedbackSettings:
        url = self.feedback_webhook_url
        if self.enable_http_broadcast and not url:
            raise ValueError(
                "MDS_FB_FEEDBACK_WEBHOOK_URL is required when MDS_FB_ENABLE_HTTP_BROADCAST is true"
            )
        if url:
            check_webhook_url("MDS_FB_FEEDBACK_WEBHOOK_URL", url)
        if self.webhook_secret is not None:
            decode_webhook_secret("MDS_FB_WEBHOOK_SECRET", self.webhook_secret.get_secret_value())
        return self


def check_webhook_url(name: str, url: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``url`` is an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
    else:
        if parts.scheme not in ("http", "https"):
            host = None
    if not host:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, got {url!r}")


def decode_webhook_secret(name: str, secret: str) -> bytes:
    """Decode a Standard Webhooks secret (``whsec_`` + base64); raise ``ValueError`` naming it."""
    if not secret.startswith("whsec_"):
        raise ValueError(f"{name} must start with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} must be 'whsec_' followed by valid base64") from None
    if len(key) < 16:
        raise ValueError(f"{name} must decode to at least 16 bytes, got {len(key)}")
    return key
