"""``Bar``: one OHLCV bar, validated once at construction and immutable afterwards."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from market_data_store.sinks._gc import gc_paused

SYMBOL_MAX_LENGTH = 32
VENDOR_MAX_LENGTH = 64
TIMEFRAME_MAX_LENGTH = 16

Price = Annotated[float, Field(allow_inf_nan=False)]

BAR_FIELDS = ("vendor", "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume")
"""Field order: the column order of every sink's table."""


def check_printable(name: str, value: str) -> str:
    """``value`` unchanged, or ``ValueError`` naming ``name`` if it holds a non-printable char.

    Printable as ``str.isprintable`` says: no control (NUL, newline...), format (zero-width),
    surrogate, private-use or unassigned code point, no separator but the ASCII space.
    """
    if not value.isprintable():
        raise ValueError(f"{name} must hold printable characters only, got {value!r}")
    return value


def normalise_symbol(value: str) -> str:
    """The stored form of a symbol: stripped, NFKC-normalised, upper-cased.

    Raises ``ValueError`` for a symbol that is empty, longer than ``SYMBOL_MAX_LENGTH``,
    holds a non-printable character, or changes length when upper-cased (``ß`` -> ``SS``
    would make two different symbols one).
    """
    stripped = value.strip()
    if stripped.isascii():  # the common case: NFKC and upper() keep ASCII's length
        folded = upper = stripped.upper()
    else:
        folded = unicodedata.normalize("NFKC", stripped)
        upper = unicodedata.normalize("NFKC", folded.upper())
    if not 1 <= len(upper) <= SYMBOL_MAX_LENGTH:
        raise ValueError(
            f"symbol must be 1 to {SYMBOL_MAX_LENGTH} characters after stripping, got {value!r}"
        )
    check_printable("symbol", upper)
    if len(upper) != len(folded):
        raise ValueError(
            f"symbol {value!r} changes length when upper-cased ({upper!r}): spell it in upper case"
        )
    return upper


class Bar(BaseModel):
    """One OHLCV bar of ``symbol`` from ``vendor`` for the ``timeframe`` starting at ``ts``.

    ``ts`` must carry a timezone (a naive timestamp is rejected, not guessed) and is stored in
    UTC; prices are finite with ``low <= min(open, close)`` and ``max(open, close) <= high``;
    ``volume >= 0``. A ``ValidationError`` names the field and the reason.

    Strings: every string is stripped and must hold printable characters only (no NUL, no
    control or zero-width characters; see ``check_printable``). ``vendor`` is 1 to 64
    characters and ``timeframe`` 1 to 16, both kept as given. ``symbol`` is normalised by
    ``normalise_symbol``: NFKC-normalised (a full-width AAPL is AAPL) and
    upper-cased, 1 to 32 characters; a symbol whose upper-case form has another length
    (``ß`` -> ``SS``) is rejected rather than merged with a different symbol.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    vendor: Annotated[str, Field(min_length=1, max_length=VENDOR_MAX_LENGTH)]
    symbol: str
    timeframe: Annotated[str, Field(min_length=1, max_length=TIMEFRAME_MAX_LENGTH)]
    ts: AwareDatetime
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @field_validator("vendor", "timeframe")
    @classmethod
    def _printable(cls, value: str, info: ValidationInfo) -> str:
        return check_printable(info.field_name or "string", value)

    @field_validator("symbol")
    @classmethod
    def _normalise_symbol(cls, value: str) -> str:
        return normalise_symbol(value)

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo is UTC else value.astimezone(UTC)

    @model_validator(mode="after")
    def _check_price_range(self) -> Bar:
        body_low, body_high = min(self.open, self.close), max(self.open, self.close)
        if self.low > body_low:
            raise ValueError(
                f"low must be <= min(open, close): low={self.low}, open={self.open}, "
                f"close={self.close}"
            )
        if self.high < body_high:
            raise ValueError(
                f"high must be >= max(open, close): high={self.high}, open={self.open}, "
                f"close={self.close}"
            )
        return self


_new_bar = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

SERIES_FIELDS = ("vendor", "ts", "open", "high", "low", "close", "volume")
"""Row layout of ``bars_of_series``: ``BAR_FIELDS`` without symbol and timeframe."""


def bars_from_rows(rows: Iterable[Sequence[Any]], *, ts_epoch_us: bool = False) -> list[Bar]:
    """Bars from trusted database rows, without validating them again.

    Each row holds the values in ``BAR_FIELDS`` order with ``ts`` a timezone-aware UTC
    ``datetime`` (or, with ``ts_epoch_us=True``, integer microseconds since the Unix epoch):
    only rows a sink wrote from valid bars qualify. The bars are equal to, hash like and are
    as frozen as validated ones; building them skips pydantic (about 3x faster than
    ``Bar.model_construct``), which is where a read spends its time. Like
    ``model_construct(_fields_set=...)``, the bars of one call share one fields-set object
    (every field is set): one allocation less per bar.
    """
    with gc_paused():
        return _bars(rows, ts_epoch_us)


def bars_of_series(
    symbol: str, timeframe: str, rows: Iterable[Sequence[Any]], *, ts_epoch_us: bool = False
) -> list[Bar]:
    """Bars of one series from trusted rows in ``SERIES_FIELDS`` order, not validated again.

    For a read by symbol and timeframe: the database need not return those two strings for
    every row (a third less to fetch), and every bar shares the caller's string objects.
    ``symbol``, ``timeframe`` and the rows must be as a sink stored them (see
    ``bars_from_rows``).
    """
    with gc_paused():
        return _bars(rows, ts_epoch_us, symbol, timeframe)


def _bars(
    rows: Iterable[Sequence[Any]],
    ts_epoch_us: bool,
    series_symbol: str | None = None,
    series_timeframe: str | None = None,
) -> list[Bar]:
    """Bars from rows in ``BAR_FIELDS`` order, or in ``SERIES_FIELDS`` order when the
    series' symbol and timeframe are given."""
    # One loop serves both layouts: the branch per row costs nothing measurable, where a
    # helper called per bar would.
    # Locals, not globals, in the loop: it runs once per bar.
    new, cls, set_dict = _new_bar, Bar, _set_dict
    set_fields_set, set_extra, set_private = _set_fields_set, _set_extra, _set_private
    epoch, one_us = EPOCH, ONE_MICROSECOND
    fields_set = set(BAR_FIELDS)
    of_series = series_symbol is not None
    symbol, timeframe = series_symbol, series_timeframe
    bars: list[Bar] = []
    append = bars.append
    for row in rows:
        if of_series:
            vendor, ts, open_, high, low, close, volume = row
        else:
            vendor, symbol, timeframe, ts, open_, high, low, close, volume = row
        bar = new(cls)
        set_dict(
            bar,
            {
                "vendor": vendor,
                "symbol": symbol,
                "timeframe": timeframe,
                "ts": epoch + ts * one_us if ts_epoch_us else ts,
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
            },
        )
        set_fields_set(bar, fields_set)
        set_extra(bar, None)
        set_private(bar, None)
        append(bar)
    return bars
