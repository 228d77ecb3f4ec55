"""The Bar model: normalisation and the validation errors it gives."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from market_data_store.sinks import Bar
from market_data_store.sinks.bar import (
    BAR_FIELDS,
    SERIES_FIELDS,
    SYMBOL_MAX_LENGTH,
    TIMEFRAME_MAX_LENGTH,
    VENDOR_MAX_LENGTH,
    bars_from_rows,
    bars_of_series,
    normalise_symbol,
)


def bar_values(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "vendor": "polygon",
        "symbol": "aapl",
        "timeframe": "1m",
        "ts": datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
        "open": 10.0,
        "high": 11.0,
        "low": 9.5,
        "close": 10.5,
        "volume": 1200.0,
    }
    values.update(changes)
    return values


def error_of(**changes: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        Bar(**bar_values(**changes))
    errors = info.value.errors()
    assert len(errors) == 1
    return dict(errors[0])


def test_symbol_is_stripped_and_upper_cased() -> None:
    """A symbol is stored stripped and in upper case."""
    assert Bar(**bar_values(symbol=" msft ")).symbol == "MSFT"


@pytest.mark.parametrize("symbol", ["", "   "])
def test_empty_symbol_is_rejected_naming_the_field(symbol: str) -> None:
    """An empty or blank symbol is rejected and the error names ``symbol``."""
    assert error_of(symbol=symbol)["loc"] == ("symbol",)


def test_naive_timestamp_is_rejected_not_guessed() -> None:
    """A timestamp without a timezone is rejected with an error on ``ts``."""
    error = error_of(ts=datetime(2024, 1, 2, 14, 30))
    assert error["loc"] == ("ts",)
    assert error["type"] == "timezone_aware"


def test_timestamp_is_converted_to_utc() -> None:
    """An aware timestamp in another zone is stored as the same instant in UTC."""
    eastern = timezone(timedelta(hours=-5))
    bar = Bar(**bar_values(ts=datetime(2024, 1, 2, 9, 30, tzinfo=eastern)))
    assert bar.ts == datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    assert bar.ts.utcoffset() == timedelta(0)
    assert bar.ts.tzinfo is UTC


@pytest.mark.parametrize("field", ["open", "high", "low", "close", "volume"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected_naming_the_field(field: str, value: float) -> None:
    """NaN and infinities are rejected in every price and in volume, naming the field."""
    assert error_of(**{field: value})["loc"] == (field,)


def test_low_above_the_body_is_rejected() -> None:
    """low > min(open, close) is rejected with a message that says so."""
    error = error_of(low=10.2)
    assert "low must be <= min(open, close)" in error["msg"]


def test_high_below_the_body_is_rejected() -> None:
    """high < max(open, close) is rejected with a message that says so."""
    error = error_of(high=10.4)
    assert "high must be >= max(open, close)" in error["msg"]


def test_bar_may_touch_its_range() -> None:
    """low == min(open, close) and high == max(open, close) are valid (a flat bar too)."""
    bar = Bar(**bar_values(open=10.0, high=10.0, low=10.0, close=10.0, volume=0.0))
    assert (bar.low, bar.high, bar.volume) == (10.0, 10.0, 0.0)


def test_negative_volume_is_rejected() -> None:
    """volume < 0 is rejected with an error on ``volume``."""
    assert error_of(volume=-1.0)["loc"] == ("volume",)


def test_unknown_field_is_rejected() -> None:
    """A misspelt field is an error, not silently ignored."""
    assert error_of(vol=1.0)["loc"] == ("vol",)


def test_bar_is_frozen() -> None:
    """A bar cannot be changed after construction."""
    bar = Bar(**bar_values())
    with pytest.raises(ValidationError):
        bar.close = 1.0  # type: ignore[misc]


def test_json_form_round_trips() -> None:
    """The JSON form a dead-letter queue stores validates back into an equal bar."""
    bar = Bar(**bar_values())
    assert Bar.model_validate(bar.model_dump(mode="json")) == bar


def test_bars_from_rows_equal_validated_bars() -> None:
    """bars_from_rows builds bars equal to, hashing like and as frozen as validated ones."""
    validated = Bar(**bar_values())
    (built,) = bars_from_rows([tuple(getattr(validated, f) for f in BAR_FIELDS)])
    assert type(built) is Bar
    assert built == validated
    assert hash(built) == hash(validated)
    assert built.model_fields_set == validated.model_fields_set
    assert repr(built) == repr(validated)
    assert built.model_copy(update={"volume": 1.0}) == validated.model_copy(update={"volume": 1.0})
    with pytest.raises(ValidationError):
        built.close = 1.0  # type: ignore[misc]


def test_bars_from_epoch_us_rows_equal_validated_bars() -> None:
    """With ts_epoch_us=True, ts given as epoch microseconds becomes the same UTC instant."""
    validated = Bar(**bar_values(ts=datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=UTC)))
    us = (validated.ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    row = [us if f == "ts" else getattr(validated, f) for f in BAR_FIELDS]
    (built,) = bars_from_rows([row], ts_epoch_us=True)
    assert built == validated
    assert built.ts.tzinfo is UTC


def test_bars_of_series_equal_validated_bars() -> None:
    """bars_of_series fills symbol and timeframe into rows of the other fields, both ts forms."""
    validated = Bar(**bar_values(symbol="AAPL"))
    us = (validated.ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    row = [getattr(validated, f) for f in SERIES_FIELDS]
    assert bars_of_series("AAPL", "1m", [row]) == [validated]
    row[1] = us
    (built,) = bars_of_series("AAPL", "1m", [row], ts_epoch_us=True)
    assert built == validated
    assert hash(built) == hash(validated)


@pytest.mark.parametrize(
    ("symbol", "stored"),
    [
        pytest.param("brk.b", "BRK.B", id="ascii"),
        pytest.param("\uff21\uff21\uff30\uff2c", "AAPL", id="full-width-nfkc"),
        pytest.param("\ufb01x", "FIX", id="ligature-nfkc"),
        pytest.param("sie g", "SIE G", id="inner-space"),
        pytest.param("é", "É", id="accented"),
        pytest.param("A" * SYMBOL_MAX_LENGTH, "A" * SYMBOL_MAX_LENGTH, id="max-length"),
    ],
)
def test_symbols_are_normalised_nfkc_upper(symbol: str, stored: str) -> None:
    """A symbol is stored NFKC-normalised and upper-cased, and normalising is idempotent."""
    assert Bar(**bar_values(symbol=symbol)).symbol == stored
    assert normalise_symbol(stored) == stored


@pytest.mark.parametrize(
    ("symbol", "reason"),
    [
        pytest.param("AA\x00PL", "printable", id="nul"),
        pytest.param("AA\nPL", "printable", id="newline"),
        pytest.param("AA\u200bPL", "printable", id="zero-width-space"),
        pytest.param("A" * (SYMBOL_MAX_LENGTH + 1), "1 to 32", id="too-long"),
        pytest.param("straße", "changes length when upper-cased", id="sharp-s"),
    ],
)
def test_bad_symbols_are_rejected_naming_the_rule(symbol: str, reason: str) -> None:
    """Control or zero-width characters, over-long symbols and length-changing upper-casing
    are rejected with an error on ``symbol`` saying why."""
    error = error_of(symbol=symbol)
    assert error["loc"] == ("symbol",)
    assert reason in error["msg"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vendor", "poly\x00gon"),
        ("vendor", "v" * (VENDOR_MAX_LENGTH + 1)),
        ("timeframe", "1\tm"),
        ("timeframe", "m" * (TIMEFRAME_MAX_LENGTH + 1)),
        ("vendor", ""),
    ],
)
def test_vendor_and_timeframe_are_bounded_and_printable(field: str, value: str) -> None:
    """vendor and timeframe refuse control characters, emptiness and excess length."""
    assert error_of(**{field: value})["loc"] == (field,)


def test_vendor_and_timeframe_keep_their_case() -> None:
    """vendor and timeframe are stripped but otherwise stored as given."""
    bar = Bar(**bar_values(vendor=" Polygon ", timeframe="1Min"))
    assert (bar.vendor, bar.timeframe) == ("Polygon", "1Min")


@pytest.mark.parametrize("enabled", [True, False])
def test_building_bars_restores_the_garbage_collector_state(enabled: bool) -> None:
    """The builders pause the cyclic GC and leave it as they found it, enabled or not."""
    import gc

    row = tuple(getattr(Bar(**bar_values()), f) for f in BAR_FIELDS)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        bars_from_rows([row])
        assert gc.isenabled() is enabled
        bars_of_series("AAPL", "1m", [])
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
