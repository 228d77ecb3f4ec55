"""``Bar``: one OHLCV bar, validated once at construction and immutable afterwards."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

NonEmptyStr = Annotated[str, Field(min_length=1)]
Price = Annotated[float, Field(allow_inf_nan=False)]

BAR_FIELDS = ("vendor", "symbol", "timeframe", "ts", "open", "high", "low", "close", "volume")
"""Field order: the column order of every sink's table."""


class Bar(BaseModel):
    """One OHLCV bar of ``symbol`` from ``vendor`` for the ``timeframe`` starting at ``ts``.

    ``symbol`` is stripped and upper-cased; ``ts`` must carry a timezone (a naive timestamp is
    rejected, not guessed) and is stored in UTC; prices are finite with
    ``low <= min(open, close)`` and ``max(open, close) <= high``; ``volume >= 0``.
    A ``ValidationError`` names the field and the reason.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    vendor: NonEmptyStr
    symbol: NonEmptyStr
    timeframe: NonEmptyStr
    ts: AwareDatetime
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    @field_validator("symbol")
    @classmethod
    def _upper_symbol(cls, value: str) -> str:
        return value.upper()

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
