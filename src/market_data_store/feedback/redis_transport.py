"""Feedback across hosts on Redis: a publisher on the store side, a listener on the pipeline side.

``RedisFeedbackPublisher`` is a bus subscriber. Its ``__call__`` only appends the event to a
bounded outbox; one sender task writes the outbox to Redis in batches, each batch one Lua
script call that, per event, updates the hash ``f"{channel}:latest"`` (latest event per
coordinator) and PUBLISHes the webhook's JSON payload on ``channel``, atomically, and only
for an event newer than the hash entry (the rule in ``_redis_wire``). The outbox keeps every
event while it has room, so listeners see every level change; when Redis is slow or down and
the outbox fills, it coalesces to the latest event per coordinator. After an outage the
publisher writes again the latest event it sent per running coordinator, so a Redis that
restarted empty gets its hash back.

``RedisFeedbackListener`` subscribes to ``channel``, then loads the hash (in that order, so no
event falls between the two), and republishes into its local bus every event newer than the
last one it passed on for that coordinator. After a reconnect it does the same again, so the
current level is never missed; ``RateController`` and every other local subscriber work
unchanged in a remote process.

Both reconnect with exponential backoff and jitter, log one WARNING per outage (and an INFO
when it ends), and report ``mds_feedback_redis_connected{role}``. Coordinator ids must be
unique across every store publishing on one channel.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from loguru import logger

from market_data_store._context import AsyncStartStop
from market_data_store._logging import log_exception
from market_data_store.feedback._mailbox import coalesce
from market_data_store.feedback._redis_wire import (
    DEFAULT_CHANNEL,
    PUBLISH_SCRIPT,
    REDIS_DROPPED,
    REDIS_PUBLISHED,
    REDIS_RECEIVED,
    Outage,
    check_count,
    check_redis_channel,
    check_redis_url,
    check_seconds,
    decode_event,
    is_newer,
    latest_key,
    require_redis_package,
)
from market_data_store.feedback._sender import backoff_delay, close_quietly, finish_task
from market_data_store.feedback.bus import FeedbackBus, feedback_bus
from market_data_store.feedback.events import FeedbackEvent, encode_event
from market_data_store.feedback.settings import FeedbackSettings, redact_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

TransportState = Literal["new", "running", "stopped"]

DEFAULT_MAX_PENDING = 10_000
"""Events the publisher's outbox holds before it coalesces to the latest per coordinator."""
MAX_BATCH = 500
"""Events written by one script call."""
IDLE_PING_SEC = 1.0
"""An idle publisher pings Redis this often, to notice a restart that emptied the hash."""
MAX_COORDINATORS = 100_000
"""Coordinators a listener remembers the last event of (the oldest are forgotten beyond)."""
PUBSUB_POLL_SEC = 1.0
"""How long the listener waits for a message before checking the connection's health."""

_published = REDIS_PUBLISHED
_pub_dropped = {
    reason: REDIS_DROPPED.labels("publisher", reason)
    for reason in ("coalesced", "outbox_full", "not_newer", "error", "stopped")
}
_received = REDIS_RECEIVED
_lis_dropped = {reason: REDIS_DROPPED.labels("listener", reason) for reason in ("stale", "invalid")}


def _client(url: str, socket_timeout: float) -> Redis:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # No retries inside redis-py: a failed command comes back to us at once, and our own
    # backoff (with the one-WARNING-per-outage rule) decides when to try again.
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=5,
    )


async def _close_client(client: Redis | None, role: str) -> None:
    if client is None:
        return
    await close_quietly(client.aclose, f"Redis {role} client")


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


class _RedisTransport(AsyncStartStop):
    """What the publisher and the listener share: their checked settings, bus, lifecycle
    state, Redis client and outage report."""

    _role: ClassVar[str]
    """``"publisher"`` or ``"listener"``: the metric label and the log lines' subject."""

    def __init__(
        self,
        url: str,
        *,
        channel: str = DEFAULT_CHANNEL,
        bus: FeedbackBus | None = None,
        socket_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
    ) -> None:
        check_redis_url("url", url)
        check_redis_channel("channel", channel)
        self._socket_timeout = check_seconds("socket_timeout", socket_timeout)
        self._backoff_base = check_seconds("backoff_base", backoff_base, positive=False)
        self._backoff_cap = check_seconds("backoff_cap", backoff_cap, positive=False)
        require_redis_package(type(self).__name__)
        self._url = url
        self._channel = channel
        self._bus = bus if bus is not None else feedback_bus()
        self._state: TransportState = "new"
        self._client: Redis | None = None
        self._outage = Outage(self._role, url)

    @classmethod
    def from_settings(
        cls, settings: FeedbackSettings | None = None, *, bus: FeedbackBus | None = None
    ) -> Self | None:
        """Build from ``FeedbackSettings`` (env and ``.env`` when None); None without a URL."""
        if settings is None:
            settings = FeedbackSettings()
        if settings.redis_url is None:
            return None
        return cls(settings.redis_url.get_secret_value(), channel=settings.redis_channel, bus=bus)

    @property
    def state(self) -> TransportState:
        """``"new"``, ``"running"`` or ``"stopped"``."""
        return self._state

    @property
    def channel(self) -> str:
        """The pub/sub channel the events travel on."""
        return self._channel

    @property
    def url(self) -> str:
        """The Redis URL with its user info replaced by ``***``."""
        return redact_url(self._url)

    @property
    def outages(self) -> int:
        """Outages seen so far (each logged one WARNING)."""
        return self._outage.outages

    def _open_client(self) -> bool:
        """Create the client for ``start()``; False when already running (nothing to do)."""
        if self._state == "running":
            return False
        if self._state == "stopped":
            raise RuntimeError(f"{type(self).__name__} cannot be restarted once stopped")
        self._client = _client(self._url, self._socket_timeout)
        return True

    def _mark_stopped(self) -> bool:
        """Enter ``"stopped"`` for ``stop()``; whether it was running (has things to close)."""
        was_running = self._state == "running"
        self._state = "stopped"
        return was_running

    async def _close(self) -> None:
        self._outage.close()
        await _close_client(self._client, self._role)
        self._client = None

    async def _back_off(self, exc: BaseException) -> None:
        """Report the failure, then wait before the next attempt."""
        self._outage.down(exc)
        await asyncio.sleep(
            backoff_delay(self._outage.failures, self._backoff_base, self._backoff_cap)
        )


class RedisFeedbackPublisher(_RedisTransport):
    """Publishes every feedback event of the bus to Redis, never making anyone wait.

    Args:
        url: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` or ``unix://``; the
            password never reaches a log line.
        channel: the pub/sub channel, 1-256 printable characters without spaces (default
            ``"mds:feedback"``); the latest event per coordinator is kept in the hash
            ``f"{channel}:latest"``.
        bus: the bus to subscribe to, ``feedback_bus()`` when None.
        max_pending: events the outbox holds, an int >= 1 (default 10000); beyond it the
            outbox keeps only the latest event per coordinator, and beyond that drops the
            oldest coordinators' events.
        socket_timeout: seconds one Redis command or connect may take, > 0 (default 2.0).
        backoff_base: seconds before the first retry after a failure, doubling per failure,
            jittered, >= 0 (default 0.05); 0 retries at once (tests).
        backoff_cap: the longest wait between retries, seconds, >= 0 (default 1.0).
    """

    _role = "publisher"

    def __init__(
        self,
        url: str,
        *,
        channel: str = DEFAULT_CHANNEL,
        bus: FeedbackBus | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        socket_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
    ) -> None:
        self._max_pending = check_count("max_pending", max_pending)
        super().__init__(
            url,
            channel=channel,
            bus=bus,
            socket_timeout=socket_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._outbox: deque[FeedbackEvent] = deque()
        self._sent: dict[str, FeedbackEvent] = {}  # latest written, per running coordinator
        self._resend = False
        self._wakeup: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._script: AsyncScript | None = None

    @property
    def transport_key(self) -> tuple[str, str]:
        """``("redis", url|channel)``: auto-wiring starts no second publisher for the pair."""
        return ("redis", f"{self._url}|{self._channel}")

    @property
    def connected(self) -> bool:
        """Whether the last Redis command succeeded."""
        return self._outage.connected

    @property
    def outbox_size(self) -> int:
        """Events waiting to be written to Redis (at most ``max_pending``)."""
        return len(self._outbox)

    @property
    def failures(self) -> int:
        """Failed attempts since the last success."""
        return self._outage.failures

    async def start(self) -> None:
        """Subscribe to the bus and start the sender; no-op when running.

        Does not wait for Redis: an unreachable server is retried in the background.
        """
        if not self._open_client():
            return
        assert self._client is not None
        self._script = self._client.register_script(PUBLISH_SCRIPT)
        self._wakeup = asyncio.Event()
        self._state = "running"
        self._sender = asyncio.create_task(self._run(), name="feedback-redis-publisher")
        self._bus.subscribe(self)

    async def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, write what is pending for at most ``timeout`` seconds, close.

        Idempotent; what is still unwritten at the deadline is dropped (counted).
        """
        check_seconds("timeout", timeout, positive=False)
        if not self._mark_stopped():
            return
        self._bus.unsubscribe(self)
        assert self._wakeup is not None and self._sender is not None
        self._wakeup.set()
        await finish_task(self._sender, timeout)
        if self._outbox:
            _pub_dropped["stopped"].inc(len(self._outbox))
            logger.debug("feedback Redis publisher: {} events unwritten at stop", len(self._outbox))
            self._outbox.clear()
        await self._close()

    async def __call__(self, event: FeedbackEvent) -> None:
        """File ``event`` for writing to Redis (a deque append; never waits)."""
        if self._state != "running" or self._wakeup is None:
            return
        self._outbox.append(event)
        if len(self._outbox) > self._max_pending:
            self._shrink_outbox()
        self._wakeup.set()

    def _shrink_outbox(self) -> None:
        """Keep the latest event per coordinator; then, if still full, the newest half."""
        outbox = self._outbox
        _pub_dropped["coalesced"].inc(len(coalesce(outbox)))  # type: ignore[arg-type]
        # Room for at least half the outbox again, so shrinking stays rare (amortised O(1)).
        limit = self._max_pending // 2 or 1
        if len(outbox) > limit:  # more coordinators than room: the oldest lose their event
            _pub_dropped["outbox_full"].inc(len(outbox) - limit)
            for _ in range(len(outbox) - limit):
                outbox.popleft()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            closing = self._state == "stopped"
            if not self._outbox and (not self._resend or closing):
                if closing:
                    return  # a rewrite of the latest events can wait for the next run
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(IDLE_PING_SEC):
                        await self._wakeup.wait()
                    continue
                except TimeoutError:
                    pass  # idle: ping, so a Redis restarted meanwhile gets the hash back
            try:
                await self._write_pending()
            except asyncio.CancelledError:
                raise
            except _redis_errors() as exc:
                self._resend = True
                await self._back_off(exc)
            except Exception as exc:  # a bug in one batch must not end the sender
                log_exception("WARNING", exc, "feedback Redis publisher: write failed")
                self._resend = False
                await asyncio.sleep(self._backoff_cap)  # no hot loop on a repeating bug

    async def _write_pending(self) -> None:
        assert self._client is not None
        if self._resend:
            # After an outage Redis may have restarted empty: write the latest event of each
            # running coordinator again (the script skips it if the hash already has it).
            latest = list(self._sent.values())
            for start in range(0, len(latest), MAX_BATCH):
                await self._write(latest[start : start + MAX_BATCH], remember=False)
            self._resend = False
        if not self._outbox:
            await self._client.ping()
            self._outage.up()
            return
        batch = [self._outbox.popleft() for _ in range(min(MAX_BATCH, len(self._outbox)))]
        requeue: tuple[type[BaseException], ...] = (asyncio.CancelledError, *_redis_errors())
        try:
            await self._write(batch, remember=True)
        except requeue:
            self._outbox.extendleft(reversed(batch))  # older than anything queued since
            if len(self._outbox) > self._max_pending:
                self._shrink_outbox()
            raise
        except Exception:
            _pub_dropped["error"].inc(len(batch))
            raise

    async def _write(self, batch: list[FeedbackEvent], *, remember: bool) -> None:
        if not batch:
            return
        assert self._script is not None
        payloads = [encode_event(event) for event in batch]
        key = latest_key(self._channel)
        written = int(await self._script(keys=[key], args=[self._channel, *payloads]))
        self._outage.up()
        _published.inc(written)
        if len(batch) > written:
            _pub_dropped["not_newer"].inc(len(batch) - written)
        if remember:
            for event in batch:
                # Re-inserted at the end, so the bound below evicts the quietest coordinator.
                self._sent.pop(event.coordinator_id, None)
                if event.reason != "stopped":
                    self._sent[event.coordinator_id] = event
            while len(self._sent) > self._max_pending:
                del self._sent[next(iter(self._sent))]


class RedisFeedbackListener(_RedisTransport):
    """Republishes the feedback events of remote stores from Redis into a local bus.

    Args:
        url: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` or ``unix://``; the
            password never reaches a log line.
        channel: the pub/sub channel the publishers use (hash ``f"{channel}:latest"``),
            1-256 printable characters without spaces (default ``"mds:feedback"``).
        bus: the local bus to publish into, ``feedback_bus()`` when None.
        socket_timeout: seconds one Redis command or connect may take, > 0 (default 2.0).
        start_timeout: seconds ``start()`` waits for the first load of the current levels,
            >= 0 (default 2.0); it returns after that even when Redis is unreachable, and
            keeps trying.
        backoff_base: seconds before the first reconnect attempt, doubling per failure,
            jittered, >= 0 (default 0.05); 0 reconnects at once (tests).
        backoff_cap: the longest wait between reconnect attempts, seconds, >= 0 (default 1.0).
    """

    _role = "listener"

    def __init__(
        self,
        url: str,
        *,
        channel: str = DEFAULT_CHANNEL,
        bus: FeedbackBus | None = None,
        socket_timeout: float = 2.0,
        start_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
    ) -> None:
        self._start_timeout = check_seconds("start_timeout", start_timeout, positive=False)
        super().__init__(
            url,
            channel=channel,
            bus=bus,
            socket_timeout=socket_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self._last: dict[str, FeedbackEvent] = {}
        self._reader: asyncio.Task[None] | None = None
        self._synced: asyncio.Event | None = None

    @property
    def connected(self) -> bool:
        """Whether the listener is subscribed and has loaded the current levels."""
        return self._outage.connected

    def latest(self) -> dict[str, FeedbackEvent]:
        """A snapshot of the last event passed on per coordinator."""
        return dict(self._last)

    async def start(self) -> None:
        """Subscribe and load the current levels (waiting up to ``start_timeout``); no-op
        when running. An unreachable Redis is retried in the background."""
        if not self._open_client():
            return
        self._synced = asyncio.Event()
        self._state = "running"
        self._reader = asyncio.create_task(self._run(), name="feedback-redis-listener")
        try:
            async with asyncio.timeout(self._start_timeout):
                await self._synced.wait()
        except TimeoutError:
            logger.debug("feedback Redis listener: not synced within {} s", self._start_timeout)

    async def stop(self) -> None:
        """Stop listening and close the connections. Idempotent."""
        if not self._mark_stopped():
            return
        reader = self._reader
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
        await self._close()

    async def _run(self) -> None:
        assert self._synced is not None
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except _redis_errors() as exc:
                await self._back_off(exc)

    async def _listen_once(self) -> None:
        """One connection's life: subscribe, load the hash, pass messages on until it fails."""
        assert self._client is not None and self._synced is not None
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            await self._confirm_subscribed(pubsub)
            # Subscribed before loading: whatever is published from now on reaches us, and
            # what was published before is in the hash; overlaps are stale and dropped.
            snapshot = await self._client.hgetall(latest_key(self._channel))
            for raw in snapshot.values():
                self._accept(raw)
            self._outage.up()
            self._synced.set()
            while True:
                message = await pubsub.get_message(timeout=PUBSUB_POLL_SEC)
                if message is not None and message.get("type") == "message":
                    self._accept(message["data"])
                    # Messages already buffered come back without a pause: let the bus
                    # deliver between them, or a burst is coalesced before anyone sees it.
                    await asyncio.sleep(0)
        finally:
            await _close_pubsub(pubsub)

    async def _confirm_subscribed(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._socket_timeout
        while loop.time() < deadline:
            message = await pubsub.get_message(timeout=max(0.0, deadline - loop.time()))
            if message is not None and message.get("type") == "subscribe":
                return
        raise TimeoutError("no subscribe confirmation from Redis")

    def _accept(self, raw: bytes | str) -> None:
        try:
            event = decode_event(raw)
        except ValueError as exc:
            _lis_dropped["invalid"].inc()
            logger.debug("feedback Redis listener: invalid payload dropped: {}", exc)
            return
        if not is_newer(event, self._last.get(event.coordinator_id)):
            _lis_dropped["stale"].inc()
            return
        self._last.pop(event.coordinator_id, None)  # to the end: the quietest is evicted
        self._last[event.coordinator_id] = event
        if len(self._last) > MAX_COORDINATORS:
            del self._last[next(iter(self._last))]
        _received.inc()
        self._bus.publish_nowait(event)


async def _close_pubsub(pubsub: PubSub) -> None:
    await close_quietly(pubsub.aclose, "Redis listener pub/sub")
