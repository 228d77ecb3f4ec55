"""Bars through a WriteCoordinator into SQLite and PostgreSQL, against a bare bulk write.

For each sink: N bars submitted with ``submit_many`` and drained by ``stop()``, timed from
the first submit to the end of the drain, against the bare bulk write of the same rows
without the coordinator, measured in the same run: ``executemany`` of the upsert in one
transaction (SQLite), one binary ``COPY`` (PostgreSQL). The bare rows are built before the
clock starts, so the ratio also charges the sink's per-row conversion. Each figure is the
median of ``--repeat`` runs, each into a fresh database. Budgets (DESIGN.md section 7):
>= 100,000 bars/s and >= 0.6x of bare, for each sink.

PostgreSQL is a throwaway server started here (market_data_store.testing.postgres), with
fsync off; without PostgreSQL binaries that part is skipped.

    python benchmarks/bench_sinks.py [--bars 200000] [--repeat 3] [--batch-size 5000]
        [--workers 2] [--only sqlite|postgres] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from market_data_store.coordinator import WriteCoordinator
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink
from market_data_store.sinks import postgres as pg_sink
from market_data_store.sinks import sqlite as sqlite_sink
from market_data_store.testing.postgres import PostgresServer, PostgresUnavailableError

TARGET_BARS_PER_SEC = 100_000
TARGET_RATIO = 0.6


def make_bars(n: int, symbols: int = 50) -> list[Bar]:
    """``n`` one-minute bars across ``symbols`` symbols, interleaved as a live feed sends them."""
    t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    bars = []
    for i in range(n):
        o = 100.0 + (i % 17)
        c = o + ((i % 5) - 2) * 0.25
        bars.append(
            Bar(
                vendor="bench",
                symbol=f"SYM{i % symbols:03d}",
                timeframe="1m",
                ts=t0 + timedelta(minutes=i // symbols),
                open=o,
                high=max(o, c) + 0.5,
                low=min(o, c) - 0.5,
                close=c,
                volume=float(i),
            )
        )
    return bars


async def through_coordinator(sink: Any, bars: list[Bar], args: argparse.Namespace) -> float:
    """Seconds from the first submit to the end of the drain."""
    coord: WriteCoordinator[Bar] = WriteCoordinator(
        sink=sink,
        capacity=args.capacity,
        workers=args.workers,
        batch_size=args.batch_size,
        flush_interval=0.05,
    )
    await coord.start()
    started = time.perf_counter()
    await coord.submit_many(bars)
    await coord.stop(drain=True, timeout=300)
    elapsed = time.perf_counter() - started
    stats = coord.stats()
    if stats.written != len(bars):
        raise RuntimeError(f"coordinator wrote {stats.written} of {len(bars)} bars: {stats}")
    return elapsed


# -- SQLite --------------------------------------------------------------------------------


def sqlite_bare(path: Path, bars: list[Bar]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(sqlite_sink.SCHEMA)
        rows = sqlite_sink.sqlite_rows(bars)
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sqlite_sink.UPSERT, rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        assert conn.execute("SELECT count(*) FROM bars").fetchone()[0] == len(bars)
        return elapsed
    finally:
        conn.close()


async def sqlite_coordinated(path: Path, bars: list[Bar], args: argparse.Namespace) -> float:
    async with SqliteBarsSink(path) as sink:
        elapsed = await through_coordinator(sink, bars, args)
        assert await sink.count() == len(bars)
    return elapsed


def bench_sqlite(bars: list[Bar], args: argparse.Namespace) -> list[bool]:
    folder = Path(tempfile.mkdtemp(prefix="mds-bench-sqlite-"))
    try:
        bare = median(args.repeat, lambda: sqlite_bare(folder / f"{uuid.uuid4().hex}.db", bars))
        coordinated = median_async(
            args.repeat, lambda: sqlite_coordinated(folder / f"{uuid.uuid4().hex}.db", bars, args)
        )
        if args.profile:
            profile(lambda: sqlite_coordinated(folder / "profile.db", bars, args))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report("SQLite", "executemany", len(bars), bare, coordinated)


# -- PostgreSQL ----------------------------------------------------------------------------


async def fresh_database(server: PostgresServer) -> str:
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.dsn_for(name)


async def postgres_bare(server: PostgresServer, bars: list[Bar]) -> float:
    import asyncpg

    conn = await asyncpg.connect(await fresh_database(server))
    try:
        await conn.execute(pg_sink.SCHEMA)
        rows = pg_sink.pg_rows(bars)
        started = time.perf_counter()
        await conn.copy_records_to_table("bars", records=rows, columns=pg_sink.BAR_FIELDS)
        elapsed = time.perf_counter() - started
        assert await conn.fetchval("SELECT count(*) FROM bars") == len(bars)
        return elapsed
    finally:
        await conn.close()


async def postgres_coordinated(
    server: PostgresServer, bars: list[Bar], args: argparse.Namespace
) -> float:
    dsn = await fresh_database(server)
    async with PostgresBarsSink(dsn, min_size=args.workers, max_size=args.workers) as sink:
        elapsed = await through_coordinator(sink, bars, args)
        assert await sink.count() == len(bars)
    return elapsed


def bench_postgres(bars: list[Bar], args: argparse.Namespace) -> list[bool]:
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailableError as exc:
        print(f"PostgreSQL: skipped ({exc})")
        return []
    try:
        bare = median_async(args.repeat, lambda: postgres_bare(server, bars))
        coordinated = median_async(args.repeat, lambda: postgres_coordinated(server, bars, args))
        if args.profile:
            profile(lambda: postgres_coordinated(server, bars, args))
    finally:
        server.destroy()
    return report("PostgreSQL", "COPY", len(bars), bare, coordinated)


# -- measuring and reporting ---------------------------------------------------------------


def median(repeat: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeat))


def median_async(repeat: int, fn: Callable[[], Awaitable[float]]) -> float:
    return statistics.median(asyncio.run(_call(fn)) for _ in range(repeat))


async def _call(fn: Callable[[], Awaitable[float]]) -> float:
    return await fn()


def profile(fn: Callable[[], Awaitable[float]]) -> None:
    """One more run under cProfile (all threads' Python work shows in the main thread only)."""
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_call(fn))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def report(sink: str, bare_name: str, n: int, bare: float, coordinated: float) -> list[bool]:
    rate, ratio = n / coordinated, bare / coordinated
    rate_ok, ratio_ok = rate >= TARGET_BARS_PER_SEC, ratio >= TARGET_RATIO
    print(f"{sink + ': bare ' + bare_name:40s} {n / bare:>12,.0f} bars/s   1.00x")
    print(
        f"{sink + ': WriteCoordinator':40s} {rate:>12,.0f} bars/s {ratio:6.2f}x  "
        f"(budget {TARGET_BARS_PER_SEC:,} bars/s: {verdict(rate_ok)}; "
        f"{TARGET_RATIO}x: {verdict(ratio_ok)})"
    )
    return [rate_ok, ratio_ok]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=50_000)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--profile", action="store_true", help="also print a cProfile run")
    args = parser.parse_args()
    logger.remove()  # the library logs through loguru; keep the report readable
    bars = make_bars(args.bars)
    print(
        f"{args.bars:,} bars, batch_size={args.batch_size}, workers={args.workers}, "
        f"capacity={args.capacity}, median of {args.repeat}"
    )
    results: list[bool] = []
    if args.only in (None, "sqlite"):
        results += bench_sqlite(bars, args)
    if args.only in (None, "postgres"):
        results += bench_postgres(bars, args)
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
