"""The public face of market_data_store.sinks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import market_data_store.sinks as sinks


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted, names only things that exist, and misses no public name."""
    assert sinks.__all__ == sorted(sinks.__all__)
    assert all(hasattr(sinks, name) for name in sinks.__all__)
    public = {
        name
        for name, value in vars(sinks).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(sinks.__all__)
    assert {"Bar", "PostgresBarsSink", "SqliteBarsSink"} <= public


def test_the_package_imports_without_asyncpg() -> None:
    """Without asyncpg the package imports; PostgresBarsSink.open() names the extra."""
    script = textwrap.dedent(
        """
        import asyncio, sys, tempfile, os
        sys.modules["asyncpg"] = None  # makes "import asyncpg" raise ImportError
        from market_data_store.sinks import PostgresBarsSink, SqliteBarsSink

        async def main():
            with tempfile.TemporaryDirectory() as folder:
                async with SqliteBarsSink(os.path.join(folder, "b.db")) as sink:
                    assert await sink.count() == 0
            try:
                await PostgresBarsSink("postgresql://127.0.0.1:1/x").open()
            except ImportError as exc:
                print("ImportError:", exc)

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "market-data-store-asyncio[postgres]" in result.stdout
