"""Runs user callbacks (watermark, drop) in order, off the producer's path, isolated."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from market_data_store._logging import log_exception

DEFAULT_MAX_PENDING = 10_000


class CallbackRunner:
    """Calls callbacks one after another in a background task; exceptions are logged.

    The backlog is bounded so that memory is: when ``max_pending`` calls with arguments
    (drop callbacks, one per dropped item, each keeping its item alive) are waiting, the
    oldest of them is skipped to make room, and counted in ``skipped`` (logged at WARNING
    the first time, then at every power of ten). Calls without arguments (the watermark
    callbacks, at most one per level transition, which a producer may wait on) are never
    skipped and do not count against the bound.
    """

    def __init__(self, name: str, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._name = name
        self._max_pending = max_pending
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._with_args = 0  # calls with arguments in _pending
        self._skipped = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def skipped(self) -> int:
        """Calls with arguments skipped because the backlog was full."""
        return self._skipped

    @property
    def pending(self) -> int:
        """Calls waiting to run."""
        return len(self._pending)

    def call(self, callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        """Queue ``callback(*args)``; it runs after every callback queued before it (unless
        the backlog is full and it is skipped, see the class docstring)."""
        if args:
            if self._with_args >= self._max_pending:
                self._skip_oldest()
            self._with_args += 1
        self._pending.append((callback, args))
        task = self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_sync_only()
            return
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._drain(), name=f"callbacks:{self._name}")

    def _skip_oldest(self) -> None:
        pending = self._pending
        kept: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        while pending:
            entry = pending.popleft()
            if entry[1]:
                break
            kept.append(entry)  # a watermark callback: never skipped
        pending.extendleft(reversed(kept))
        self._with_args -= 1
        self._skipped += 1
        skipped = self._skipped
        if skipped == 1 or math.log10(skipped).is_integer():
            logger.warning(
                "{}: callback backlog full ({} pending); {} oldest call(s) skipped so far",
                self._name,
                self._max_pending,
                skipped,
            )

    async def join(self) -> None:
        """Wait until every queued callback has run."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _run_sync_only(self) -> None:
        # Without a loop, sync callbacks still run; coroutines cannot and are reported.
        while self._pending:
            callback, args = self._pending.popleft()
            self._with_args -= bool(args)
            result = self._invoke(callback, args)
            if inspect.isawaitable(result):
                logger.warning("{}: async callback {} needs a running loop", self._name, callback)
                if inspect.iscoroutine(result):
                    result.close()

    async def _drain(self) -> None:
        while self._pending:
            callback, args = self._pending.popleft()
            self._with_args -= bool(args)
            result = self._invoke(callback, args)
            if inspect.isawaitable(result):
                try:
                    await result
                except Exception as exc:
                    log_exception("WARNING", exc, "{}: callback {} raised", self._name, callback)
        if self._task is asyncio.current_task():
            self._task = None

    def _invoke(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            return callback(*args)
        except Exception as exc:
            log_exception("WARNING", exc, "{}: callback {} raised", self._name, callback)
            return None
