"""The sinks' read API, shared by SQLite and PostgreSQL: argument checks and paging.

``BarReads`` gives a sink ``read``, ``iter_bars`` and ``latest``; the sink supplies only its
two queries. Each check raises ``ConfigError`` (a ``ValueError``) naming the argument and
what it allows, before any database work, so a mistake never reads as "no bars".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

from market_data_store.coordinator.types import ConfigError
from market_data_store.sinks.bar import (
    TIMEFRAME_MAX_LENGTH,
    VENDOR_MAX_LENGTH,
    Bar,
    normalise_symbol,
)

DEFAULT_PAGE_SIZE = 10_000
"""Bars per query of ``iter_bars``: what one page holds in memory."""

PageKey = tuple[datetime, str]
"""``(ts, vendor)`` of the last bar of a page: the next page starts after it."""


class BarReads:
    """``read``, ``iter_bars`` and ``latest`` around a sink's ``_read_range`` and
    ``_read_latest`` queries."""

    async def read(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        vendor: str | None = None,
        limit: int | None = None,
    ) -> list[Bar]:
        """The bars of ``symbol`` and ``timeframe`` with ``start <= ts < end``, ascending.

        ``start``/``end`` None leave that side open; ``vendor=None`` reads every vendor, ties
        on ``ts`` ordered by vendor; ``limit`` keeps the first ``limit`` bars. ``symbol`` is
        normalised as ``Bar`` does. Raises ``ConfigError`` for arguments that make no sense
        (start after end, a naive datetime, limit < 1).
        """
        symbol, timeframe, vendor = check_read_args(
            symbol, timeframe, start, end, vendor=vendor, limit=limit
        )
        return await self._read_range(symbol, timeframe, start, end, vendor, None, limit)

    def iter_bars(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        vendor: str | None = None,
        limit: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Bar]:
        """The bars ``read`` returns, as an async iterator fetching ``page_size`` at a time.

        Memory stays bounded by one page. Each page starts after the last ``(ts, vendor)``
        seen, so a bar never appears twice, whatever is written meanwhile. Arguments are
        checked here, when called, not at the first iteration.
        """
        check_limit("page_size", page_size)
        symbol, timeframe, vendor = check_read_args(
            symbol, timeframe, start, end, vendor=vendor, limit=limit
        )
        return self._pages(symbol, timeframe, start, end, vendor, limit, page_size)

    async def latest(
        self, symbols: Iterable[str], timeframe: str, *, vendor: str | None = None
    ) -> dict[str, Bar]:
        """The newest bar of each symbol (normalised as ``Bar`` does) for ``timeframe``.

        Symbols without a bar are left out. With ``vendor=None`` the newest bar of any
        vendor; of vendors tied on ``ts``, the one ``read`` returns last.
        """
        wanted = check_symbols(symbols)
        frame, source = check_timeframe(timeframe), check_vendor(vendor)
        return await self._read_latest(wanted, frame, source)

    async def _read_range(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None,
        end: datetime | None,
        vendor: str | None,
        after: PageKey | None,
        limit: int | None,
    ) -> list[Bar]:
        """The series' bars in ``(ts, vendor)`` order within the checked bounds, after
        ``after`` when given, at most ``limit``."""
        raise NotImplementedError

    async def _read_latest(
        self, symbols: list[str], timeframe: str, vendor: str | None
    ) -> dict[str, Bar]:
        """``latest`` for checked, distinct symbols (possibly none)."""
        raise NotImplementedError

    async def _pages(
        self,
        symbol: str,
        timeframe: str,
        start: datetime | None,
        end: datetime | None,
        vendor: str | None,
        limit: int | None,
        page_size: int,
    ) -> AsyncIterator[Bar]:
        after: PageKey | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            wanted = page_size if remaining is None else min(page_size, remaining)
            page = await self._read_range(symbol, timeframe, start, end, vendor, after, wanted)
            for bar in page:
                yield bar
            if len(page) < wanted:
                return
            if remaining is not None:
                remaining -= len(page)
            after = (page[-1].ts, page[-1].vendor)


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
