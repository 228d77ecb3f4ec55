"""Checking the arguments of the sinks' read API, shared by SQLite and PostgreSQL.

Each check raises ``ConfigError`` (a ``ValueError``) naming the argument and what it allows,
before any database work, so a mistake never reads as "no bars".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from market_data_store.coordinator.types import ConfigError
from market_data_store.sinks.bar import (
    TIMEFRAME_MAX_LENGTH,
    VENDOR_MAX_LENGTH,
    normalise_symbol,
)

DEFAULT_PAGE_SIZE = 10_000
"""Bars per query of ``iter_bars``: what one page holds in memory."""


def check_symbol(symbol: Any, name: str = "symbol") -> str:
    """``symbol`` normalised as ``Bar`` stores it (see ``normalise_symbol``)."""
    if not isinstance(symbol, str):
        raise ConfigError(f"{name} must be a string, got {symbol!r}")
    try:
        return normalise_symbol(symbol)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def check_symbols(symbols: Any) -> list[str]:
    """The distinct normalised symbols of an iterable of symbol strings, in the given order."""
    if isinstance(symbols, str | bytes) or not isinstance(symbols, Iterable):
        raise ConfigError(
            f"symbols must be an iterable of symbol strings such as ['AAPL'], got {symbols!r}"
        )
    return list(dict.fromkeys(check_symbol(symbol, "symbols") for symbol in symbols))


def check_timeframe(timeframe: Any) -> str:
    """``timeframe`` stripped, as ``Bar`` stores it."""
    return _check_text("timeframe", timeframe, TIMEFRAME_MAX_LENGTH)


def check_vendor(vendor: Any) -> str | None:
    """``vendor`` stripped as ``Bar`` stores it, or None (any vendor)."""
    return None if vendor is None else _check_text("vendor", vendor, VENDOR_MAX_LENGTH)


def check_read_args(
    symbol: Any,
    timeframe: Any,
    start: Any,
    end: Any,
    *,
    vendor: Any = None,
    limit: Any = None,
) -> tuple[str, str, str | None]:
    """Check the arguments of ``read`` / ``iter_bars``; ``(symbol, timeframe, vendor)``
    normalised as ``Bar`` stores them.

    ``start`` and ``end`` are None (open) or timezone-aware datetimes with start <= end;
    ``limit`` is None or an int >= 1.
    """
    _check_bound("start", start)
    _check_bound("end", end)
    if start is not None and end is not None and start > end:
        raise ConfigError(f"start must be <= end, got start={start!r} after end={end!r}")
    check_limit("limit", limit)
    return check_symbol(symbol), check_timeframe(timeframe), check_vendor(vendor)


def check_limit(name: str, value: Any) -> None:
    """Raise unless ``value`` is None or an int >= 1 (``limit``, ``page_size``)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be None or an integer >= 1, got {value!r}")


def _check_bound(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise ConfigError(f"{name} must be a timezone-aware datetime or None, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(
            f"{name} must be timezone-aware (a naive datetime is not guessed), got {value!r}"
        )


def _check_text(name: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    stripped = value.strip()
    if not 1 <= len(stripped) <= max_length:
        raise ConfigError(f"{name} must be 1 to {max_length} characters, got {value!r}")
    return stripped
