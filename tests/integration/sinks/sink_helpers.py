"""Building bars and reading tables back, for the sink tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from market_data_store.sinks import Bar
from market_data_store.testing.waits import wait_until  # noqa: F401 (re-exported)

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def make_bars(
    n: int, *, start: datetime = T0, symbols: int = 5, vendor: str = "test", offset: int = 0
) -> list[Bar]:
    """``n`` valid one-minute bars over ``symbols`` symbols, distinct keys, varied prices."""
    bars = []
    for i in range(offset, offset + n):
        o = 100.0 + (i % 17)
        c = o + ((i % 5) - 2) * 0.25
        bars.append(
            Bar(
                vendor=vendor,
                symbol=f"SYM{i % symbols}",
                timeframe="1m",
                ts=start + timedelta(minutes=i // symbols, microseconds=i % 7),
                open=o,
                high=max(o, c) + 0.5,
                low=min(o, c) - 0.5,
                close=c,
                volume=float(i * 10),
            )
        )
    return bars


def invalid_bar(**changes: object) -> Bar:
    """A Bar built without validation (as only ``model_construct`` can), with ``changes``."""
    values = dict(make_bars(1, offset=10_000)[0].__dict__)
    values.update(changes)
    return Bar.model_construct(**values)
