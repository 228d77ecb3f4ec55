"""Backpressure feedback: levels, events, subscribers and the in-process bus.

The producer side hands an event to the bus with ``publish_nowait`` (what the queue uses; a
deque append and at most one ``call_soon``). The bus fans events out on the event loop into
one mailbox per subscriber, each drained by its own task, so a slow, hung or raising
subscriber delays nobody else. A mailbox keeps one coordinator's events in emission order;
when it grows past ``max_backlog`` it coalesces to the latest event per coordinator, so memory
stays bounded and the latest level is always delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from loguru import logger

from market_data_store.coordinator import metrics


class BackpressureLevel(str, Enum):
    """Pressure on a coordinator's queue; ``"ok" < "soft" < "hard"`` in urgency."""

    OK = "ok"
    SOFT = "soft"
    HARD = "hard"


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One immutable pressure signal from one coordinator."""

    coordinator_id: str
    queue_size: int
    capacity: int
    level: BackpressureLevel
    reason: str | None = None
    ts: float = field(default_factory=time.time)
    seq: int = 0

    @property
    def utilization(self) -> float:
        """queue_size / capacity, 0.0 when capacity is 0."""
        return self.queue_size / self.capacity if self.capacity else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``utilization`` (the webhook payload)."""
        data = asdict(self)
        data["level"] = self.level.value
        data["utilization"] = self.utilization
        return data


@runtime_checkable
class FeedbackSubscriber(Protocol):
    """Anything awaitable with one event: a coroutine function, a bound method, an object."""

    async def __call__(self, event: FeedbackEvent) -> None: ...


class _Envelope:
    """An event in a mailbox, with the futures of ``publish``/``flush`` callers awaiting it."""

    __slots__ = ("event", "waiters")

    def __init__(self, event: FeedbackEvent, waiters: list[asyncio.Future[None]] | None = None):
        self.event = event
        self.waiters = waiters

    def resolve(self) -> None:
        for fut in self.waiters or ():
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_result(None)


def _coalesce(pending: deque[_Envelope]) -> int:
    """Keep only the latest envelope per coordinator, in order; return how many were dropped."""
    latest: dict[str, _Envelope] = {}
    for env in pending:
        latest.pop(env.event.coordinator_id, None)  # re-insert to move it to the end
        latest[env.event.coordinator_id] = env
    dropped = len(pending) - len(latest)
    if dropped:
        keep = set(map(id, latest.values()))
        for env in pending:
            if id(env) not in keep:
                env.resolve()
        pending.clear()
        pending.extend(latest.values())
    return dropped


class _Mailbox:
    """One subscriber's backlog and the task that delivers it."""

    __slots__ = ("callback", "closed", "current", "name", "pending", "task")

    def __init__(self, callback: FeedbackSubscriber):
        self.callback = callback
        self.name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
        self.pending: deque[_Envelope] = deque()
        self.current: _Envelope | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False


class FeedbackBus:
    """In-process pub/sub for ``FeedbackEvent``s with isolated, ordered, bounded delivery."""

    def __init__(self, *, max_backlog: int = 256) -> None:
        if max_backlog < 1:
            raise ValueError(f"max_backlog must satisfy 1 <= max_backlog, got {max_backlog!r}")
        self._max_backlog = max_backlog
        self._mailboxes: dict[FeedbackSubscriber, _Mailbox] = {}
        self._inbox: deque[_Envelope] = deque()
        self._dispatch_loop: asyncio.AbstractEventLoop | None = None

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are registered."""
        return len(self._mailboxes)

    def subscribe(self, callback: FeedbackSubscriber) -> None:
        """Register ``callback``; subscribing the same callable twice changes nothing."""
        if not callable(callback):
            raise TypeError(f"subscriber must be an async callable, got {callback!r}")
        if callback not in self._mailboxes:
            self._mailboxes[callback] = _Mailbox(callback)
            metrics.FEEDBACK_SUBSCRIBERS.inc()

    def unsubscribe(self, callback: FeedbackSubscriber) -> None:
        """Remove ``callback``; its undelivered events are discarded. No-op if absent."""
        mailbox = self._mailboxes.pop(callback, None)
        if mailbox is None:
            return
        metrics.FEEDBACK_SUBSCRIBERS.dec()
        mailbox.closed = True
        while mailbox.pending:
            mailbox.pending.popleft().resolve()

    def publish_nowait(self, event: FeedbackEvent) -> None:
        """Hand ``event`` to the bus without waiting for any subscriber (the producer path)."""
        self._inbox.append(_Envelope(event))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: kept (bounded) until the next publish inside one
            if len(self._inbox) > self._max_backlog:
                self._count_coalesced(_coalesce(self._inbox))
            return
        if self._dispatch_loop is not loop:
            self._dispatch_loop = loop
            loop.call_soon(self._dispatch)

    async def publish(self, event: FeedbackEvent) -> None:
        """Publish ``event`` and return once every current subscriber has handled it."""
        self._dispatch()
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []
        self._inbox.append(_Envelope(event, waiters))
        for _ in self._mailboxes:
            waiters.append(loop.create_future())
        self._dispatch()
        if waiters:
            await asyncio.gather(*waiters)

    async def flush(self) -> None:
        """Wait until every event handed to the bus so far has been delivered (or coalesced)."""
        self._dispatch()
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []
        for mailbox in self._mailboxes.values():
            last = mailbox.pending[-1] if mailbox.pending else mailbox.current
            if last is not None:
                fut = loop.create_future()
                last.waiters = [*(last.waiters or ()), fut]
                waiters.append(fut)
        if waiters:
            await asyncio.gather(*waiters)

    def _dispatch(self) -> None:
        """Move inbox events into every mailbox (runs on the loop, not on the producer)."""
        self._dispatch_loop = None
        if not self._inbox:
            return
        inbox, self._inbox = self._inbox, deque()
        mailboxes = list(self._mailboxes.values())
        for env in inbox:
            metrics.count_feedback_event(env.event.coordinator_id, env.event.level.value)
            waiters = env.waiters
            for i, mailbox in enumerate(mailboxes):
                mailbox.pending.append(_Envelope(env.event, waiters[i : i + 1] if waiters else None))
        for mailbox in mailboxes:
            if len(mailbox.pending) > self._max_backlog:
                self._count_coalesced(_coalesce(mailbox.pending))
            if mailbox.pending:
                self._ensure_delivering(mailbox)

    def _ensure_delivering(self, mailbox: _Mailbox) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = mailbox.task
        # A task left on a loop that has since closed (pytest: one loop per test) is replaced.
        if task is None or task.done() or task.get_loop() is not loop:
            mailbox.task = loop.create_task(self._deliver(mailbox), name=f"feedback:{mailbox.name}")

    async def _deliver(self, mailbox: _Mailbox) -> None:
        while mailbox.pending and not mailbox.closed:
            env = mailbox.current = mailbox.pending.popleft()
            try:
                await mailbox.callback(env.event)
            except Exception as exc:
                metrics.FEEDBACK_SUBSCRIBER_ERRORS.labels(subscriber=mailbox.name).inc()
                logger.opt(exception=exc).debug(
                    "feedback subscriber {} raised on {}", mailbox.name, env.event
                )
            finally:
                mailbox.current = None
                env.resolve()
        if mailbox.task is asyncio.current_task():
            mailbox.task = None

    def _count_coalesced(self, dropped: int) -> None:
        if dropped:
            metrics.FEEDBACK_COALESCED.inc(dropped)

    def subscribers(self) -> Iterable[FeedbackSubscriber]:
        """A snapshot of the registered subscribers."""
        return tuple(self._mailboxes)


_bus: FeedbackBus | None = None


def feedback_bus() -> FeedbackBus:
    """The process-wide bus that queues publish to when given no other."""
    global _bus
    if _bus is None:
        _bus = FeedbackBus()
    return _bus
