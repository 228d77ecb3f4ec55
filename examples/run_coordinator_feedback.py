"""The feedback loop end to end: a market data producer that slows down when the store says so.

A synthetic provider makes random-walk OHLCV bars for several symbols. The producer paces
itself with a ``RateController`` subscribed to ``feedback_bus()`` and submits the bars to a
``WriteCoordinator`` that writes them into SQLite (``market_data.db`` here by default) or,
with ``--postgres-dsn``, into PostgreSQL. The sink stalls ON PURPOSE, 1.2 s every 4 s (as a
checkpoint or a lock held by another process would make a real database do): a local
database keeps up with this producer easily, so without the stalls the queue would never fill
and there would be no feedback to show. During a stall the queue fills, the coordinator says
SOFT and then HARD, the producer slows down, and it speeds up again once the queue has
recovered. Each level change is printed as it happens; a summary and a chart of queue depth
over time close the run.

Each run's bars start 30 days before the moment the run starts, to the microsecond, one
second apart per symbol: a second run into the same database adds its own rows instead of
overwriting the first run's.

    python examples/run_coordinator_feedback.py [--duration 15] [--symbols AAPL,MSFT,...]
        [--db market_data.db | --postgres-dsn postgresql://...] [--metrics-port 9108]

Set ``MDS_FB_ENABLE_HTTP_BROADCAST=true`` and ``MDS_FB_FEEDBACK_WEBHOOK_URL=...`` to also
POST every event to a webhook.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from market_data_store.coordinator import (
    BackpressureLevel,
    DeadLetterQueue,
    FeedbackEvent,
    RetryPolicy,
    Sink,
    WriteCoordinator,
    feedback_bus,
)
from market_data_store.feedback.rate_controller import RateController
from market_data_store.feedback.settings import FeedbackSettings
from market_data_store.sinks import Bar, SqliteBarsSink

DEFAULT_SYMBOLS = "AAPL,MSFT,NVDA,AMZN,GOOG,TSLA"
COORD_ID = "bars-demo"
BLOCKS = " ▁▂▃▄▅▆▇█"


class SyntheticProvider:
    """Random-walk one-second OHLCV bars, one symbol after another, deterministic per seed."""

    def __init__(self, symbols: Sequence[str], seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self._symbols = list(symbols)
        self._price = {s: self._rng.uniform(50, 500) for s in self._symbols}
        # Not rounded to the second: the run's start time to the microsecond keeps each run's
        # (symbol, ts) keys apart from every earlier run's, so the upsert overwrites nothing.
        self._ts = datetime.now(UTC) - timedelta(days=30)
        self._i = 0

    def next_bars(self, count: int) -> list[Bar]:
        """The next ``count`` bars."""
        bars = []
        rng = self._rng
        for _ in range(count):
            symbol = self._symbols[self._i % len(self._symbols)]
            if self._i % len(self._symbols) == 0:
                self._ts += timedelta(seconds=1)
            self._i += 1
            open_ = self._price[symbol]
            close = max(0.01, open_ * math.exp(rng.gauss(0, 0.001)))
            high = max(open_, close) * (1 + abs(rng.gauss(0, 0.0005)))
            low = min(open_, close) * (1 - abs(rng.gauss(0, 0.0005)))
            self._price[symbol] = close
            bars.append(
                Bar(
                    vendor="synthetic",
                    symbol=symbol,
                    timeframe="1s",
                    ts=self._ts,
                    open=open_,
                    high=high,
                    low=low,
                    close=close,
                    volume=float(rng.randint(100, 10_000)),
                )
            )
        return bars


class StallingSink:
    """Wraps a real sink; every ``every`` seconds its writes stall for ``stall`` seconds."""

    def __init__(self, inner: Sink[Bar], every: float, stall: float) -> None:
        self._inner = inner
        self._every = every
        self._stall = stall
        self._t0 = time.monotonic()

    async def write(self, batch: Sequence[Bar]) -> None:
        if self._every > 0:
            phase = (time.monotonic() - self._t0) % self._every
            if phase > self._every - self._stall:
                await asyncio.sleep(self._every - phase)
        await self._inner.write(batch)


@dataclass
class RunLog:
    """What the run saw, for the summary."""

    started: float = field(default_factory=time.monotonic)
    events: Counter[str] = field(default_factory=Counter)
    depth: list[tuple[float, int]] = field(default_factory=list)
    produced: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def chart(samples: list[tuple[float, int]], capacity: int, high: int, low: int) -> str:
    """A terminal chart of queue depth over time, with the watermarks marked."""
    width, height = 64, 10
    if not samples:
        return "(no samples)"
    end = samples[-1][0] or 1.0
    columns = [0] * width
    for t, depth in samples:
        col = min(width - 1, int(t / end * width))
        columns[col] = max(columns[col], depth)
    rows = []
    for row in range(height, 0, -1):
        top = capacity * row / height
        bottom = capacity * (row - 1) / height
        mark = "H" if bottom < high <= top else ("L" if bottom < low <= top else " ")
        cells = []
        for value in columns:
            fill = (value - bottom) / (top - bottom)
            cells.append(BLOCKS[max(0, min(8, int(fill * 8)))] if value > bottom else " ")
        rows.append(f"{int(top):>7,} {mark}|{''.join(cells)}")
    rows.append(f"{'':>9}+{'-' * width}")
    rows.append(f"{'':>10}0 s{'':>{width - 8}}{end:5.1f} s")
    return "\n".join(rows)


async def read_back(sink: Any, symbol: str, count: int = 5) -> list[Bar]:
    """The newest ``count`` one-second bars of ``symbol``, through the sink's read API."""
    newest = (await sink.latest([symbol], "1s")).get(symbol)
    if newest is None:
        return []
    start = newest.ts - timedelta(seconds=count - 1)
    bars: list[Bar] = await sink.read(symbol, "1s", start, newest.ts + timedelta(seconds=1))
    return bars[-count:]


def bar_table(bars: Sequence[Bar]) -> str:
    """Bars as a small fixed-width table."""
    rows = [f"  {'ts (UTC)':<32} {'open':>9} {'high':>9} {'low':>9} {'close':>9} {'volume':>8}"]
    for bar in bars:
        rows.append(
            f"  {bar.ts.isoformat(timespec='microseconds'):<32} {bar.open:>9.2f} "
            f"{bar.high:>9.2f} {bar.low:>9.2f} {bar.close:>9.2f} {bar.volume:>8,.0f}"
        )
    return "\n".join(rows)


async def run(args: argparse.Namespace) -> int:
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if args.postgres_dsn:
        from market_data_store.sinks import PostgresBarsSink

        real_sink: Any = PostgresBarsSink(args.postgres_dsn)
        target = "PostgreSQL"
    else:
        real_sink = SqliteBarsSink(args.db)
        target = f"SQLite {args.db}"
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1")
        print(f"metrics on http://127.0.0.1:{args.metrics_port}/metrics")

    log = RunLog()
    bus = feedback_bus()
    controller = RateController(
        args.rate, coordinator_ids=[COORD_ID], increase_per_sec=args.rate / 8
    )

    async def print_transition(event: FeedbackEvent) -> None:
        if event.coordinator_id != COORD_ID:
            return
        log.events[event.level.value] += 1
        reason = f" ({event.reason})" if event.reason else ""
        print(
            f"  t={log.elapsed():5.1f}s  {event.level.value.upper():4s}{reason:18s} "
            f"queue {event.queue_size:>6,}/{event.capacity:,} ({event.utilization:4.0%})  "
            f"producer rate now {controller.rate:>8,.0f} bars/s",
            flush=True,
        )

    dlq: DeadLetterQueue[Bar] = DeadLetterQueue(args.dlq)
    settings = FeedbackSettings()
    async with real_sink, controller:
        bus.subscribe(print_transition)
        if settings.enable_http_broadcast:  # started by the coordinator: nothing to do here
            print("webhook broadcast enabled by MDS_FB_* settings (auto-wired at start)")
        rows_before = await real_sink.count()
        coordinator: WriteCoordinator[Bar] = WriteCoordinator(
            sink=StallingSink(real_sink, args.stall_every, args.stall_sec),
            capacity=args.capacity,
            workers=2,
            batch_size=1000,
            flush_interval=0.1,
            retry_policy=RetryPolicy(max_attempts=5, initial_backoff_ms=20),
            dlq=dlq,
            coord_id=COORD_ID,
        )
        queue = coordinator.queue
        print(
            f"writing {', '.join(symbols)} bars into {target} for {args.duration:g} s; producer "
            f"offers up to {args.rate:,.0f} bars/s; queue capacity {queue.capacity:,} "
            f"(SOFT above {queue.low_watermark:,}, HARD at {queue.high_watermark:,})"
        )
        if args.stall_sec > 0:
            print(
                f"the sink stalls on purpose, {args.stall_sec:g} s every {args.stall_every:g} s, "
                "as a checkpoint or another process's lock\nwould make a database do: that fills "
                "the queue, so the feedback shows (--stall-sec 0: no stalls)"
            )
        provider = SyntheticProvider(symbols, seed=args.seed)
        async with coordinator:

            async def sample_depth() -> None:
                while True:
                    log.depth.append((log.elapsed(), len(queue)))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample_depth())
            deadline = time.monotonic() + args.duration
            chunk = 100
            while time.monotonic() < deadline:
                await controller.acquire(chunk)
                bars = provider.next_bars(chunk)
                await coordinator.submit_many(bars)
                log.produced += len(bars)
            sampler.cancel()
            print(f"  t={log.elapsed():5.1f}s  producer done; draining the queue")
        await bus.flush()
        bus.unsubscribe(print_transition)
        stored = await real_sink.count()
        last_bars = await read_back(real_sink, symbols[0])

    stats = coordinator.stats()
    peak = max((d for _, d in log.depth), default=0)
    print("\nsummary")
    print(f"  bars produced       {log.produced:>10,}")
    print(
        f"  bars written        {stats.written:>10,}   (new rows {stored - rows_before:,}; "
        f"rows in the table now: {stored:,})"
    )
    dlq_file = await asyncio.to_thread(Path(args.dlq).exists)  # printed only if it exists
    dlq_note = f"   ({args.dlq})" if dlq_file else ""
    print(f"  bars dead-lettered  {stats.dead_lettered:>10,}{dlq_note}")
    print(f"  bars dropped        {sum(stats.dropped.values()):>10,}")
    print(f"  throughput          {stats.written / max(log.elapsed(), 1e-9):>10,.0f} bars/s")
    levels = ", ".join(f"{lvl.value.upper()} {log.events[lvl.value]}" for lvl in BackpressureLevel)
    print(f"  events by level     {levels}")
    print(f"  peak queue depth    {peak:>10,} of {queue.capacity:,}")
    print("\nqueue depth over time (H = high watermark, L = low watermark)")
    print(chart(log.depth, queue.capacity, queue.high_watermark, queue.low_watermark))
    print(f"\nlast bars of {symbols[0]} read back with sink.read()")
    print(bar_table(last_bars))
    accounted = stats.written + stats.dead_lettered + sum(stats.dropped.values())
    if accounted != log.produced:
        print(f"\nACCOUNTING MISMATCH: produced {log.produced}, accounted {accounted}")
        return 1
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of producing")
    parser.add_argument("--symbols", default=DEFAULT_SYMBOLS, help="comma-separated symbols")
    parser.add_argument("--db", default="market_data.db", help="SQLite database path")
    parser.add_argument("--postgres-dsn", default=None, help="write into PostgreSQL instead")
    parser.add_argument("--dlq", default="market_data_dlq.ndjson", help="dead-letter file")
    parser.add_argument("--rate", type=float, default=20_000, help="max bars/s offered")
    parser.add_argument("--capacity", type=int, default=20_000, help="queue capacity")
    parser.add_argument("--stall-every", type=float, default=4.0, help="seconds between stalls")
    parser.add_argument("--stall-sec", type=float, default=1.2, help="length of a stall")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    if not 0 <= args.stall_sec < args.stall_every or args.stall_every <= 0:
        parser.error("need 0 <= --stall-sec < --stall-every")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("market_data_store")  # the library's logging is off until an app enables it
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
