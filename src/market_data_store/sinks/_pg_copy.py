"""Bars encoded as one PostgreSQL binary COPY payload, without asyncpg's per-value encoders.

A batch of a live feed repeats itself: 500 bars of 50 symbols hold 50 distinct
``(vendor, symbol, timeframe)`` triples and 10 distinct timestamps. Their encodings are
computed once per batch and reused, so a row costs a tuple unpack, two dict lookups and one
``struct.pack`` of its five prices. Format: PostgreSQL's "COPY ... FORMAT binary" (header,
one 16-bit field count and length-prefixed big-endian values per row, trailer); text is
UTF-8, timestamptz is int64 microseconds since 2000-01-01 UTC, double precision is IEEE 754.

The server still checks every value (encoding, NUL bytes, the table's CHECK constraints);
what cannot be encoded here raises ``ValueError``, ``TypeError`` or ``OverflowError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from market_data_store.sinks.bar import BAR_FIELDS

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

_field_count = struct.pack(">h", len(BAR_FIELDS))
_length = struct.Struct(">i").pack
_timestamp = struct.Struct(">iq").pack
_prices = struct.Struct(">ididididid").pack
_bar_values = attrgetter(*BAR_FIELDS)


def copy_payload(batch: Sequence[Any]) -> bytes:
    """The binary COPY data of ``batch`` (``Bar`` objects), columns in ``BAR_FIELDS`` order.

    Raises ``ValueError`` for a naive ``ts`` (only a bar built without validation has one),
    which the server would otherwise read as UTC, and for text that is not valid UTF-8.
    """
    try:
        return _encode(batch)
    except struct.error as exc:  # a price that is not a number
        raise TypeError(f"a price is not a number: {exc}") from exc


def _encode(batch: Sequence[Any]) -> bytes:
    series: dict[tuple[str, str, str], bytes] = {}
    stamps: dict[datetime, bytes] = {}
    parts = [HEADER]
    append = parts.append
    for vendor, symbol, timeframe, ts, open_, high, low, close, volume in map(_bar_values, batch):
        key = (vendor, symbol, timeframe)
        prefix = series.get(key)
        if prefix is None:
            prefix = series[key] = _field_count + _text(vendor) + _text(symbol) + _text(timeframe)
        stamp = stamps.get(ts)
        if stamp is None:
            stamp = stamps[ts] = _timestamptz(ts)
        append(prefix)
        append(stamp)
        append(_prices(8, open_, 8, high, 8, low, 8, close, 8, volume))
    append(TRAILER)
    return b"".join(parts)


def _text(value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}: {value!r}")
    data = value.encode()
    return _length(len(data)) + data


def _timestamptz(ts: datetime) -> bytes:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"ts has no timezone: {ts!r}")
    return _timestamp(8, (ts - PG_EPOCH) // ONE_MICROSECOND)
