"""``FeedbackSettings``: the ``MDS_FB_*`` variables (environment or ``.env``) of the signal path.

A bad value raises ``ConfigError`` naming the environment variable and its allowed range.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from market_data_store._settings import MdsSettings
from market_data_store.errors import ConfigError


class FeedbackSettings(MdsSettings):
    """Webhook broadcast and Redis transport of feedback events, from ``MDS_FB_*`` variables.

    Args:
        enable_http_broadcast: ``MDS_FB_ENABLE_HTTP_BROADCAST``; default false; true needs a URL.
        feedback_webhook_url: ``MDS_FB_FEEDBACK_WEBHOOK_URL``, http(s) with a host; default None.
        http_timeout: ``MDS_FB_HTTP_TIMEOUT``, seconds per POST; default 2.0; 0 < value <= 300.
        http_max_retries: ``MDS_FB_HTTP_MAX_RETRIES``; default 3; 0..100.
        webhook_secret: ``MDS_FB_WEBHOOK_SECRET``, ``whsec_`` + base64 (>= 16 bytes); default None.
        redis_url: ``MDS_FB_REDIS_URL``, redis://, rediss:// or unix://; default None (no Redis).
        redis_channel: ``MDS_FB_REDIS_CHANNEL``; default "mds:feedback"; 1-256 chars, no spaces.
    """

    model_config = SettingsConfigDict(
        env_prefix="MDS_FB_", env_file=".env", extra="ignore", case_sensitive=False
    )

    enable_http_broadcast: bool = False
    # Left out of repr: a URL may carry credentials (user:password@host).
    feedback_webhook_url: str | None = Field(default=None, repr=False)
    http_timeout: float = Field(default=2.0, gt=0, le=300)
    http_max_retries: int = Field(default=3, ge=0, le=100)
    webhook_secret: SecretStr | None = None
    # Redis transport (RedisFeedbackPublisher / RedisFeedbackListener). A SecretStr, so a
    # password in the URL never shows in a repr or a log line.
    redis_url: SecretStr | None = None
    redis_channel: str = "mds:feedback"

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

    @model_validator(mode="after")
    def _check_redis(self) -> FeedbackSettings:
        # A model-level check: its error carries no input value, so no password is echoed.
        from market_data_store.feedback._redis_wire import check_redis_channel, check_redis_url

        if self.redis_url is not None:
            check_redis_url("MDS_FB_REDIS_URL", self.redis_url.get_secret_value())
        check_redis_channel("MDS_FB_REDIS_CHANNEL", self.redis_channel)
        return self


def check_webhook_url(name: str, url: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``url`` can work as a webhook endpoint.

    It must be an http:// or https:// URL with a host, a port (if given) in 1..65535, and no
    whitespace or control character anywhere. The message shows the URL without credentials.
    """
    shown = repr(redact_url(url))
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError(f"{name} must not contain whitespace or control characters, got {shown}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number in 0..65535
        raise ValueError(
            f"{name} must be an http(s) URL with a valid host and a port in 1..65535, got {shown}"
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, got {shown}")
    if port == 0:
        raise ValueError(f"{name} must have a port in 1..65535, got {shown}")


def redact_url(url: str) -> str:
    """``url`` as it may appear in a log line or an error: user info and query replaced."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    path, question, _query = path.partition("?")
    shown = f"{scheme}{sep}{authority}{slash}{path}" + ("?***" if question else "")
    return shown.encode("ascii", "backslashreplace").decode("ascii")


def secret_key(secret: object) -> bytes | None:
    """The key of a constructor's ``secret`` argument: None stays None (unsigned), a
    ``whsec_`` + base64 string is decoded; anything else is a ``ConfigError``."""
    if secret is None:
        return None
    if not isinstance(secret, str):
        raise ConfigError("secret must be None or a 'whsec_' + base64 string")
    try:
        return decode_webhook_secret("secret", secret)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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
