"""Logged exceptions carry their traceback as text, never the values of variables.

loguru's default ``diagnose=True`` would print the value of every variable on each line of
a traceback given with ``logger.opt(exception=...)``: a DSN or URL with its password could
reach the log that way. The library formats tracebacks itself (``_logging``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.feedback import FeedbackBus, FeedbackEvent

SECRET = "hunter2-in-a-local"
SRC = Path(__file__).resolve().parents[2] / "src" / "market_data_store"


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every record the library logs, rendered by a handler with diagnose and backtrace on."""
    lines: list[str] = []
    handler = logger.add(lines.append, level="DEBUG", diagnose=True, backtrace=True)
    logger.enable("market_data_store")
    try:
        yield lines
    finally:
        logger.disable("market_data_store")
        logger.remove(handler)


def leaky_callback(item: int) -> None:
    password = SECRET
    raise RuntimeError(f"callback failed on {item}" + password[:0])


async def test_a_raising_drop_callback_is_logged_with_its_traceback_but_no_values(
    logged: list[str],
) -> None:
    """The traceback names the function and the line, and the local's value is nowhere."""
    q: BoundedQueue[int] = BoundedQueue(
        2, 2, 1, overflow_strategy="drop_oldest", drop_callback=leaky_callback, bus=FeedbackBus()
    )
    await q.put_many([1, 2, 3])  # one dropped: the callback raises
    await q.join_callbacks()
    text = "".join(logged)
    assert "leaky_callback" in text and "RuntimeError: callback failed on 1" in text
    assert "password[:0]" in text  # the source line is there ...
    assert SECRET not in text  # ... but not the value diagnose would print under it


async def test_a_raising_subscriber_is_logged_at_debug_without_values(logged: list[str]) -> None:
    """The bus logs a subscriber's traceback at DEBUG; the values of its locals stay out."""

    async def subscriber(event: FeedbackEvent) -> None:
        password = SECRET
        raise ValueError("subscriber failed" + password[:0])

    bus = FeedbackBus()
    bus.subscribe(subscriber)
    await bus.publish(FeedbackEvent.create("c1", 0, 10, "ok"))
    await bus.flush()
    text = "".join(logged)
    assert "ValueError: subscriber failed" in text
    assert SECRET not in text


def test_no_module_hands_loguru_an_exception_to_render() -> None:
    """Every logged traceback goes through ``_logging.log_exception`` (text, no values)."""
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        if path.name != "_logging.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "opt(exception" in line or "logger.exception(" in line
    ]
    assert offenders == []
