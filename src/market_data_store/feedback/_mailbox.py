"""The bus's building blocks: a subscriber's mailbox, waiters, coalescing, cross-loop wake-ups.

Everything here is driven by ``FeedbackBus`` under its lock; nothing here takes a lock.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections import deque
from collections.abc import Hashable
from typing import Any

from market_data_store._logging import log_exception
from market_data_store._validation import check_range
from market_data_store.feedback import metrics
from market_data_store.feedback.events import FeedbackEvent, FeedbackSubscriber


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def wake(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` from any thread or loop; a future whose loop has closed is left alone."""
    if fut.done():
        return
    loop = fut.get_loop()
    if loop is running_loop():
        fut.set_result(None)
    elif not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_set_if_pending, fut)
        except RuntimeError:  # closed in the meantime: nobody is left to wake
            pass


class Envelope:
    """An event in a mailbox with the futures of ``publish``/``flush`` callers awaiting it.

    Mailboxes hold bare ``FeedbackEvent``s; only an event someone waits for is wrapped.
    """

    __slots__ = ("event", "waiters")

    def __init__(self, event: FeedbackEvent, waiters: list[asyncio.Future[None]]):
        self.event = event
        self.waiters = waiters


Item = FeedbackEvent | Envelope


def event_of(item: Item) -> FeedbackEvent:
    return item.event if isinstance(item, Envelope) else item


def resolve(item: Item | None) -> None:
    if isinstance(item, Envelope):
        for fut in item.waiters:
            wake(fut)


def add_waiters(item: Item, waiters: list[asyncio.Future[None]]) -> Envelope:
    if isinstance(item, Envelope):
        item.waiters.extend(waiters)
        return item
    return Envelope(item, waiters)


def next_trim(kept: int, max_backlog: int) -> int:
    """The length past which a backlog that kept ``kept`` items after coalescing is coalesced
    again: ``max_backlog``, or twice what was kept when that is more. With more coordinators
    waiting than ``max_backlog`` a coalescing drops nothing, and a fixed threshold would scan
    the whole backlog again for every later event; doubling keeps the scans to one per
    ``kept`` events (and memory to twice the coordinators waiting)."""
    return max(max_backlog, 2 * kept)


def coalesce(pending: deque[Item]) -> list[Item]:
    """Keep only the latest item per coordinator, in order; return the items dropped.

    Whoever waits for a dropped item now waits for its coordinator's latest one, which
    supersedes it.
    """
    last_index: dict[str, int] = {}
    for i, item in enumerate(pending):
        last_index[event_of(item).coordinator_id] = i
    if len(last_index) == len(pending):
        return []
    items = list(pending)
    dropped: list[Item] = []
    for i, item in enumerate(items):
        keep_at = last_index[event_of(item).coordinator_id]
        if keep_at != i:
            dropped.append(item)
            if isinstance(item, Envelope) and item.waiters:
                items[keep_at] = add_waiters(items[keep_at], item.waiters)
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


def key_of(callback: object) -> Hashable:
    try:
        hash(callback)
    except TypeError:
        return _ByIdentity(callback)
    return callback


def check_async_subscriber(callback: object) -> None:
    """Raise ``TypeError`` unless awaiting ``callback(event)`` is what calling it does.

    Accepted: ``async def`` functions and methods, objects with an ``async def __call__``,
    ``functools.partial`` of any of these.
    """
    if not callable(callback):
        raise TypeError(f"subscriber must be an async callable, got {callback!r}")
    target: Any = callback
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return
    if not inspect.isroutine(target) and inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - the method itself is what we inspect
    ):
        return
    raise TypeError(
        f"subscriber {callback!r} is not async: make it `async def` "
        "(the bus awaits subscriber(event) for each event)"
    )


def subscriber_name(callback: object) -> str:
    target = callback
    while isinstance(target, functools.partial):
        target = target.func
    name = getattr(target, "__qualname__", None)
    return name if isinstance(name, str) else type(target).__qualname__


class Mailbox:
    """One subscriber's backlog, the loop it is bound to and the task that delivers it.

    ``epoch`` changes whenever the current delivery task is superseded (unsubscribed, loop
    gone): a superseded task stops at its next step without touching the mailbox. ``loop``
    is the loop the subscriber was subscribed from (None: whichever loop dispatches);
    ``kicked`` says a wake-up is already scheduled on it.
    """

    __slots__ = (
        "callback",
        "current",
        "epoch",
        "errors",
        "failures_unreported",
        "kicked",
        "loop",
        "name",
        "pending",
        "subscribed",
        "task",
        "trim_at",
        "warned_at",
    )

    def __init__(
        self, callback: FeedbackSubscriber, loop: asyncio.AbstractEventLoop | None, trim_at: int
    ):
        self.callback = callback
        self.trim_at = trim_at  # the backlog is coalesced once it holds more than this
        self.name = subscriber_name(callback)
        self.loop = loop
        self.kicked = False
        self.subscribed = True
        self.pending: deque[Item] = deque()
        self.current: Item | None = None
        self.task: asyncio.Task[None] | None = None
        self.epoch = 0
        self.errors = metrics.FEEDBACK_SUBSCRIBER_ERRORS.labels(subscriber=self.name)
        self.warned_at = -math.inf
        self.failures_unreported = 0

    def retire_task(self) -> asyncio.Task[None] | None:
        """Supersede the delivery task; its in-flight event goes back to the head of the line."""
        task, self.task = self.task, None
        self.epoch += 1
        if self.current is not None:
            self.pending.appendleft(self.current)
            self.current = None
        return task


def current_task() -> asyncio.Task[Any] | None:
    return asyncio.current_task() if running_loop() is not None else None


def stop_task(task: asyncio.Task[None] | None) -> None:
    """Stop a superseded delivery task, whichever loop or thread it belongs to."""
    if task is None or task.done() or task is current_task():
        return
    loop = task.get_loop()
    if loop is running_loop():
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
            log_exception("DEBUG", exc, "feedback: closing a stranded delivery task failed")


def check_timeout(timeout: float | None) -> None:
    if timeout is not None:
        check_range("timeout", timeout, lo=0)


async def wait_all(waiters: list[asyncio.Future[None]], timeout: float | None) -> None:
    """Wait for every future; ``TimeoutError`` after ``timeout`` seconds (None: no limit)."""
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
