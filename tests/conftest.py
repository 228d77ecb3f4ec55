"""Fixtures shared across the test suite. Keep each one small and documented."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from loguru import logger

WaitUntil = Callable[..., Awaitable[None]]


async def _wait_until(
    predicate: Callable[[], object], timeout: float = 2.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.001)


@pytest.fixture(scope="session")
def wait_until() -> WaitUntil:
    """``await wait_until(predicate, timeout=2.0, what=...)``: poll, fail at the deadline.

    Session-scoped so hypothesis tests may use it too.
    """
    return _wait_until


@pytest.fixture
def log_messages() -> Iterator[list[str]]:
    """Messages loguru emits at WARNING or above while the test runs, as ``"LEVEL: text"``."""
    messages: list[str] = []
    handler_id = logger.add(
        lambda message: messages.append(message.rstrip("\n")),
        level="WARNING",
        format="{level}: {message}",
    )
    yield messages
    logger.remove(handler_id)
