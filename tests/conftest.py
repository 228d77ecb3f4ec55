"""Fixtures shared across the test suite. Keep each one small and documented."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from loguru import logger

from market_data_store.testing.waits import wait_until as _shared_wait_until

WaitUntil = Callable[..., Awaitable[None]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """PostgreSQL tests run on one xdist worker (``--dist loadgroup``): one server, not two."""
    for item in items:
        if item.get_closest_marker("postgres") is not None:
            item.add_marker(pytest.mark.xdist_group("postgres"))


@pytest.fixture(scope="session")
def wait_until() -> WaitUntil:
    """``await wait_until(predicate, timeout=2.0, what=...)``: poll, fail at the deadline.

    Session-scoped so hypothesis tests may use it too.
    """
    return _shared_wait_until


@pytest.fixture
def log_messages() -> Iterator[list[str]]:
    """Messages loguru emits at WARNING or above while the test runs, as ``"LEVEL: text"``.

    The library's logging is disabled at import (loguru's advice for libraries): this enables
    it for the test and disables it again afterwards.
    """
    messages: list[str] = []
    logger.enable("market_data_store")
    handler_id = logger.add(
        lambda message: messages.append(message.rstrip("\n")),
        level="WARNING",
        format="{level}: {message}",
    )
    try:
        yield messages
    finally:
        logger.remove(handler_id)
        logger.disable("market_data_store")
