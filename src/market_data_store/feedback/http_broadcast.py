"""POST feedback events to a webhook without ever making the bus or a producer wait.

``HttpFeedbackBroadcaster`` is a ``FeedbackSubscriber`` whose ``__call__`` only files the event
in a bounded outbox that keeps the latest event per coordinator. One sender task POSTs the
outbox with httpx, retrying 5xx answers, timeouts and connection errors with exponential
backoff and jitter. With a secret, requests are signed as the Standard Webhooks specification
describes. httpx is optional: without it the broadcaster logs one warning and does nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from typing import TYPE_CHECKING, Literal

from loguru import logger

from market_data_store._context import AsyncStartStop
from market_data_store._validation import check_int, check_range
from market_data_store.errors import ConfigError
from market_data_store.feedback import _sender, metrics
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import FeedbackEvent, encode_event
from market_data_store.feedback.settings import (
    FeedbackSettings,
    check_webhook_url,
    redact_url,
    secret_key,
)

if TYPE_CHECKING:
    import httpx

BroadcasterState = Literal["new", "running", "stopped"]

DEFAULT_MAX_PENDING = 1024
"""How many coordinators may have an event waiting in the outbox at once."""
BACKOFF_CAP = 30.0
"""Longest wait (seconds) between two attempts at one event."""
MAX_RESPONSE_BYTES = 4096
"""At most this much of a response body is read; the rest is never downloaded."""

_RETRYABLE = frozenset({"server_error", "timeout", "connection_error"})

_sends = metrics.cached_child(metrics.WEBHOOK_SENDS, {})
_dropped = metrics.cached_child(metrics.WEBHOOK_DROPPED, {})
_missing_httpx_warned = False


def httpx_available() -> bool:
    """Whether httpx can be imported (checked when a broadcaster is built, not at import)."""
    try:
        import httpx  # noqa: F401
    except ImportError:
        return False
    return True


def _warn_missing_httpx() -> None:
    global _missing_httpx_warned
    if not _missing_httpx_warned:
        _missing_httpx_warned = True
        logger.warning(
            "httpx is not installed: HttpFeedbackBroadcaster sends nothing "
            "(install market-data-store-asyncio[feedback] to enable the webhook)"
        )


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value for one request."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def backoff_delay(retry: int, base: float, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): ``base * 2**(retry-1)``,
    capped, with jitter taking off up to half."""
    return _sender.backoff_delay(retry, base, cap)


def _classify_status(status: int) -> str:
    if 200 <= status < 300:
        return "success"
    if status >= 500:
        return "server_error"
    if 400 <= status < 500:
        return "client_error"
    return "unexpected_status"


class HttpFeedbackBroadcaster(AsyncStartStop):
    """Forwards feedback events to an HTTP endpoint, fire-and-forget, latest per coordinator.

    Args:
        url: the http(s) endpoint, with a host; user info and query never appear in logs.
        timeout: seconds one POST attempt may take, > 0 (default 2.0).
        max_retries: retries after the first attempt at one event, an int >= 0 (default 3).
        secret: a Standard Webhooks secret (``whsec_`` + base64 of >= 16 bytes) to sign
            requests, or None to send unsigned (default).
        bus: the bus to subscribe to (``feedback_bus()`` when None).
        backoff_base: seconds before the first retry, doubling after (capped at
            ``BACKOFF_CAP``, with jitter), >= 0; 0 disables waiting (default 0.5).
        max_pending: how many coordinators may have an event waiting, an int >= 1; beyond
            it the oldest waiting event is dropped (default ``DEFAULT_MAX_PENDING``, 1024).

    ``start()`` subscribes to the bus and ``stop(timeout)`` unsubscribes, sends what is
    pending for at most ``timeout`` seconds and closes the client. A stopped broadcaster
    cannot be started again. Coordinators start one from ``MDS_FB_*`` settings by themselves
    (``market_data_store.feedback.autowire``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        max_retries: int = 3,
        secret: str | None = None,
        bus: FeedbackBus | None = None,
        backoff_base: float = 0.5,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        _check_url(url)
        check_range("timeout", timeout, lo=0, lo_open=True)
        check_int("max_retries", max_retries, lo=0)
        check_range("backoff_base", backoff_base, lo=0)
        check_int("max_pending", max_pending, lo=1)
        self._key = secret_key(secret)
        self._url = url
        self._shown_url = redact_url(url)  # for log lines: no credentials, no query
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._backoff_base = float(backoff_base)
        self._max_pending = max_pending
        self._bus = bus if bus is not None else feedback_bus()
        self._enabled = httpx_available()
        if not self._enabled:
            _warn_missing_httpx()
        self._state: BroadcasterState = "new"
        self._outbox: dict[str, FeedbackEvent] = {}
        self._wakeup: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(
        cls, settings: FeedbackSettings | None = None, *, bus: FeedbackBus | None = None
    ) -> HttpFeedbackBroadcaster | None:
        """Build from ``FeedbackSettings`` (env and ``.env`` when None); None when disabled."""
        if settings is None:
            settings = FeedbackSettings()
        if not settings.enable_http_broadcast or not settings.feedback_webhook_url:
            return None
        secret = settings.webhook_secret
        return cls(
            settings.feedback_webhook_url,
            timeout=settings.http_timeout,
            max_retries=settings.http_max_retries,
            secret=secret.get_secret_value() if secret is not None else None,
            bus=bus,
        )

    @property
    def state(self) -> BroadcasterState:
        """``"new"``, ``"running"`` or ``"stopped"``."""
        return self._state

    @property
    def enabled(self) -> bool:
        """False when httpx is missing: the broadcaster then does nothing."""
        return self._enabled

    @property
    def outbox_size(self) -> int:
        """How many events wait to be sent (at most one per coordinator)."""
        return len(self._outbox)

    @property
    def url(self) -> str:
        """The endpoint events are POSTed to."""
        return self._url

    @property
    def transport_key(self) -> tuple[str, str]:
        """``("webhook", url)``: auto-wiring starts no second broadcaster for the same URL."""
        return ("webhook", self._url)

    @property
    def timeout(self) -> float:
        """Seconds one POST attempt may take."""
        return self._timeout

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt at one event."""
        return self._max_retries

    @property
    def signed(self) -> bool:
        """Whether requests carry Standard Webhooks signature headers."""
        return self._key is not None

    async def start(self) -> None:
        """Subscribe to the bus and start sending; no-op when already running."""
        if self._state == "running":
            return
        if self._state == "stopped":
            raise RuntimeError("HttpFeedbackBroadcaster cannot be restarted once stopped")
        self._state = "running"
        if not self._enabled:
            return
        import httpx

        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self._timeout))
        self._wakeup = asyncio.Event()
        self._sender = asyncio.create_task(self._run(), name="feedback-webhook-sender")
        self._bus.subscribe(self)

    async def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, send what is pending for at most ``timeout`` seconds, close. Idempotent."""
        check_range("timeout", timeout, lo=0)
        if self._state == "stopped":
            return
        was_running = self._state == "running"
        self._state = "stopped"
        if not was_running or self._sender is None or self._wakeup is None:
            return
        self._bus.unsubscribe(self)
        self._wakeup.set()
        await _sender.finish_task(self._sender, timeout)
        if self._outbox:
            _dropped("stopped").inc(len(self._outbox))
            logger.debug("feedback webhook: {} events unsent at stop", len(self._outbox))
            self._outbox.clear()
        await self._close_client()

    async def __call__(self, event: FeedbackEvent) -> None:
        """File ``event`` for sending, replacing a waiting one of the same coordinator."""
        if self._state != "running" or self._wakeup is None:
            return
        outbox = self._outbox
        coordinator_id = event.coordinator_id
        if coordinator_id in outbox:
            _dropped("superseded").inc()
        elif len(outbox) >= self._max_pending:
            del outbox[next(iter(outbox))]
            _dropped("outbox_full").inc()
        outbox[coordinator_id] = event  # a replaced event keeps its place in line
        self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._outbox:
                if self._state == "stopped":
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            event = self._outbox.pop(next(iter(self._outbox)))
            try:
                await self._deliver(event)
            except asyncio.CancelledError:
                _dropped("stopped").inc()
                raise
            except Exception as exc:  # the sender must outlive any bug in one delivery
                # No traceback: its frames would show the URL, credentials and all.
                logger.warning(
                    "feedback webhook: delivery of {} failed: {}", event, type(exc).__name__
                )

    async def _deliver(self, event: FeedbackEvent) -> None:
        body = encode_event(event).encode()
        msg_id = f"msg_{uuid.uuid4().hex}"  # one id for every attempt at this event
        for attempt in range(self._max_retries + 1):
            if attempt and not await self._wait_to_retry(event, attempt):
                return
            outcome = await self._post(body, msg_id)
            _sends(outcome).inc()
            if outcome == "success":
                return
            if outcome not in _RETRYABLE:
                _dropped("rejected").inc()
                logger.debug("feedback webhook: {} refused ({})", event, outcome)
                return
        _dropped("gave_up").inc()
        logger.debug("feedback webhook: gave up on {} after {} retries", event, self._max_retries)

    async def _wait_to_retry(self, event: FeedbackEvent, retry: int) -> bool:
        """Back off before a retry; False when a newer event of the coordinator made it moot."""
        if not self._superseded(event):
            await asyncio.sleep(backoff_delay(retry, self._backoff_base))
            if not self._superseded(event):
                return True
        _dropped("superseded").inc()
        return False

    def _superseded(self, event: FeedbackEvent) -> bool:
        return event.coordinator_id in self._outbox

    async def _post(self, body: bytes, msg_id: str) -> str:
        import httpx

        assert self._client is not None
        headers = {"content-type": "application/json"}
        if self._key is not None:
            timestamp = int(time.time())
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign_webhook(self._key, msg_id, timestamp, body)
        try:
            # httpx's timeout bounds each phase; this bounds the whole attempt.
            async with (
                asyncio.timeout(self._timeout),
                self._client.stream("POST", self._url, content=body, headers=headers) as response,
            ):
                await _read_at_most(response, MAX_RESPONSE_BYTES)
                status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return "timeout"
        except httpx.TransportError as exc:
            logger.debug("feedback webhook: {} to {}", type(exc).__name__, self._shown_url)
            return "connection_error"
        except Exception as exc:  # no traceback: it would show the URL with its credentials
            logger.debug(
                "feedback webhook: POST to {} failed: {}", self._shown_url, type(exc).__name__
            )
            return "error"
        return _classify_status(status)

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _sender.close_quietly(client.aclose, "webhook client")


async def _read_at_most(response: httpx.Response, limit: int) -> None:
    """Read up to ``limit`` bytes of the body (a small one completes, keeping the connection
    reusable); a larger or endless one is cut off when the response closes."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received >= limit:
            return


def _check_url(url: object) -> None:
    if not isinstance(url, str):
        raise ConfigError(f"url must be an http:// or https:// URL string, got {url!r}")
    try:
        check_webhook_url("url", url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
