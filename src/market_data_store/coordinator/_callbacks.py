"""Runs user callbacks (watermark, drop) in order, off the producer's path, isolated."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger


class CallbackRunner:
    """Calls callbacks one after another in a background task; exceptions are logged."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._task: asyncio.Task[None] | None = None

    def call(self, callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        """Queue ``callback(*args)``; it runs after every callback queued before it."""
        self._pending.append((callback, args))
        task = self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_sync_only()
            return
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._drain(), name=f"callbacks:{self._name}")

    async def join(self) -> None:
        """Wait until every queued callback has run."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _run_sync_only(self) -> None:
        # Without a loop, sync callbacks still run; coroutines cannot and are reported.
        while self._pending:
            callback, args = self._pending.popleft()
            result = self._invoke(callback, args)
            if inspect.isawaitable(result):
                logger.warning("{}: async callback {} needs a running loop", self._name, callback)
                if inspect.iscoroutine(result):
                    result.close()

    async def _drain(self) -> None:
        while self._pending:
            callback, args = self._pending.popleft()
            result = self._invoke(callback, args)
            if inspect.isawaitable(result):
                try:
                    await result
                except Exception as exc:
                    logger.opt(exception=exc).warning(
                        "{}: callback {} raised", self._name, callback
                    )
        if self._task is asyncio.current_task():
            self._task = None

    def _invoke(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            return callback(*args)
        except Exception as exc:
            logger.opt(exception=exc).warning("{}: callback {} raised", self._name, callback)
            return None
