"""Base of the library's settings classes: pydantic's errors become one ``ConfigError``, and
an ``MDS_*`` variable no settings class knows (a typo, a guessed name) is reported once with
an ``UnknownSettingWarning`` instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from market_data_store.errors import ConfigError

PREFIX = "MDS_"
# Variables of this prefix that the library reads outside the settings classes.
READ_ELSEWHERE = frozenset({"MDS_REQUIRE_POSTGRES", "MDS_REQUIRE_REDIS"})

_warned: set[str] = set()  # unknown names already reported in this process


class UnknownSettingWarning(UserWarning):
    """An ``MDS_*`` variable (environment or ``.env``) that no settings class reads."""


class MdsSettings(BaseSettings):
    """Turns pydantic's validation errors into one ``ConfigError`` naming the variables.

    Before reading, warns once per process about every ``MDS_*`` variable of the environment
    or the ``.env`` file that is not a field of any settings class (with a "did you mean").
    """

    def __init__(self, **values: Any) -> None:
        env_file = values.get("_env_file", type(self).model_config.get("env_file"))
        warn_unknown_variables(env_file)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = [str(part) for part in err["loc"] if part != "__root__"]
                name = f"{_env_prefix(type(self))}{loc[0].upper()}" if loc else type(self).__name__
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {msg} (got {err.get('input')!r})" if loc else msg)
            raise ConfigError(f"invalid {type(self).__name__}: " + "; ".join(problems)) from None


def _settings_classes(base: type[MdsSettings] = MdsSettings) -> Iterator[type[MdsSettings]]:
    for cls in base.__subclasses__():
        yield cls
        yield from _settings_classes(cls)


def _env_prefix(cls: type[MdsSettings]) -> str:
    return str(cls.model_config.get("env_prefix", "")).upper()


def known_variables() -> frozenset[str]:
    """Every variable name the settings classes read (prefix + field name, upper case)."""
    names = set(READ_ELSEWHERE)
    for cls in _settings_classes():
        prefix = _env_prefix(cls)
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            # pydantic-settings reads an aliased field by its alias, without the prefix.
            names.add(alias.upper() if isinstance(alias, str) else f"{prefix}{field_name.upper()}")
    return frozenset(names)


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` most likely meant, or None when nothing is close."""
    candidates = sorted(known)
    words = set(name.split("_"))
    # A name whose words all appear in a known one (WEBHOOK_URL in FEEDBACK_WEBHOOK_URL) is
    # a shortened guess: that beats a mere spelling neighbour (WEBHOOK_SECRET).
    covering = [k for k in candidates if words <= set(k.split("_"))]
    pool = covering or candidates
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.0 if covering else 0.6)
    return close[0] if close else None


def _dotenv_names(env_file: Any) -> Iterator[str]:
    files = env_file if isinstance(env_file, list | tuple) else [env_file]
    for path in files:
        if path is not None and Path(path).is_file():
            yield from dotenv_values(path, interpolate=False)  # names only: expand nothing


def warn_unknown_variables(env_file: Any = ".env") -> None:
    """Warn (``UnknownSettingWarning``) once per unknown ``MDS_*`` name in env or ``env_file``.

    Only names with the ``MDS_`` prefix are looked at; their values are never read.
    """
    sources = [("environment", os.environ), (".env", _dotenv_names(env_file))]
    known: frozenset[str] | None = None
    for source, names in sources:
        for raw in names:
            name = raw.upper()
            if not name.startswith(PREFIX) or name in _warned:
                continue
            known = known if known is not None else known_variables()
            if name in known:
                continue
            _warned.add(name)
            guess = suggest(name, known)
            hint = f"; did you mean {guess}?" if guess else ""
            warnings.warn(
                f"{raw} ({source}) is not a market_data_store setting and is ignored{hint}",
                UnknownSettingWarning,
                stacklevel=3,  # the caller constructing the settings
            )
