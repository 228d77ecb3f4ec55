"""How much deep-queue batches (``max_batch_size``) gain into SQLite and PostgreSQL.

The measurement behind ``DEFAULT_MAX_BATCH_SIZE``: a coordinator at DEFAULT settings takes
``--bars`` bars of 50 interleaved symbols with ``submit_many`` and drains them with
``stop()``, once with ``max_batch_size=--baseline`` (500, the default batch size: adaptive
batches off) and once with each candidate. Each round runs the pair back to back, each in a
fresh event loop and a fresh database, their order alternating; printed are min / median /
max of the per-round speed-ups (baseline time / candidate time) and the candidate's median
bars/s. PostgreSQL is a throwaway server (market_data_store.testing.postgres), skipped when
no binaries are found.

    python benchmarks/bench_batch_size.py [--bars 200000] [--rounds 5]
        [--candidates 1000,2000,5000] [--baseline 500] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from market_data_store.coordinator import WriteCoordinator
from market_data_store.feedback import FeedbackBus
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink
from market_data_store.testing.postgres import PostgresServer, PostgresUnavailableError

Run = Callable[[int], Coroutine[Any, Any, float]]  # max_batch_size -> seconds


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


async def through_coordinator(sink: Any, bars: list[Bar], max_batch_size: int) -> float:
    """Seconds from the first submit to the end of the drain, at default settings."""
    coord: WriteCoordinator[Bar] = WriteCoordinator(
        sink=sink, max_batch_size=max_batch_size, bus=FeedbackBus()
    )
    await coord.start()
    started = time.perf_counter()
    await coord.submit_many(bars)
    await coord.stop(drain=True, timeout=300)
    elapsed = time.perf_counter() - started
    if coord.stats().written != len(bars):
        raise RuntimeError(f"wrote {coord.stats().written} of {len(bars)} bars")
    return elapsed


def sqlite_run(folder: Path, bars: list[Bar]) -> Run:
    async def run(max_batch_size: int) -> float:
        async with SqliteBarsSink(folder / f"{uuid.uuid4().hex}.db") as sink:
            return await through_coordinator(sink, bars, max_batch_size)

    return run


def postgres_run(server: PostgresServer, bars: list[Bar]) -> Run:
    async def run(max_batch_size: int) -> float:
        import asyncpg

        name = f"bench_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(server.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        async with PostgresBarsSink(server.dsn_for(name)) as sink:
            return await through_coordinator(sink, bars, max_batch_size)

    return run


def fresh(run: Run, max_batch_size: int) -> float:
    gc.collect()
    return asyncio.run(run(max_batch_size))


def compare(name: str, run: Run, n: int, args: argparse.Namespace) -> None:
    for candidate in args.candidates:
        speedups, rates = [], []
        for r in range(args.rounds):
            if r % 2 == 0:
                base = fresh(run, args.baseline)
                cand = fresh(run, candidate)
            else:
                cand = fresh(run, candidate)
                base = fresh(run, args.baseline)
            speedups.append(base / cand)
            rates.append(n / cand)
        low, mid, high = min(speedups), statistics.median(speedups), max(speedups)
        print(
            f"  {name:10s} max_batch_size {candidate:>6,} vs {args.baseline:,}: "
            f"{low:5.2f} / {mid:5.2f} / {high:5.2f}x   "
            f"({statistics.median(rates):,.0f} bars/s median)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--candidates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 2000, 5000]
    )
    parser.add_argument("--baseline", type=int, default=500)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    logger.remove()
    bars = make_bars(args.bars)
    print(f"{args.bars:,} bars, {args.rounds} paired rounds, speed-up min / median / max")
    if args.only != "postgres":
        folder = Path(tempfile.mkdtemp(prefix="mds-bench-batch-"))
        try:
            compare("SQLite", sqlite_run(folder, bars), len(bars), args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.only != "sqlite":
        server = PostgresServer()
        try:
            server.start()
        except PostgresUnavailableError as exc:
            print(f"  PostgreSQL skipped: {exc}")
            server.destroy()
            return
        try:
            compare("PostgreSQL", postgres_run(server, bars), len(bars), args)
        finally:
            server.destroy()


if __name__ == "__main__":
    main()
