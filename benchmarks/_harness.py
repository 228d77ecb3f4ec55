"""What the benchmark scripts share: the bars they write, paired rounds in alternating order,
min / median / max formatting, and PostgreSQL (a throwaway server, a fresh database).

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they
``from _harness import ...``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from market_data_store.coordinator import WriteCoordinator
from market_data_store.sinks import Bar
from market_data_store.testing.postgres import PostgresServer, PostgresUnavailableError

T = TypeVar("T")
Timed = Callable[[], Coroutine[Any, Any, float]]  # one run; returns the seconds it measured


# -- what is written -----------------------------------------------------------------------


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


async def through_coordinator(sink: Any, bars: list[Bar], **settings: Any) -> float:
    """Seconds from the first ``submit_many`` to the end of the drain by ``stop()``; the
    coordinator has its DEFAULT settings but for ``settings``."""
    coord: WriteCoordinator[Bar] = WriteCoordinator(sink=sink, **settings)
    await coord.start()
    started = time.perf_counter()
    await coord.submit_many(bars)
    await coord.stop(drain=True, timeout=300)
    elapsed = time.perf_counter() - started
    written = coord.stats().written
    if written != len(bars):
        raise RuntimeError(f"coordinator wrote {written} of {len(bars)} bars")
    return elapsed


# -- paired rounds -------------------------------------------------------------------------


def alternating(rounds: int, runs: Sequence[Callable[[], T]]) -> list[list[T]]:
    """Per run, what it returned in each of ``rounds`` rounds. Every round calls every run
    back to back: in the given order in even rounds, in reverse order in odd ones."""
    results: list[list[T]] = [[] for _ in runs]
    for i in range(rounds):
        order = list(zip(runs, results, strict=True))
        for run, out in order if i % 2 == 0 else reversed(order):
            out.append(run())
    return results


def in_fresh_loop(timed: Timed, *, collect: bool = False) -> float:
    """``timed`` in a new event loop (``asyncio.run``), after a garbage collection if
    ``collect``."""
    if collect:
        gc.collect()
    return asyncio.run(timed())


def paired_rounds(
    rounds: int, baseline: Timed, candidate: Timed, *, collect: bool = False
) -> tuple[list[float], list[float]]:
    """(baseline seconds, candidate seconds) per round: the two back to back, baseline first
    in even rounds and candidate first in odd ones, each in a fresh event loop (after a
    garbage collection if ``collect``)."""
    base, cand = alternating(
        rounds,
        [
            partial(in_fresh_loop, baseline, collect=collect),
            partial(in_fresh_loop, candidate, collect=collect),
        ],
    )
    return base, cand


def spread(values: Sequence[float], fmt: str, sep: str = " / ") -> str:
    """min, median and max of ``values``, each formatted with ``fmt``, joined by ``sep``."""
    return sep.join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def clock_overhead_ns(samples: int = 20_000) -> float:
    """Median cost of two back-to-back perf_counter_ns() reads."""
    clock = time.perf_counter_ns
    deltas = []
    for _ in range(samples):
        t0 = clock()
        deltas.append(clock() - t0)
    return statistics.median(deltas)


# -- PostgreSQL ----------------------------------------------------------------------------


@contextmanager
def postgres_or_skip(dsn: str | None, skipped: str) -> Iterator[str | None]:
    """``dsn`` as given; else the admin DSN of a throwaway server (market_data_store.testing.
    postgres, fsync off), destroyed on the way out. Without PostgreSQL binaries: prints
    ``skipped`` formatted with the reason and yields None."""
    if dsn is not None:
        yield dsn
        return
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailableError as exc:
        server.destroy()
        print(skipped.format(exc))
        unavailable = True
    else:
        unavailable = False
    if unavailable:
        yield None
        return
    try:
        yield server.dsn
    finally:
        server.destroy()


def dsn_for(dsn: str, database: str) -> str:
    """``dsn`` (a postgresql:// URL) pointing at ``database``."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def create_database(admin_dsn: str, prefix: str = "mds_bench_") -> str:
    """The DSN of a new, empty database on ``admin_dsn``'s server."""
    import asyncpg

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return dsn_for(admin_dsn, name)


@asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped on the way out."""
    import asyncpg

    dsn = await create_database(admin_dsn)
    try:
        yield dsn
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            name = urlsplit(dsn).path.removeprefix("/")
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
