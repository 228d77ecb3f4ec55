"""The read API every bar sink offers (DESIGN section 8), checked on SQLite and PostgreSQL.

``read``, ``iter_bars`` and ``latest`` must give back bars equal to what was written, in
``(ts, vendor)`` order, with exact ``[start, end)`` bounds, and refuse arguments that make
no sense with a ``ConfigError`` naming the argument.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import T0, make_bars

from market_data_store.coordinator.types import ConfigError
from market_data_store.sinks import Bar, PostgresBarsSink, SinkStateError, SqliteBarsSink

BarSink = SqliteBarsSink | PostgresBarsSink
MakeSink = Callable[[str], BarSink]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_sink(request: pytest.FixtureRequest, tmp_path: Path) -> MakeSink:
    """Builds an unopened sink of either kind."""
    if request.param == "sqlite":
        return lambda name: SqliteBarsSink(tmp_path / "bars.db", name=name)
    pytest.importorskip("asyncpg")
    if not hasattr(PostgresBarsSink, "read"):
        pytest.skip("PostgresBarsSink has no read API on this branch yet")
    dsn: str = request.getfixturevalue("pg_dsn")
    return lambda name: PostgresBarsSink(dsn, name=name)


@pytest.fixture
async def sink(make_sink: MakeSink) -> AsyncIterator[BarSink]:
    async with make_sink(f"read-{uuid.uuid4().hex[:8]}") as opened:
        yield opened


def bar(
    symbol: str = "AAPL",
    ts: datetime = T0,
    *,
    vendor: str = "polygon",
    timeframe: str = "1m",
    price: float = 100.0,
    volume: float = 10.0,
) -> Bar:
    return Bar(
        vendor=vendor,
        symbol=symbol,
        timeframe=timeframe,
        ts=ts,
        open=price,
        high=price + 1.5,
        low=price - 0.25,
        close=price + 0.5,
        volume=volume,
    )


def minutes(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def key(b: Bar) -> tuple[datetime, str]:
    return (b.ts, b.vendor)


async def test_every_field_round_trips_across_timezones_and_microseconds(sink: BarSink) -> None:
    """Each field of each bar reads back equal, ts as the same instant in UTC."""
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    written = []
    for i in range(60):
        ts = (T0 + timedelta(seconds=i, microseconds=(i * 123_457) % 1_000_000)).astimezone(
            zones[i % 3]
        )
        price = [0.1, 1e-9, 123456.789012, 3.0][i % 4]
        written.append(
            Bar(
                vendor=["polygon", "iex"][i % 2],
                symbol="aapl",
                timeframe="1m",
                ts=ts,
                open=price,
                high=price * 2,
                low=price / 2,
                close=price,
                volume=[0.0, 1e15, 0.5][i % 3],
            )
        )
    await sink.write(written)
    got = await sink.read("AAPL", "1m")
    assert got == sorted(written, key=key)
    assert [b.model_dump() for b in got] == [b.model_dump() for b in sorted(written, key=key)]
    assert all(b.ts.utcoffset() == timedelta(0) for b in got)
    assert {b.ts.microsecond for b in got} == {b.ts.microsecond for b in written}


async def test_read_bars_are_like_validated_ones(sink: BarSink) -> None:
    """A bar read back is a frozen, hashable Bar that validates to itself."""
    await sink.write([bar()])
    (got,) = await sink.read("AAPL", "1m")
    assert type(got) is Bar
    assert Bar.model_validate(got.model_dump()) == got
    assert hash(got) == hash(bar())
    assert got in {bar()}
    with pytest.raises(ValueError):
        got.close = 1.0  # type: ignore[misc]


async def test_bounds_are_start_inclusive_end_exclusive(sink: BarSink) -> None:
    """read(start, end) returns exactly the bars with start <= ts < end."""
    bars = [bar(ts=minutes(i) + timedelta(microseconds=1)) for i in range(10)]
    await sink.write(bars)
    assert await sink.read("AAPL", "1m", bars[2].ts, bars[5].ts) == bars[2:5]
    one_us = timedelta(microseconds=1)
    assert await sink.read("AAPL", "1m", bars[2].ts + one_us, bars[5].ts + one_us) == bars[3:6]
    assert await sink.read("AAPL", "1m", bars[3].ts, bars[3].ts) == []
    assert await sink.read("AAPL", "1m", start=bars[8].ts) == bars[8:]
    assert await sink.read("AAPL", "1m", end=bars[1].ts) == bars[:1]


async def test_bounds_in_another_timezone_mean_the_same_instant(sink: BarSink) -> None:
    """Bounds given in any timezone select by instant, not by wall-clock time."""
    bars = [bar(ts=minutes(i)) for i in range(6)]
    await sink.write(bars)
    tokyo = timezone(timedelta(hours=9))
    got = await sink.read("AAPL", "1m", minutes(1).astimezone(tokyo), minutes(4).astimezone(tokyo))
    assert got == bars[1:4]


async def test_bars_come_ascending_with_ties_ordered_by_vendor(sink: BarSink) -> None:
    """Bars come in ts order; bars of several vendors at one ts come in vendor order."""
    bars = [bar(ts=minutes(i // 3), vendor=f"v{2 - i % 3}") for i in range(30)]
    shuffled = bars[:]
    random.Random(7).shuffle(shuffled)
    await sink.write(shuffled)
    assert await sink.read("AAPL", "1m") == sorted(bars, key=key)


async def test_only_the_asked_series_is_read(sink: BarSink) -> None:
    """A read returns the bars of its symbol and timeframe only."""
    aapl = [bar(ts=minutes(i)) for i in range(5)]
    await sink.write(
        [*aapl, bar("MSFT"), bar("AAPLX"), bar("AAP"), bar(timeframe="5m"), bar(timeframe="1")]
    )
    assert await sink.read("AAPL", "1m") == aapl


async def test_vendor_filters(sink: BarSink) -> None:
    """vendor= returns that vendor's bars only."""
    bars = [bar(ts=minutes(i // 2), vendor=["iex", "polygon"][i % 2]) for i in range(20)]
    await sink.write(bars)
    assert await sink.read("AAPL", "1m", vendor="iex") == [b for b in bars if b.vendor == "iex"]
    assert await sink.read("AAPL", "1m", vendor="nobody") == []


async def test_limit_keeps_the_first_bars(sink: BarSink) -> None:
    """limit=n returns the first n bars of the range, in order."""
    bars = [bar(ts=minutes(i)) for i in range(20)]
    await sink.write(bars)
    assert await sink.read("AAPL", "1m", limit=7) == bars[:7]
    assert await sink.read("AAPL", "1m", minutes(15), limit=100) == bars[15:]


@pytest.mark.parametrize(("vendor", "limit"), [(None, None), ("v1", None), (None, 61), ("v0", 22)])
async def test_iter_bars_equals_read_over_many_pages(
    sink: BarSink, vendor: str | None, limit: int | None
) -> None:
    """iter_bars yields what read returns, across pages that split bars tied on ts."""
    bars = [bar(ts=minutes(i // 3), vendor=f"v{i % 3}", price=100 + i) for i in range(150)]
    await sink.write(bars)
    start, end = minutes(2), minutes(45)
    expected = await sink.read("AAPL", "1m", start, end, vendor=vendor, limit=limit)
    pages = sink.iter_bars("AAPL", "1m", start, end, vendor=vendor, limit=limit, page_size=7)
    got = [b async for b in pages]
    assert len(expected) > 7
    assert got == expected


async def test_iter_bars_ends_on_an_exact_page_boundary(sink: BarSink) -> None:
    """A range of exactly two pages yields each bar once and stops."""
    bars = [bar(ts=minutes(i)) for i in range(10)]
    await sink.write(bars)
    assert [b async for b in sink.iter_bars("AAPL", "1m", page_size=5)] == bars


async def test_latest_returns_the_newest_bar_of_each_symbol(sink: BarSink) -> None:
    """latest() maps each symbol to its newest bar and omits symbols without one."""
    bars = make_bars(40, symbols=4, vendor="polygon")
    await sink.write([*bars, bar("AAPL", minutes(-5)), bar("MSFT", minutes(100))])
    await sink.write([bar("AAPL", minutes(50)), bar("AAPL", minutes(3), timeframe="5m")])
    got = await sink.latest(["AAPL", "MSFT", "NOPE", "SYM1"], "1m")
    assert got == {
        "AAPL": bar("AAPL", minutes(50)),
        "MSFT": bar("MSFT", minutes(100)),
        "SYM1": max((b for b in bars if b.symbol == "SYM1"), key=key),
    }


async def test_latest_filters_by_vendor_and_breaks_ties_like_read(sink: BarSink) -> None:
    """latest(vendor=) keeps that vendor; without it, the bar read() would return last."""
    await sink.write([bar(vendor="a", ts=minutes(9)), bar(vendor="b", ts=minutes(9))])
    await sink.write([bar(vendor="a", ts=minutes(10)), bar(vendor="c", ts=minutes(1))])
    assert (await sink.latest(["AAPL"], "1m", vendor="c"))["AAPL"] == bar(vendor="c", ts=minutes(1))
    await sink.write([bar(vendor="b", ts=minutes(10))])
    newest = await sink.latest(["AAPL"], "1m")
    assert newest["AAPL"] == bar(vendor="b", ts=minutes(10))
    assert newest["AAPL"] == (await sink.read("AAPL", "1m"))[-1]


async def test_symbols_are_normalised_as_bar_does(sink: BarSink) -> None:
    """' aapl ' reads the bars stored as AAPL, in read, iter_bars and latest."""
    await sink.write([bar("AAPL")])
    assert await sink.read(" aapl ", "1m") == [bar("AAPL")]
    assert [b async for b in sink.iter_bars("aapl", "1m")] == [bar("AAPL")]
    assert await sink.latest([" aapl"], "1m") == {"AAPL": bar("AAPL")}


async def test_an_empty_store_reads_nothing(sink: BarSink) -> None:
    """Reading a store without matching bars returns [] / {} rather than failing."""
    assert await sink.read("AAPL", "1m") == []
    assert [b async for b in sink.iter_bars("AAPL", "1m")] == []
    assert await sink.latest(["AAPL"], "1m") == {}
    assert await sink.latest([], "1m") == {}


NAIVE = datetime(2024, 1, 2, 14, 30)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            {"start": minutes(5), "end": minutes(1)}, "start must be <= end", id="start>end"
        ),
        pytest.param({"start": NAIVE}, "start must be timezone-aware", id="naive-start"),
        pytest.param({"end": NAIVE}, "end must be timezone-aware", id="naive-end"),
        pytest.param({"start": "2024-01-02"}, "start must be a timezone-aware", id="str-start"),
        pytest.param({"limit": 0}, "limit must be None or an integer >= 1", id="limit-0"),
        pytest.param({"limit": -3}, "limit must be", id="limit-negative"),
        pytest.param({"limit": 2.5}, "limit must be", id="limit-float"),
        pytest.param({"symbol": ""}, "symbol", id="empty-symbol"),
        pytest.param({"symbol": "A" * 40}, "symbol must be 1 to 32", id="long-symbol"),
        pytest.param({"symbol": "AA\x00PL"}, "symbol", id="nul-symbol"),
        pytest.param({"timeframe": " "}, "timeframe must be 1 to", id="blank-timeframe"),
        pytest.param({"vendor": ""}, "vendor must be 1 to", id="empty-vendor"),
    ],
)
async def test_bad_read_arguments_raise_naming_the_argument(
    sink: BarSink, kwargs: dict[str, Any], match: str
) -> None:
    """read() and iter_bars() refuse nonsensical arguments at the call, naming them."""
    args: dict[str, Any] = {"symbol": "AAPL", "timeframe": "1m", **kwargs}
    with pytest.raises(ConfigError, match=match):
        await sink.read(**args)
    with pytest.raises(ConfigError, match=match):
        sink.iter_bars(**args)


async def test_bad_page_size_and_latest_arguments_raise(sink: BarSink) -> None:
    """page_size < 1, a bare string of symbols or a bad symbol in latest() raise ConfigError."""
    with pytest.raises(ConfigError, match="page_size"):
        sink.iter_bars("AAPL", "1m", page_size=0)
    with pytest.raises(ConfigError, match="symbols must be an iterable"):
        await sink.latest("AAPL", "1m")
    with pytest.raises(ConfigError, match="symbols"):
        await sink.latest(["AAPL", ""], "1m")
    with pytest.raises(ConfigError, match="timeframe"):
        await sink.latest(["AAPL"], "")


async def test_reads_need_an_open_sink(make_sink: MakeSink) -> None:
    """Reading before open() or after close() raises SinkStateError."""
    sink = make_sink("read-lifecycle")
    with pytest.raises(SinkStateError, match="not open yet"):
        await sink.read("AAPL", "1m")
    async with sink:
        pass
    with pytest.raises(SinkStateError, match="closed"):
        await sink.latest(["AAPL"], "1m")
    with pytest.raises(SinkStateError, match="closed"):
        [b async for b in sink.iter_bars("AAPL", "1m")]
