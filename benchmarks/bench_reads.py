"""Reading bars back (DESIGN.md section 8) against a bare fetch of the same rows, in paired,
alternating rounds.

Range read: ``sink.read(symbol, timeframe, start, end)`` of a 50,000-bar range into ``Bar``
objects, against a bare fetch of the same rows as tuples with the same query (SQLite: the
sink's own SQL on a plain ``sqlite3`` connection; PostgreSQL: ``asyncpg`` ``fetch``), the
two timed back to back, their order alternating between rounds, each round in a fresh event
loop. Printed: bars/s of each and the per-round ratio read / bare, min / median / max.
Budget: >= 150,000 bars/s into ``Bar`` objects on each database.

Series read (SQLite): ``read`` of the 2,000 bars of one symbol out of a table of 1,000,000
rows; per round the median of 20 reads. Budget: < 5 ms.

    python benchmarks/bench_reads.py [--db sqlite|postgres|all] [--rounds 5]
        [--range-bars 50000] [--postgres-dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import fresh_database, paired_rounds, postgres_or_skip, spread
from loguru import logger

from market_data_store.sinks import PostgresBarsSink, SqliteBarsSink
from market_data_store.sinks import sqlite as sqlite_sink

TARGET_BARS_PER_SEC = 150_000
TARGET_SERIES_MS = 5.0
T0 = datetime(2020, 1, 2, tzinfo=UTC)
RANGE_SYMBOL = "RANGE"
SERIES_SYMBOLS = 500
SERIES_BARS = 2_000  # 500 symbols x 2,000 bars = 1,000,000 rows
PG_RANGE_SQL = (
    "SELECT vendor, symbol, timeframe, ts, open, high, low, close, volume FROM bars "
    "WHERE symbol = $1 AND timeframe = $2 AND ts >= $3 AND ts < $4 ORDER BY ts, vendor"
)


def bar_rows(symbol: str, n: int, *, epoch_us: bool) -> list[tuple[Any, ...]]:
    """``n`` one-minute bars of ``symbol`` as table rows (ts in epoch us, or a datetime)."""
    rows = []
    for i in range(n):
        ts = T0 + timedelta(minutes=i, microseconds=i % 1000)
        o = 100.0 + i % 17
        c = o + (i % 5 - 2) * 0.25
        stamp: Any = sqlite_sink.epoch_us(ts, 0) if epoch_us else ts
        rows.append(("bench", symbol, "1m", stamp, o, max(o, c) + 0.5, min(o, c) - 0.5, c, i))
    return rows


def range_bounds(n: int) -> tuple[datetime, datetime]:
    """[start, end) holding bars 5 .. 5 + n of the range symbol."""
    return T0 + timedelta(minutes=5), T0 + timedelta(minutes=5 + n)


# -- measuring and reporting ---------------------------------------------------------------


def report_range(db: str, n: int, bare: list[float], read: list[float]) -> bool:
    rates = [n / t for t in read]
    ratios = [b / r for b, r in zip(bare, read, strict=True)]
    ok = statistics.median(rates) >= TARGET_BARS_PER_SEC
    print(
        f"{db}: bare fetch of {n:,} rows as tuples  rows/s {spread([n / t for t in bare], ',.0f')}"
    )
    print(
        f"{db}: read() of {n:,} bars into Bar     bars/s {spread(rates, ',.0f')}"
        f"  (budget {TARGET_BARS_PER_SEC:,}: {'ok' if ok else 'MISSED'})"
    )
    print(f"{db}: read() speed / bare fetch speed          {spread(ratios, '.2f')}")
    return ok


# -- SQLite --------------------------------------------------------------------------------


def build_sqlite(path: Path, range_bars: int) -> None:
    async def create() -> None:
        async with SqliteBarsSink(path):  # the sink's own schema
            pass

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(sqlite_sink.UPSERT, bar_rows(RANGE_SYMBOL, range_bars + 10, epoch_us=True))
        for s in range(SERIES_SYMBOLS):
            conn.executemany(sqlite_sink.UPSERT, bar_rows(f"S{s:04d}", SERIES_BARS, epoch_us=True))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def bench_sqlite(args: argparse.Namespace) -> list[bool]:
    folder = Path(tempfile.mkdtemp(prefix="mds-bench-reads-", dir=args.tmpdir))
    path = folder / "bars.db"
    try:
        build_sqlite(path, args.range_bars)
        start, end = range_bounds(args.range_bars)
        sql = sqlite_sink.SELECT_RANGE[False, False]
        params = {
            "symbol": RANGE_SYMBOL,
            "timeframe": "1m",
            "start": sqlite_sink.epoch_us(start, 0),
            "end": sqlite_sink.epoch_us(end, 0),
            "limit": -1,
        }

        async def bare() -> float:
            conn = sqlite3.connect(path)
            try:
                started = time.perf_counter()
                rows = conn.execute(sql, params).fetchall()
                elapsed = time.perf_counter() - started
            finally:
                conn.close()
            assert len(rows) == args.range_bars
            return elapsed

        async def read() -> float:
            async with SqliteBarsSink(path) as sink:
                started = time.perf_counter()
                bars = await sink.read(RANGE_SYMBOL, "1m", start, end)
                elapsed = time.perf_counter() - started
            assert len(bars) == args.range_bars
            return elapsed

        results = [report_range("SQLite", args.range_bars, *paired_rounds(args.rounds, bare, read))]
        results.append(bench_sqlite_series(path, args.rounds))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def bench_sqlite_series(path: Path, rounds: int) -> bool:
    async def one_round() -> float:
        times = []
        async with SqliteBarsSink(path) as sink:
            for i in range(20):
                symbol = f"S{(i * 37) % SERIES_SYMBOLS:04d}"
                started = time.perf_counter()
                bars = await sink.read(symbol, "1m")
                times.append(time.perf_counter() - started)
                assert len(bars) == SERIES_BARS
        return statistics.median(times)

    per_round = [asyncio.run(one_round()) * 1e3 for _ in range(rounds)]
    ok = statistics.median(per_round) < TARGET_SERIES_MS
    rows = SERIES_SYMBOLS * SERIES_BARS
    print(
        f"SQLite: read() of {SERIES_BARS:,} bars of one symbol out of {rows:,} rows, ms "
        f"{spread(per_round, '.2f')}  (budget < {TARGET_SERIES_MS} ms: {'ok' if ok else 'MISSED'})"
    )
    return ok


# -- PostgreSQL ----------------------------------------------------------------------------


def bench_postgres(args: argparse.Namespace) -> list[bool]:
    if not hasattr(PostgresBarsSink, "read"):
        print("PostgreSQL: skipped (PostgresBarsSink has no read() on this branch)")
        return []
    with postgres_or_skip(args.postgres_dsn, "PostgreSQL: skipped ({})") as admin_dsn:
        if admin_dsn is None:
            return []
        return [asyncio.run(_postgres_rounds(admin_dsn, args))]


async def _postgres_rounds(admin_dsn: str, args: argparse.Namespace) -> bool:
    import asyncpg

    n = args.range_bars
    start, end = range_bounds(n)
    async with fresh_database(admin_dsn) as dsn:
        async with PostgresBarsSink(dsn) as sink:  # the sink's own schema
            pass
        conn = await asyncpg.connect(dsn)
        try:
            rows = bar_rows(RANGE_SYMBOL, n + 10, epoch_us=False)
            await conn.copy_records_to_table("bars", records=rows, columns=sqlite_sink.BAR_FIELDS)
            await conn.execute("ANALYZE bars")
        finally:
            await conn.close()

        bare_times: list[float] = []
        read_times: list[float] = []
        for i in range(args.rounds):
            # One event loop here (asyncpg pools are bound to theirs); order alternates.
            for which in ("bare", "read") if i % 2 == 0 else ("read", "bare"):
                if which == "bare":
                    conn = await asyncpg.connect(dsn)
                    try:
                        started = time.perf_counter()
                        got = [
                            tuple(r)
                            for r in await conn.fetch(PG_RANGE_SQL, RANGE_SYMBOL, "1m", start, end)
                        ]
                        bare_times.append(time.perf_counter() - started)
                    finally:
                        await conn.close()
                else:
                    async with PostgresBarsSink(dsn) as sink:
                        started = time.perf_counter()
                        got = await sink.read(RANGE_SYMBOL, "1m", start, end)  # type: ignore[assignment]
                        read_times.append(time.perf_counter() - started)
                assert len(got) == n
    return report_range("PostgreSQL", n, bare_times, read_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--range-bars", type=int, default=50_000)
    parser.add_argument("--postgres-dsn", help="server to use instead of a throwaway one")
    parser.add_argument("--tmpdir", help="where the SQLite file goes (default: system temp)")
    args = parser.parse_args()
    logger.remove()
    print(f"{args.rounds} paired rounds (order alternating)")
    results: list[bool] = []
    if args.db in ("sqlite", "all"):
        results += bench_sqlite(args)
    if args.db in ("postgres", "all"):
        results += bench_postgres(args)
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
