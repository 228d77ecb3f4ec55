"""The in-process feedback bus: fan-out of ``FeedbackEvent``s to subscribers.

The producer side hands an event to the bus with ``publish_nowait`` (what the queue uses: a
locked deque append and at most one ``call_soon`` per loop iteration). The bus fans events
out on an event loop into one mailbox per subscriber, each drained by its own task, so a
slow, hung or raising subscriber delays nobody else. A mailbox keeps one coordinator's
events in emission order; when it grows past ``max_backlog`` it coalesces to the latest
event per coordinator, so memory stays bounded and the latest level is always delivered.

Loops and threads: ``subscribe()`` called inside a running loop binds the subscriber to that
loop; its callback always runs there, whichever thread or loop published (the bus wakes the
subscriber's loop with ``call_soon_threadsafe``). A subscriber registered outside any loop
is served by whichever loop dispatches. Every method may be called from any thread. A
subscriber whose loop has closed (pytest runs one loop per test) is taken over by the next
loop that dispatches, with the work left on it. Delivery is at least once: an event whose
delivery was cut short by a loop shutting down is delivered again (``seq`` lets a receiver
spot the repeat).

A raising subscriber costs the loop a counter increment and a DEBUG log call (with the
traceback, formatted only if a handler takes DEBUG records of this library), plus at most
one WARNING line per subscriber per ``WARNING_INTERVAL_SEC``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable

from loguru import logger

from market_data_store._logging import log_exception
from market_data_store._validation import check_range
from market_data_store.feedback import metrics
from market_data_store.feedback._mailbox import (
    Envelope,
    Item,
    Mailbox,
    add_waiters,
    check_async_subscriber,
    check_timeout,
    coalesce,
    event_of,
    key_of,
    next_trim,
    resolve,
    running_loop,
    stop_task,
    wait_all,
)
from market_data_store.feedback.events import FeedbackEvent, FeedbackSubscriber

WARNING_INTERVAL_SEC = 60.0
"""At most one WARNING line per raising subscriber per this many seconds."""

_clock = time.monotonic  # replaced by tests


class FeedbackBus:
    """In-process pub/sub for ``FeedbackEvent``s with isolated, ordered, bounded delivery.

    Safe to use from any thread; see the module docstring for how loops are chosen.

    Args:
        max_backlog: past this many undelivered events for one subscriber (or in the inbox
            while no loop runs) the backlog is coalesced to the latest event per
            coordinator; >= 1 (default 256). With more coordinators waiting than that, a
            backlog may reach twice their number before it is coalesced again.
    """

    def __init__(self, *, max_backlog: int = 256) -> None:
        check_range("max_backlog", max_backlog, lo=1)
        self._max_backlog = max_backlog
        self._lock = threading.Lock()
        self._mailboxes: dict[Hashable, Mailbox] = {}
        self._inbox: deque[FeedbackEvent] = deque()
        self._inbox_trim_at = max_backlog  # see _mailbox.next_trim
        self._scheduled: set[asyncio.AbstractEventLoop] = set()  # loops with a dispatch due
        self._last_loop: asyncio.AbstractEventLoop | None = None

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are registered."""
        return len(self._mailboxes)

    @property
    def max_backlog(self) -> int:
        """Past this many undelivered events a subscriber's backlog is coalesced."""
        return self._max_backlog

    def subscribe(self, callback: FeedbackSubscriber) -> None:
        """Register ``callback`` (idempotent); inside a running loop, bind it to that loop.

        ``TypeError`` for anything but an async callable (a plain ``def`` function included).
        """
        check_async_subscriber(callback)
        key = key_of(callback)
        loop = running_loop()
        with self._lock:
            if key in self._mailboxes:
                return
            self._mailboxes[key] = Mailbox(callback, loop, self._max_backlog)
            if loop is not None and (self._last_loop is None or self._last_loop.is_closed()):
                self._last_loop = loop  # off-loop publishers get a loop to dispatch on
        metrics.FEEDBACK_SUBSCRIBERS.inc()

    def unsubscribe(self, callback: FeedbackSubscriber) -> None:
        """Remove ``callback``; its undelivered events are discarded. No-op if absent.

        A delivery to it in progress is cancelled, unless ``callback`` is unsubscribing itself.
        """
        with self._lock:
            mailbox = self._mailboxes.pop(key_of(callback), None)
            if mailbox is None:
                return
            mailbox.subscribed = False
            task = mailbox.retire_task()
            dropped = list(mailbox.pending)
            mailbox.pending.clear()
        metrics.FEEDBACK_SUBSCRIBERS.dec()
        for item in dropped:
            resolve(item)
        stop_task(task)

    def subscribers(self) -> Iterable[FeedbackSubscriber]:
        """A snapshot of the registered subscribers."""
        with self._lock:
            return tuple(mailbox.callback for mailbox in self._mailboxes.values())

    def backlog(self, callback: FeedbackSubscriber) -> int:
        """How many events wait for delivery to ``callback`` (0 if it is not subscribed)."""
        mailbox = self._mailboxes.get(key_of(callback))
        return len(mailbox.pending) if mailbox is not None else 0

    def publish_nowait(self, event: FeedbackEvent) -> None:
        """Hand ``event`` to the bus without waiting for any subscriber (the producer path).

        Safe from any thread. Outside a running loop the event is dispatched on the loop
        that dispatched last, if it still runs; otherwise it is kept (bounded, coalesced)
        until the bus next dispatches.
        """
        with self._lock:
            inbox = self._inbox
            inbox.append(event)
            if len(inbox) > self._inbox_trim_at:
                self._coalesce_inbox()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._dispatch_elsewhere()
            return
        if loop not in self._scheduled:
            self._scheduled.add(loop)
            loop.call_soon(self._dispatch)

    async def publish(self, event: FeedbackEvent, *, timeout: float | None = None) -> None:
        """Publish ``event`` and return once every current subscriber has handled it.

        An event coalesced away counts as handled once the later event of the same
        coordinator that superseded it has been. A subscriber publishing from its own
        callback is not waited for (it would wait for itself). With ``timeout`` (seconds),
        ``TimeoutError`` when handling takes longer; the event stays published.
        """
        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        self._dispatch()  # events handed over earlier go first
        metrics.count_feedback_event(event.coordinator_id, event.level.value)
        me = asyncio.current_task()
        waiters: list[asyncio.Future[None]] = []
        with self._lock:
            mailboxes = list(self._mailboxes.values())
            for mailbox in mailboxes:
                if me is not None and mailbox.task is me:
                    mailbox.pending.append(event)
                else:
                    fut = loop.create_future()
                    waiters.append(fut)
                    mailbox.pending.append(Envelope(event, [fut]))
                self._trim(mailbox)
        for mailbox in mailboxes:
            self._route(mailbox, loop)
        await wait_all(waiters, timeout)

    async def flush(self, *, timeout: float | None = None) -> None:
        """Wait until every event handed to the bus so far has been delivered (or coalesced).

        With ``timeout`` (seconds), ``TimeoutError`` when that takes longer.
        """
        check_timeout(timeout)
        loop = asyncio.get_running_loop()
        self._dispatch()
        me = asyncio.current_task()
        waiters: list[asyncio.Future[None]] = []
        with self._lock:
            mailboxes = [m for m in self._mailboxes.values() if me is None or m.task is not me]
            for mailbox in mailboxes:
                fut = loop.create_future()
                if mailbox.pending:
                    mailbox.pending[-1] = add_waiters(mailbox.pending[-1], [fut])
                elif mailbox.current is not None:
                    mailbox.current = add_waiters(mailbox.current, [fut])
                else:
                    continue
                waiters.append(fut)
        for mailbox in mailboxes:
            self._route(mailbox, loop)
        await wait_all(waiters, timeout)

    # -- dispatch: inbox -> mailboxes -> delivery tasks on the right loops ----------------

    def _dispatch_elsewhere(self) -> None:
        """Called off-loop: have the loop that dispatched last (if it runs) dispatch."""
        loop = self._last_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        if loop not in self._scheduled:
            self._scheduled.add(loop)
            try:
                loop.call_soon_threadsafe(self._dispatch)
            except RuntimeError:  # closed in the meantime
                self._scheduled.discard(loop)

    def _dispatch(self) -> None:
        """Move inbox events into every mailbox (runs on a loop, not on the producer)."""
        loop = asyncio.get_running_loop()
        self._scheduled.discard(loop)  # before taking the inbox: a later append reschedules
        self._last_loop = loop
        with self._lock:
            inbox = self._inbox
            if not inbox:
                return
            events = list(inbox)
            inbox.clear()
            mailboxes = list(self._mailboxes.values())
            for mailbox in mailboxes:
                mailbox.pending.extend(events)
                self._trim(mailbox)
        for event in events:
            metrics.count_feedback_event(event.coordinator_id, event.level.value)
        for mailbox in mailboxes:
            self._route(mailbox, loop)

    def _route(self, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        """Get ``mailbox`` delivered: here, or on the loop it is bound to (woken thread-safely)."""
        with self._lock:
            target = mailbox.loop
            if target is not None and target is not loop:
                if not target.is_closed():
                    if mailbox.kicked:
                        return
                    try:
                        target.call_soon_threadsafe(self._kick, mailbox, target)
                    except RuntimeError:  # closed in the meantime
                        pass
                    else:
                        mailbox.kicked = True
                        return
                mailbox.loop = loop  # its loop is gone: this one takes the subscriber over
                mailbox.kicked = False
        self._ensure_delivering(mailbox, loop)

    def _kick(self, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            mailbox.kicked = False
            if mailbox.loop is not loop:  # taken over meanwhile: the other loop delivers
                return
        self._ensure_delivering(mailbox, loop)

    def _ensure_delivering(self, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        """Start a delivery task on ``loop`` (the running one) unless one is already at work."""
        stranded = None
        with self._lock:
            task = mailbox.task
            if task is not None and not task.done():
                task_loop = task.get_loop()
                if task_loop is loop or (task_loop.is_running() and not task_loop.is_closed()):
                    return  # it drains the mailbox before it ends
                stranded = mailbox.retire_task()  # its loop stopped or closed: take over
            if mailbox.pending and mailbox.subscribed:
                mailbox.epoch += 1
                mailbox.task = loop.create_task(
                    self._deliver(mailbox, mailbox.epoch), name=f"feedback:{mailbox.name}"
                )
        stop_task(stranded)

    async def _deliver(self, mailbox: Mailbox, epoch: int) -> None:
        lock = self._lock
        callback = mailbox.callback
        while True:
            with lock:
                if mailbox.epoch != epoch:
                    return
                if not mailbox.pending:
                    mailbox.task = None  # under the lock: a later append starts a new task
                    return
                item = mailbox.current = mailbox.pending.popleft()
            try:
                await callback(event_of(item))
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
            with lock:
                if mailbox.epoch != epoch:
                    return  # superseded while the subscriber ran: the item is no longer ours
                done, mailbox.current = mailbox.current, None
            resolve(done)

    def _interrupted(self, mailbox: Mailbox, epoch: int) -> None:
        """This delivery task is being cancelled (loop shutdown): keep its event for the next."""
        with self._lock:
            if mailbox.epoch == epoch:
                mailbox.retire_task()

    def _subscriber_failed(self, mailbox: Mailbox, item: Item, exc: BaseException) -> None:
        """Count and log a subscriber's exception; called inside the ``except`` block."""
        mailbox.errors.inc()
        log_exception(
            "DEBUG", exc, "feedback subscriber {} raised on {}", mailbox.name, event_of(item)
        )
        mailbox.failures_unreported += 1
        now = _clock()
        if now - mailbox.warned_at >= WARNING_INTERVAL_SEC:
            logger.warning(
                "feedback subscriber {} raised {}: {} ({} times since the last warning; "
                "tracebacks at DEBUG)",
                mailbox.name,
                type(exc).__name__,
                exc,
                mailbox.failures_unreported,
            )
            mailbox.warned_at = now
            mailbox.failures_unreported = 0

    def _trim(self, mailbox: Mailbox) -> None:
        if len(mailbox.pending) > mailbox.trim_at:
            dropped = coalesce(mailbox.pending)
            mailbox.trim_at = next_trim(len(mailbox.pending), self._max_backlog)
            if dropped:
                metrics.FEEDBACK_COALESCED.inc(len(dropped))

    def _coalesce_inbox(self) -> None:
        # Events dropped before fan-out were still published: count them as such.
        dropped = coalesce(self._inbox)  # type: ignore[arg-type]  # holds bare events only
        self._inbox_trim_at = next_trim(len(self._inbox), self._max_backlog)
        for item in dropped:
            event = event_of(item)
            metrics.count_feedback_event(event.coordinator_id, event.level.value)
        if dropped:
            metrics.FEEDBACK_COALESCED.inc(len(dropped))


_bus: FeedbackBus | None = None
_bus_lock = threading.Lock()


def feedback_bus() -> FeedbackBus:
    """The process-wide bus that queues publish to when given no other."""
    global _bus
    if _bus is None:
        with _bus_lock:
            if _bus is None:
                _bus = FeedbackBus()
    return _bus
