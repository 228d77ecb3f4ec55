"""What the webhook broadcaster and the Redis transports share around their background tasks:
the wait between attempts, ending a task at ``stop()``, and closing a client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from loguru import logger

CLOSE_GRACE = 1.0
"""Seconds a client or connection gets to close at ``stop()``."""


def backoff_delay(retry: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): ``base * 2**(retry-1)``,
    capped, jittered down by up to half so that many clients do not retry in step. 0 when
    ``base`` is 0."""
    delay = min(cap, base * 2.0 ** (retry - 1))
    return delay * random.uniform(0.5, 1.0)


async def finish_task(task: asyncio.Task[None], timeout: float) -> None:
    """Give ``task`` up to ``timeout`` seconds to end by itself, then cancel it; return once
    it is done."""
    await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})


async def close_quietly(aclose: Callable[[], Awaitable[object]], what: str) -> None:
    """Await ``aclose()`` for at most ``CLOSE_GRACE`` seconds; a failure is logged at DEBUG
    (closing a broken connection may fail, and there is nothing left to keep)."""
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await aclose()
    except Exception as exc:
        logger.debug("feedback {}: closing failed: {}", what, type(exc).__name__)
