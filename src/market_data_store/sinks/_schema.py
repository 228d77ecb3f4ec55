"""Schema versions of the bar sinks' databases: what a sink does with an older or newer one."""

from __future__ import annotations

from market_data_store.coordinator.types import MarketDataStoreError


class SchemaVersionError(MarketDataStoreError, RuntimeError):
    """The database was written by a newer release of this library than the one opening it.

    Opening it could lose or misread data, so the sink refuses; upgrade the library.
    """


def check_schema_version(found: int, supported: int, where: str) -> None:
    """Raise ``SchemaVersionError`` if ``found`` is newer than the ``supported`` version."""
    if found > supported:
        raise SchemaVersionError(
            f"{where} has schema version {found}, newer than version {supported} that this "
            "release of market-data-store reads: upgrade market-data-store to open it"
        )
