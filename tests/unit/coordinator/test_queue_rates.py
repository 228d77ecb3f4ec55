"""The drain and arrival rates a BoundedQueue measures and its "measured" reports, on a
virtual-time event loop (``market_data_store.testing.virtual_time``): no real sleeping."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from market_data_store.coordinator._rate_meter import REPORT_SEC
from market_data_store.coordinator.queue import BoundedQueue
from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent
from market_data_store.testing.virtual_time import LoopTimeBus, run_virtual

OK, SOFT, HARD = BackpressureLevel.OK, BackpressureLevel.SOFT, BackpressureLevel.HARD


async def put_at(q: BoundedQueue[int], rate: float, seconds: float, chunk: int = 10) -> None:
    """Put ``rate`` items/s in chunks for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end - 1e-9:
        await q.put_many(range(chunk))
        await asyncio.sleep(chunk / rate)


async def take_every(q: BoundedQueue[int], batch: int, interval: float, seconds: float) -> int:
    """A worker taking a whole ``batch`` every ``interval`` seconds; returns the items taken."""
    loop = asyncio.get_running_loop()
    end, taken = loop.time() + seconds, 0
    while loop.time() < end - 1e-9:
        await asyncio.sleep(interval)
        taken += len(await q.get_batch(batch))
    return taken


@pytest.mark.parametrize(("batch", "interval"), [(100, 0.1), (700, 0.5), (1_000, 0.8)])
def test_measured_drain_is_within_10_percent_of_the_true_take_rate(
    batch: int, interval: float
) -> None:
    """Takes of whole batches (some wider than the window is long) against a faster producer:
    the rates an event would carry are within 10 % of the take and put rates."""

    async def main() -> tuple[float | None, float | None]:
        q: BoundedQueue[int] = BoundedQueue(100_000, bus=FeedbackBus())
        await q.put_many(range(5_000))  # the worker never waits: the sink-like pace is its own
        await asyncio.gather(put_at(q, 3_000, 4.0), take_every(q, batch, interval, 4.0))
        return q.measured_rates()

    drain, arrival = run_virtual(main())
    assert drain == pytest.approx(batch / interval, rel=0.1)
    assert arrival == pytest.approx(3_000, rel=0.1)


def test_no_rates_before_the_window_spans_a_quarter_second() -> None:
    """The first take measures nothing: the rates stay None (and so do the event's)."""

    async def main() -> FeedbackEvent:
        q: BoundedQueue[int] = BoundedQueue(1_000, bus=FeedbackBus())
        await q.put_many(range(600))  # SOFT
        await q.get_batch(100)
        return q.emit_feedback(q.level, "probe")

    event = run_virtual(main())
    assert (event.drain_rate, event.arrival_rate) == (None, None)


def test_a_stalled_sink_shows_as_a_falling_drain() -> None:
    """No take for longer than the window spans: the drain's window ends now, so it falls."""

    async def main() -> tuple[float | None, float | None]:
        q: BoundedQueue[int] = BoundedQueue(100_000, bus=FeedbackBus())
        await q.put_many(range(5_000))
        await take_every(q, 100, 0.1, 1.0)  # 1,000/s
        await asyncio.sleep(2.0)  # the sink stalls
        return q.measured_rates()

    drain, _ = run_virtual(main())
    assert drain is not None and drain < 500


def test_reports_while_soft_keep_one_event_per_level_change() -> None:
    """While SOFT, a take reports fresh rates (reason "measured", same level) at most once per
    REPORT_SEC; the level events are those of the state machine, one per transition."""

    async def main() -> list[FeedbackEvent]:
        bus = LoopTimeBus()  # events stamped with the virtual time
        events: list[FeedbackEvent] = []

        async def record(event: FeedbackEvent) -> None:
            events.append(event)

        bus.subscribe(record)
        q: BoundedQueue[int] = BoundedQueue(10_000, bus=bus)  # low 5,000, recover 4,500
        await q.put_many(range(6_000))  # OK -> SOFT
        await asyncio.gather(put_at(q, 1_000, 5.0), take_every(q, 100, 0.1, 5.0))
        await q.get_batch(q.size)  # SOFT -> OK
        await asyncio.gather(put_at(q, 1_000, 2.0), take_every(q, 100, 0.1, 2.0))  # OK: silent
        await bus.flush()
        return events

    events = run_virtual(main())
    levels = [(e.level, e.reason) for e in events if e.reason != "measured"]
    assert levels == [(SOFT, None), (OK, "queue_recovered")]
    reports = [e for e in events if e.reason == "measured"]
    assert 3 <= len(reports) <= 5
    assert all(e.level is SOFT and e.drain_rate == pytest.approx(1_000) for e in reports)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    gaps = [b.ts - a.ts for a, b in pairwise(reports)]
    assert all(gap >= REPORT_SEC - 1e-9 for gap in gaps)
