"""Bars through a WriteCoordinator at DEFAULT settings into SQLite and PostgreSQL, against a
bare bulk write of the same rows, in paired, alternating rounds.

Each round times the bare write and the coordinated write back to back (their order
alternating between rounds), each in a fresh event loop and into a fresh database on disk;
the figure is the ratio bare_seconds / coordinated_seconds of each round, printed as
min / median / max, beside the coordinated bars/s. The coordinator runs with its DEFAULT
settings (capacity 10,000, 4 workers, batch_size 500, flush_interval 0.25): N bars of 50
interleaved symbols in time order are handed to ``submit_many`` and drained by ``stop()``.

Bare writes: SQLite, one ``executemany`` of the sink's upsert in ONE transaction; PostgreSQL,
``copy_records_to_table`` split over as many connections as the sink's pool holds (4). Each
bare write goes into a table the sink itself created, and its rows are built before its clock
starts. Budgets (DESIGN.md section 7): >= 150,000 bars/s and >= 0.8x of bare, per sink.

PostgreSQL: ``--postgres-dsn`` (a role allowed to CREATE DATABASE: each round uses a fresh
database, dropped afterwards), else a throwaway server (market_data_store.testing.postgres,
fsync off); without PostgreSQL binaries that part is skipped.

``--keys`` instead compares SQLite table keys (the key decision of issue 11): for each
layout, the coordinated write as above and a read of one symbol's bars through
``SqliteBarsSink.read``, in rounds whose layout order rotates.

    python benchmarks/bench_sinks.py [--bars 200000] [--rounds 5] [--only sqlite|postgres]
        [--postgres-dsn DSN] [--profile] [--keys]
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
from pathlib import Path

from _harness import (
    Timed,
    fresh_database,
    in_fresh_loop,
    make_bars,
    paired_rounds,
    postgres_or_skip,
    spread,
    through_coordinator,
)
from loguru import logger

from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink
from market_data_store.sinks import _sqlite_schema as sqlite_schema
from market_data_store.sinks import postgres as postgres_sink
from market_data_store.sinks import sqlite as sqlite_sink
from market_data_store.sinks.bar import BAR_FIELDS

TARGET_BARS_PER_SEC = 150_000
TARGET_RATIO = 0.8
PG_CONNECTIONS = 4  # PostgresBarsSink's default pool size: one connection per worker

# -- SQLite --------------------------------------------------------------------------------


def sqlite_timings(bars: list[Bar], folder: Path) -> tuple[Timed, Timed]:
    async def bare() -> float:
        path = folder / f"{uuid.uuid4().hex}.db"
        async with SqliteBarsSink(path):  # the sink's own schema, then closed
            pass
        rows = sqlite_sink.sqlite_rows(bars)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sqlite_sink.UPSERT, rows)
            conn.execute("COMMIT")
            elapsed = time.perf_counter() - started
            assert conn.execute("SELECT count(*) FROM bars").fetchone()[0] == len(bars)
            return elapsed
        finally:
            conn.close()

    async def coordinated() -> float:
        async with SqliteBarsSink(folder / f"{uuid.uuid4().hex}.db") as sink:
            elapsed = await through_coordinator(sink, bars)
            assert await sink.count() == len(bars)
        return elapsed

    return bare, coordinated


CHOSEN_KEY = "PRIMARY KEY (symbol, timeframe, ts, vendor)"
KEY_LAYOUTS = {
    "series-first key (chosen)": None,
    "time-first key + series index": "PRIMARY KEY (ts, vendor, symbol, timeframe)",
    "vendor-first key (round one) + series index": "PRIMARY KEY (vendor, symbol, timeframe, ts)",
}


def create_layout(path: Path, key: str | None) -> None:
    """A database of the current schema version whose table has ``key`` (None: the sink's)."""
    if key is None:
        return
    columns = sqlite_schema.TABLE_COLUMNS.replace(CHOSEN_KEY, key)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"CREATE TABLE bars ({columns}) WITHOUT ROWID")
        conn.execute("CREATE INDEX bars_by_series ON bars (symbol, timeframe, ts, vendor)")
        conn.execute(sqlite_schema.CREATE_READABLE_VIEW)
        conn.execute(f"PRAGMA user_version = {sqlite_schema.SCHEMA_VERSION}")
    finally:
        conn.close()


async def write_then_read(path: Path, bars: list[Bar], reads: int = 20) -> tuple[float, float]:
    """(seconds to write ``bars`` through the coordinator, best seconds to read one symbol)."""
    async with SqliteBarsSink(path) as sink:
        written = await through_coordinator(sink, bars)
        symbol = bars[7].symbol
        best = float("inf")
        for _ in range(reads):
            started = time.perf_counter()
            got = await sink.read(symbol, "1m")
            best = min(best, time.perf_counter() - started)
        assert len(got) == sum(1 for bar in bars if bar.symbol == symbol)
    return written, best


def bench_keys(bars: list[Bar], args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mds-bench-keys-", dir=args.tmpdir))
    names = list(KEY_LAYOUTS)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    try:
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                path = folder / f"{uuid.uuid4().hex}.db"
                create_layout(path, KEY_LAYOUTS[name])
                results[name].append(asyncio.run(write_then_read(path, bars)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per_symbol = sum(1 for bar in bars if bar.symbol == bars[7].symbol)
    chosen = results[names[0]]
    print(f"SQLite table keys, {args.rounds} rounds (layout order rotating), min/median/max")
    for name in names:
        writes = [len(bars) / w for w, _ in results[name]]
        reads = [r * 1e3 for _, r in results[name]]
        vs = [c[0] / w for c, (w, _) in zip(chosen, results[name], strict=True)]
        print(f"  {name:45s} write bars/s {spread(writes, ',.0f')}")
        print(f"  {'':45s} read {per_symbol:,} bars of one symbol, ms {spread(reads, '.2f')}")
        print(f"  {'':45s} write time vs chosen per round {spread(vs, '.2f')}")


# -- PostgreSQL ----------------------------------------------------------------------------


def postgres_timings(bars: list[Bar], admin_dsn: str) -> tuple[Timed, Timed]:
    rows = postgres_sink.pg_rows(bars)
    share = -(-len(rows) // PG_CONNECTIONS)
    chunks = [rows[i : i + share] for i in range(0, len(rows), share)]

    async def bare() -> float:
        import asyncpg

        async with fresh_database(admin_dsn) as dsn:
            async with PostgresBarsSink(dsn, hypertable=False):  # the sink's own schema
                pass
            conns = [await asyncpg.connect(dsn) for _ in chunks]
            try:
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        conn.copy_records_to_table("bars", records=chunk, columns=BAR_FIELDS)
                        for conn, chunk in zip(conns, chunks, strict=True)
                    )
                )
                elapsed = time.perf_counter() - started
                assert await conns[0].fetchval("SELECT count(*) FROM bars") == len(bars)
            finally:
                for conn in conns:
                    await conn.close()
        return elapsed

    async def coordinated() -> float:
        async with fresh_database(admin_dsn) as dsn:
            async with PostgresBarsSink(dsn, hypertable=False) as sink:
                elapsed = await through_coordinator(sink, bars)
                assert await sink.count() == len(bars)
        return elapsed

    return bare, coordinated


# -- measuring and reporting ---------------------------------------------------------------


def report(name: str, bare_name: str, n: int, bare: list[float], cand: list[float]) -> list[bool]:
    ratios = [b / c for b, c in zip(bare, cand, strict=True)]
    rates = [n / c for c in cand]
    rate_ok = statistics.median(rates) >= TARGET_BARS_PER_SEC
    ratio_ok = statistics.median(ratios) >= TARGET_RATIO
    bare_rates = spread([n / b for b in bare], ",.0f")
    print(f"{name}: bare {bare_name:30s} bars/s min/median/max {bare_rates}")
    print(
        f"{name}: WriteCoordinator, defaults      bars/s min/median/max {spread(rates, ',.0f')}"
        f"  (budget {TARGET_BARS_PER_SEC:,}: {verdict(rate_ok)})"
    )
    print(
        f"{name}: ratio to bare                   min/median/max {spread(ratios, '.2f')}"
        f"  (budget {TARGET_RATIO}x: {verdict(ratio_ok)})"
    )
    return [rate_ok, ratio_ok]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def profile(fn: Timed) -> None:
    """One more coordinated run under cProfile (only the main thread's Python work shows)."""
    profiler = cProfile.Profile()
    profiler.enable()
    in_fresh_loop(fn)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def bench_sqlite(bars: list[Bar], args: argparse.Namespace) -> list[bool]:
    folder = Path(tempfile.mkdtemp(prefix="mds-bench-sqlite-", dir=args.tmpdir))
    try:
        bare, coordinated = sqlite_timings(bars, folder)
        results = report(
            "SQLite",
            "executemany, 1 transaction",
            len(bars),
            *paired_rounds(args.rounds, bare, coordinated),
        )
        if args.profile:
            profile(coordinated)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def bench_postgres(bars: list[Bar], args: argparse.Namespace) -> list[bool]:
    with postgres_or_skip(args.postgres_dsn, "PostgreSQL: skipped ({})") as admin_dsn:
        if admin_dsn is None:
            return []
        bare, coordinated = postgres_timings(bars, admin_dsn)
        results = report(
            "PostgreSQL",
            f"COPY over {PG_CONNECTIONS} connections",
            len(bars),
            *paired_rounds(args.rounds, bare, coordinated),
        )
        if args.profile:
            profile(coordinated)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--postgres-dsn", help="server to use instead of a throwaway one")
    parser.add_argument("--tmpdir", help="where the SQLite files go (default: system temp)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile run")
    parser.add_argument("--keys", action="store_true", help="compare SQLite table keys")
    args = parser.parse_args()
    logger.remove()  # the library logs through loguru; keep the report readable
    bars = make_bars(args.bars)
    if args.keys:
        bench_keys(bars, args)
        return
    print(
        f"{args.bars:,} bars of 50 symbols, DEFAULT coordinator settings, "
        f"{args.rounds} paired rounds (order alternating, fresh event loop each)"
    )
    results: list[bool] = []
    if args.only in (None, "sqlite"):
        results += bench_sqlite(bars, args)
    if args.only in (None, "postgres"):
        results += bench_postgres(bars, args)
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
