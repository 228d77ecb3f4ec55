"""Exceptions in log lines as plain-text tracebacks: names and source lines, never values.

loguru renders an exception given with ``logger.opt(exception=...)`` through each handler's
own settings, and its default ``diagnose=True`` prints the value of every variable on every
line of the traceback. A password held in a local or an attribute on the way (a DSN, a
webhook or Redis URL, a client's connection arguments) would then reach the log, whatever
the library masks in its messages. So the library formats tracebacks itself, with the
standard library's ``traceback`` module, and passes them as text, lazily: nothing is
formatted unless a handler takes the record.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from loguru import logger

_lazy = logger.opt(lazy=True)


def traceback_text(exc: BaseException) -> str:
    """``exc``'s traceback and chained causes as the interpreter prints them."""
    return "".join(traceback.format_exception(exc)).rstrip("\n")


def log_exception(level: str, exc: BaseException, message: str, *args: Any) -> None:
    """Log ``message.format(*args)`` at ``level`` followed by ``exc``'s traceback as text."""
    _lazy.log(level, message + "\n{}", *map(_constant, args), lambda: traceback_text(exc))


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value
