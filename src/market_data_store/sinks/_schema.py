"""Schema versions of the bar sinks' databases: what a sink does with an older or newer one."""

from __future__ import annotations

from market_data_store.errors import SchemaVersionError

__all__ = ["SchemaVersionError", "check_schema_version"]


def check_schema_version(found: int, supported: int, where: str) -> None:
    """Raise ``SchemaVersionError`` if ``found`` is newer than the ``supported`` version."""
    if found > supported:
        raise SchemaVersionError(
            f"{where} has schema version {found}, newer than version {supported} that this "
            "release of market-data-store reads: upgrade market-data-store to open it"
        )
