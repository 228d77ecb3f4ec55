"""Argument checks shared by every constructor: one error naming the argument and its range."""

from __future__ import annotations

import math

from market_data_store.errors import ConfigError


def check_range(
    name: str,
    value: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ``ConfigError`` naming ``name`` and its allowed range unless lo <= value <= hi.

    ``value`` must be a real number (``bool`` is not one); NaN and infinities are rejected
    whatever the bounds, since a NaN compares false to everything and would slip past them.
    """
    left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number satisfying {left}{name}{right}, got {value!r}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        raise ConfigError(f"{name} must satisfy {left}{name}{right}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(
            f"{name} must be a finite number satisfying {left}{name}{right}, got {value!r}"
        )


def check_int(
    name: str,
    value: object,
    *,
    lo: int | None = None,
    hi: int | None = None,
    lo_open: bool = False,
) -> None:
    """Raise ``ConfigError`` naming ``name`` unless ``value`` is an int (not a ``bool``)
    within the range that ``check_range`` checks."""
    if isinstance(value, bool) or not isinstance(value, int):
        left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        right = "" if hi is None else f" <= {hi}"
        raise ConfigError(f"{name} must be an int satisfying {left}{name}{right}, got {value!r}")
    check_range(name, value, lo=lo, hi=hi, lo_open=lo_open)
