"""Base of the library's settings classes: pydantic's errors become one ``ConfigError``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from market_data_store.errors import ConfigError


class MdsSettings(BaseSettings):
    """Turns pydantic's validation errors into one ``ConfigError`` naming the variables."""

    _prefix: ClassVar[str] = "MDS_"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = [str(part) for part in err["loc"] if part != "__root__"]
                name = f"{type(self)._prefix}{loc[0].upper()}" if loc else type(self).__name__
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {msg} (got {err.get('input')!r})" if loc else msg)
            raise ConfigError(f"invalid {type(self).__name__}: " + "; ".join(problems)) from None
