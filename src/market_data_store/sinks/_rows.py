"""Turning a batch into database rows: a fast path for ``Bar`` objects, a checked path for
anything else (e.g. the JSON dicts a dead-letter replay yields)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from market_data_store.coordinator.types import PermanentSinkError
from market_data_store.sinks.bar import Bar

RowT = TypeVar("RowT")

# What the fast path may raise on an item that is not a valid Bar (a dict, a naive ts...).
CONVERSION_ERRORS = (AttributeError, TypeError, ValueError, OverflowError)


def rows_of(
    batch: Sequence[Any],
    fast: Callable[[Sequence[Any]], list[RowT]],
    row_of: Callable[[Bar], RowT],
) -> list[RowT]:
    """``fast(batch)``, or when that fails, each item validated as a ``Bar`` and converted.

    Raises ``PermanentSinkError`` naming the first item that is not a valid bar.
    """
    try:
        return fast(batch)
    except CONVERSION_ERRORS:
        return checked_rows(batch, row_of)


def checked_rows(batch: Sequence[Any], row_of: Callable[[Bar], RowT]) -> list[RowT]:
    """Each item validated as a ``Bar`` (a ``Bar`` is taken as it is) and converted.

    Raises ``PermanentSinkError`` naming the first item that is not a valid bar.
    """
    return [_checked_row(index, item, row_of) for index, item in enumerate(batch)]


def _checked_row(index: int, item: Any, row_of: Callable[[Bar], RowT]) -> RowT:
    try:
        bar = item if isinstance(item, Bar) else Bar.model_validate(item)
        return row_of(bar)
    except ValidationError as exc:
        raise PermanentSinkError(f"item {index} of the batch is not a valid bar: {exc}") from exc
    except CONVERSION_ERRORS as exc:
        raise PermanentSinkError(
            f"item {index} of the batch is not a valid bar: {type(exc).__name__}: {exc}"
        ) from exc
