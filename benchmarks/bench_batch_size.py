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
import shutil
import statistics
import tempfile
import uuid
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from _harness import (
    create_database,
    make_bars,
    paired_rounds,
    postgres_or_skip,
    spread,
    through_coordinator,
)
from loguru import logger

from market_data_store.feedback import FeedbackBus
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink

Run = Callable[[int], Coroutine[Any, Any, float]]  # max_batch_size -> seconds


async def timed_write(sink: Any, bars: list[Bar], max_batch_size: int) -> float:
    """Seconds from the first submit to the end of the drain, at default settings."""
    return await through_coordinator(sink, bars, max_batch_size=max_batch_size, bus=FeedbackBus())


def sqlite_run(folder: Path, bars: list[Bar]) -> Run:
    async def run(max_batch_size: int) -> float:
        async with SqliteBarsSink(folder / f"{uuid.uuid4().hex}.db") as sink:
            return await timed_write(sink, bars, max_batch_size)

    return run


def postgres_run(admin_dsn: str, bars: list[Bar]) -> Run:
    async def run(max_batch_size: int) -> float:
        # A new database each run, left in place: the server goes when the script ends.
        async with PostgresBarsSink(await create_database(admin_dsn, "bench_")) as sink:
            return await timed_write(sink, bars, max_batch_size)

    return run


def compare(name: str, run: Run, n: int, args: argparse.Namespace) -> None:
    for candidate in args.candidates:
        base, cand = paired_rounds(
            args.rounds, partial(run, args.baseline), partial(run, candidate), collect=True
        )
        speedups = [b / c for b, c in zip(base, cand, strict=True)]
        rates = [n / c for c in cand]
        print(
            f"  {name:10s} max_batch_size {candidate:>6,} vs {args.baseline:,}: "
            f"{spread(speedups, '5.2f')}x   "
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
        with postgres_or_skip(None, "  PostgreSQL skipped: {}") as admin_dsn:
            if admin_dsn is not None:
                compare("PostgreSQL", postgres_run(admin_dsn, bars), len(bars), args)


if __name__ == "__main__":
    main()
