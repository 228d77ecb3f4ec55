"""The in-process feedback bus: fan-out of ``FeedbackEvent``s to subscribers.

The producer side hands an event to the bus with ``publish_nowait`` (what the queue uses; a
deque append and at most one ``call_soon``). The bus fans events out on the event loop into
one mailbox per subscriber, each drained by its own task, so a slow, hung or raising
subscriber delays nobody else. A mailbox keeps one coordinator's events in emission order;
when it grows past ``max_backlog`` it coalesces to the latest event per coordinator, so memory
stays bounded and the latest level is always delivered.

The bus is not bound to an event loop: delivery tasks run on whichever loop dispatches, and
work left on a loop that closed (pytest runs one loop per test) is taken over by the next one.
Delivery is at least once: an event whose delivery was cut short by a loop shutting down is
delivered again on the next loop (``seq`` lets a receiver spot the repeat).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

from loguru import logger

from market_data_store._validation import check_range
from market_data_store.feedback import metrics
from market_data_store.feedback.events import FeedbackEvent, FeedbackSubscriber


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` from any loop; a future whose loop has closed is left alone."""
    if fut.done():
        return
    loop = fut.get_loop()
    if loop is _running_loop():
        fut.set_result(None)
    elif not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_set_if_pending, fut)
        except RuntimeError:  # closed in the meantime: nobody is left to wake
            pass


class _Envelope:
    """An event in a mailbox with the futures of ``publish``/``flush`` callers awaiting it.

    Mailboxes hold bare ``FeedbackEvent``s; only an event someone waits for is wrapped.
    """

    __slots__ = ("event", "waiters")

    def __init__(self, event: FeedbackEvent, waiters: list[asyncio.Future[None]]):
        self.event = event
        self.waiters = waiters


_Item = FeedbackEvent | _Envelope


def _event_of(item: _Item) -> FeedbackEvent:
    return item.event if isinstance(item, _Envelope) else item


def _resolve(item: _Item | None) -> None:
    if isinstance(item, _Envelope):
        for fut in item.waiters:
            _wake(fut)


def _add_waiters(item: _Item, waiters: list[asyncio.Future[None]]) -> _Envelope:
    if isinstance(item, _Envelope):
        item.waiters.extend(waiters)
        return item
    return _Envelope(item, waiters)


def _coalesce(pending: deque[_Item]) -> list[_Item]:
    """Keep only the latest item per coordinator, in order; return the items dropped.

    Whoever waits for a dropped item now waits for its coordinator's latest one, which
    supersedes it.
    """
    last_index: dict[str, int] = {}
    for i, item in enumerate(pending):
        last_index[_event_of(item).coordinator_id] = i
    if len(last_index) == len(pending):
        return []
    items = list(pending)
    dropped: list[_Item] = []
    for i, item in enumerate(items):
        coordinator_id = _event_of(item).coordinator_id
        keep_at = last_index[coordinator_id]
        if keep_at != i:
            dropped.append(item)
            if isinstance(item, _Envelope) and item.waiters:
                items[keep_at] = _add_waiters(items[keep_at], item.waiters)
    pending.clear()
    pending.extend(items[i] for i in sorted(last_index.values()))
    return dropped


class _ByIdentity:
    """Dict key for a subscriber that is not hashable (e.g. a dataclass with ``__call__``)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.obj is self.obj


def _key(callback: object) -> Hashable:
    try:
        hash(callback)
    except TypeError:
        return _ByIdentity(callback)
    return callback


class _Mailbox:
    """One subscriber's backlog and the task that delivers it.

    ``epoch`` changes whenever the current delivery task is superseded (unsubscribed, loop
    gone): a superseded task stops at its next step without touching the mailbox.
    """

    __slots__ = ("callback", "current", "epoch", "name", "pending", "task")

    def __init__(self, callback: FeedbackSubscriber):
        self.callback = callback
        self.name: str = getattr(callback, "__qualname__", None) or type(callback).__qualname__
        self.pending: deque[_Item] = deque()
        self.current: _Item | None = None
        self.task: asyncio.Task[None] | None = None
        self.epoch = 0

    def retire_task(self) -> asyncio.Task[None] | None:
        """Supersede the delivery task; its in-flight event goes back to the head of the line."""
        task, self.task = self.task, None
        self.epoch += 1
        if self.current is not None:
            self.pending.appendleft(self.current)
            self.current = None
        return task


def _stop_task(task: asyncio.Task[None] | None) -> None:
    """Stop a superseded delivery task, whichever loop it belongs to."""
    if task is None or task.done() or task is _current_task():
        return
    loop = task.get_loop()
    if loop is _running_loop():
        task.cancel()
    elif not loop.is_closed():
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:
            pass
    else:  # it can never run again; closing its coroutine spares a "never awaited" warning
        coro = task.get_coro()
        try:
            if coro is not None:
                coro.close()
        except RuntimeError as exc:  # the subscriber awaited while being closed
            logger.opt(exception=exc).debug("feedback: closing a stranded delivery task failed")


async def _wait_all(waiters: list[asyncio.Future[None]], timeout: float | None) -> None:
    if timeout is not None:
        check_range("timeout", timeout, lo=0)
    if not waiters:
        return
    if timeout is None:
        await (waiters[0] if len(waiters) == 1 else asyncio.gather(*waiters))
        return
    _done, pending = await asyncio.wait(waiters, timeout=timeout)
    for fut in pending:
        fut.cancel()
    if pending:
        raise TimeoutError(f"{len(pending)} subscribers did not finish within {timeout} s")


def _current_task() -> asyncio.Task[Any] | None:
    return asyncio.current_task() if _running_loop() is not None else None


class FeedbackBus:
    """In-process pub/sub for ``FeedbackEvent``s with isolated, ordered, bounded delivery.

    Not thread-safe: call it from the thread that runs the event loop (or with no loop).
    """

    def __init__(self, *, max_backlog: int = 256) -> None:
        check_range("max_backlog", max_backlog, lo=1)
        self._max_backlog = max_backlog
        self._mailboxes: dict[Hashable, _Mailbox] = {}
        self._inbox: deque[FeedbackEvent] = deque()
        self._dispatch_loop: asyncio.AbstractEventLoop | None = None

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are registered."""
        return len(self._mailboxes)

    @property
    def max_backlog(self) -> int:
        """Past this many undelivered events a subscriber's backlog is coalesced."""
        return self._max_backlog

    def subscribe(self, callback: FeedbackSubscriber) -> None:
        """Register ``callback``; subscribing the same callable twice changes nothing."""
        if not callable(callback):
            raise TypeError(f"subscriber must be an async callable, got {callback!r}")
        key = _key(callback)
        if key not in self._mailboxes:
            self._mailboxes[key] = _Mailbox(callback)
            metrics.FEEDBACK_SUBSCRIBERS.inc()

    def unsubscribe(self, callback: FeedbackSubscriber) -> None:
        """Remove ``callback``; its undelivered events are discarded. No-op if absent.

        A delivery to it in progress is cancelled, unless ``callback`` is unsubscribing itself.
        """
        mailbox = self._mailboxes.pop(_key(callback), None)
        if mailbox is None:
            return
        metrics.FEEDBACK_SUBSCRIBERS.dec()
        task = mailbox.retire_task()
        for item in mailbox.pending:
            _resolve(item)
        mailbox.pending.clear()
        _stop_task(task)

    def subscribers(self) -> Iterable[FeedbackSubscriber]:
        """A snapshot of the registered subscribers."""
        return tuple(mailbox.callback for mailbox in self._mailboxes.values())

    def backlog(self, callback: FeedbackSubscriber) -> int:
        """How many events wait for delivery to ``callback`` (0 if it is not subscribed)."""
        mailbox = self._mailboxes.get(_key(callback))
        return len(mailbox.pending) if mailbox is not None else 0

    def publish_nowait(self, event: FeedbackEvent) -> None:
        """Hand ``event`` to the bus without waiting for any subscriber (the producer path).

        Outside a running loop the event is kept (bounded, coalesced) until the bus next
        dispatches inside one.
        """
        inbox = self._inbox
        inbox.append(event)
        if len(inbox) > self._max_backlog:
            self._coalesce_inbox()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._dispatch_loop is not loop:
            self._dispatch_loop = loop
            loop.call_soon(self._dispatch)

    async def publish(self, event: FeedbackEvent, *, timeout: float | None = None) -> None:
        """Publish ``event`` and return once every current subscriber has handled it.

        With ``timeout`` (seconds) raise ``TimeoutError`` when that takes longer; the event
        stays published.

        An event coalesced away counts as handled once the later event of the same
        coordinator that superseded it has been. A subscriber publishing from its own
        callback is not waited for (it would wait for itself).
        """
        loop = asyncio.get_running_loop()
        self._dispatch()  # events handed over earlier go first
        metrics.count_feedback_event(event.coordinator_id, event.level.value)
        me = asyncio.current_task()
        waiters: list[asyncio.Future[None]] = []
        for mailbox in list(self._mailboxes.values()):
            if me is not None and mailbox.task is me:
                mailbox.pending.append(event)
            else:
                fut = loop.create_future()
                waiters.append(fut)
                mailbox.pending.append(_Envelope(event, [fut]))
            self._trim(mailbox)
            self._ensure_delivering(mailbox, loop)
        await _wait_all(waiters, timeout)

    async def flush(self, *, timeout: float | None = None) -> None:
        """Wait until every event handed to the bus so far has been delivered (or coalesced).

        With ``timeout`` (seconds) raise ``TimeoutError`` when that takes longer.
        """
        loop = asyncio.get_running_loop()
        self._dispatch()
        me = asyncio.current_task()
        waiters: list[asyncio.Future[None]] = []
        for mailbox in list(self._mailboxes.values()):
            if me is not None and mailbox.task is me:
                continue
            self._ensure_delivering(mailbox, loop)
            fut = loop.create_future()
            if mailbox.pending:
                mailbox.pending[-1] = _add_waiters(mailbox.pending[-1], [fut])
            elif mailbox.current is not None:
                mailbox.current = _add_waiters(mailbox.current, [fut])
            else:
                continue
            waiters.append(fut)
        await _wait_all(waiters, timeout)

    def _dispatch(self) -> None:
        """Move inbox events into every mailbox (runs on the loop, not on the producer)."""
        self._dispatch_loop = None
        inbox = self._inbox
        if not inbox:
            return
        loop = asyncio.get_running_loop()
        events = list(inbox)
        inbox.clear()
        for event in events:
            metrics.count_feedback_event(event.coordinator_id, event.level.value)
        for mailbox in list(self._mailboxes.values()):
            mailbox.pending.extend(events)
            self._trim(mailbox)
            self._ensure_delivering(mailbox, loop)

    def _trim(self, mailbox: _Mailbox) -> None:
        if len(mailbox.pending) > self._max_backlog:
            dropped = _coalesce(mailbox.pending)
            if dropped:
                metrics.FEEDBACK_COALESCED.inc(len(dropped))

    def _coalesce_inbox(self) -> None:
        # Events dropped before fan-out were still published: count them as such.
        dropped = _coalesce(self._inbox)  # type: ignore[arg-type]  # holds bare events only
        for item in dropped:
            event = _event_of(item)
            metrics.count_feedback_event(event.coordinator_id, event.level.value)
        if dropped:
            metrics.FEEDBACK_COALESCED.inc(len(dropped))

    def _ensure_delivering(self, mailbox: _Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        task = mailbox.task
        if task is not None and not task.done():
            if task.get_loop() is loop:
                return
            # Stranded on a loop that closed (or stopped): this loop takes its work over.
            _stop_task(mailbox.retire_task())
        if mailbox.pending:
            mailbox.epoch += 1
            mailbox.task = loop.create_task(
                self._deliver(mailbox, mailbox.epoch), name=f"feedback:{mailbox.name}"
            )

    async def _deliver(self, mailbox: _Mailbox, epoch: int) -> None:
        pending = mailbox.pending
        while mailbox.epoch == epoch and pending:
            item = mailbox.current = pending.popleft()
            try:
                await mailbox.callback(_event_of(item))
            except Exception as exc:
                self._subscriber_failed(mailbox, item, exc)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    self._interrupted(mailbox, epoch)
                    raise
                self._subscriber_failed(mailbox, item, exc)  # raised by the subscriber itself
            except BaseException:
                self._interrupted(mailbox, epoch)
                raise
            if mailbox.epoch != epoch:
                return  # superseded while the subscriber ran: the item is no longer ours
            done, mailbox.current = mailbox.current, None
            _resolve(done)

    def _interrupted(self, mailbox: _Mailbox, epoch: int) -> None:
        """This delivery task is being cancelled (loop shutdown): keep its event for the next."""
        if mailbox.epoch == epoch:
            mailbox.retire_task()

    def _subscriber_failed(self, mailbox: _Mailbox, item: _Item, exc: BaseException) -> None:
        metrics.FEEDBACK_SUBSCRIBER_ERRORS.labels(subscriber=mailbox.name).inc()
        logger.opt(exception=exc).warning(
            "feedback subscriber {} raised on {}", mailbox.name, _event_of(item)
        )


_bus: FeedbackBus | None = None


def feedback_bus() -> FeedbackBus:
    """The process-wide bus that queues publish to when given no other."""
    global _bus
    if _bus is None:
        _bus = FeedbackBus()
    return _bus
