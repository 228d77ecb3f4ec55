"""FeedbackBus across threads: each subscriber runs on the loop it subscribed from."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from market_data_store.feedback import BackpressureLevel, FeedbackBus, FeedbackEvent

DEADLINE = 2.0  # seconds; every wait below is bounded by it
PER_THREAD = 40


def ev(coordinator_id: str, seq: int) -> FeedbackEvent:
    return FeedbackEvent(coordinator_id, seq, 100, BackpressureLevel.SOFT, seq=seq)


@dataclass
class LoopThread:
    """A thread running its own loop with a subscriber bound to it.

    The subscriber hands events to an ``asyncio.Queue`` of its loop (what a pipeline does);
    a consumer task on that loop records where and when each event arrived.
    """

    name: str
    bus: FeedbackBus
    ready: threading.Barrier
    go: threading.Event
    expected: int
    arrivals: list[tuple[int, asyncio.AbstractEventLoop, float, FeedbackEvent]] = field(
        default_factory=list
    )
    loop: asyncio.AbstractEventLoop | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.name)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[int, asyncio.AbstractEventLoop, FeedbackEvent]] = asyncio.Queue()

        async def subscriber(event: FeedbackEvent) -> None:
            inbox.put_nowait((threading.get_ident(), asyncio.get_running_loop(), event))

        self.bus.subscribe(subscriber)
        await asyncio.to_thread(self.ready.wait, DEADLINE)
        await asyncio.to_thread(self.go.wait, DEADLINE)
        for seq in range(1, PER_THREAD + 1):
            self.bus.publish_nowait(ev(self.name, seq))
            await asyncio.sleep(0)  # interleave with the other thread's publishing
        async with asyncio.timeout(DEADLINE):
            while len(self.arrivals) < self.expected:
                ident, loop, event = await inbox.get()
                self.arrivals.append((ident, loop, time.perf_counter(), event))
        self.bus.unsubscribe(subscriber)


def test_two_threads_two_loops_one_bus_every_callback_on_its_own_loop() -> None:
    """Events from two loops' threads and a loop-less thread reach each subscriber on its loop."""
    bus = FeedbackBus()
    ready = threading.Barrier(3)
    go = threading.Event()
    expected = 2 * PER_THREAD + 1
    workers = [LoopThread(name, bus, ready, go, expected) for name in ("t1", "t2")]
    for worker in workers:
        worker.start()
    ready.wait(DEADLINE)
    go.set()
    bus.publish_nowait(ev("main", 1))  # from a thread without a loop
    for worker in workers:
        assert worker.thread is not None
        worker.thread.join(DEADLINE + 1)
        assert not worker.thread.is_alive()
        assert worker.error is None, worker.error
    for worker in workers:
        assert worker.thread is not None
        assert {(ident, loop) for ident, loop, _, _ in worker.arrivals} == {
            (worker.thread.ident, worker.loop)
        }
        got = sorted((e.coordinator_id, e.seq) for *_, e in worker.arrivals)
        assert got == sorted(
            [("main", 1)] + [(t, s) for t in ("t1", "t2") for s in range(1, PER_THREAD + 1)]
        )


def test_event_published_on_one_loop_wakes_a_subscriber_waiting_on_another() -> None:
    """A subscriber idle on loop B is woken by an event published on loop A within 0.5 s."""
    bus = FeedbackBus()
    subscribed = threading.Event()
    received = threading.Event()
    seen: list[int] = []

    async def on_b() -> None:
        got: asyncio.Queue[FeedbackEvent] = asyncio.Queue()

        async def subscriber(event: FeedbackEvent) -> None:
            got.put_nowait(event)

        bus.subscribe(subscriber)
        subscribed.set()
        async with asyncio.timeout(DEADLINE):
            event = await got.get()
        seen.append(event.seq)
        received.set()
        bus.unsubscribe(subscriber)

    thread_b = threading.Thread(target=asyncio.run, args=(on_b(),))
    thread_b.start()
    try:
        assert subscribed.wait(DEADLINE)

        async def on_a() -> None:
            bus.publish_nowait(ev("a", 7))
            # Keep loop A busy elsewhere: delivery must not depend on it.
            assert await asyncio.to_thread(received.wait, 0.5), "not delivered within 0.5 s"

        asyncio.run(on_a())
    finally:
        thread_b.join(DEADLINE + 1)
    assert seen == [7]


def test_unsubscribe_from_another_thread_stops_delivery() -> None:
    """unsubscribe() called from a foreign thread: no later event reaches the subscriber."""
    bus = FeedbackBus()
    got: list[int] = []

    async def main() -> None:
        async def subscriber(event: FeedbackEvent) -> None:
            got.append(event.seq)

        bus.subscribe(subscriber)
        await bus.publish(ev("a", 1), timeout=DEADLINE)
        await asyncio.to_thread(bus.unsubscribe, subscriber)
        await bus.publish(ev("a", 2), timeout=DEADLINE)

    asyncio.run(main())
    assert got == [1]
    assert bus.subscriber_count == 0


def test_publish_nowait_from_a_thread_without_a_loop_reaches_a_running_loops_subscriber() -> None:
    """A plain thread's publish_nowait() is delivered with no later publish on the loop."""
    bus = FeedbackBus()
    got: list[int] = []

    async def main() -> None:
        arrived = asyncio.Event()

        async def subscriber(event: FeedbackEvent) -> None:
            got.append(event.seq)
            if event.seq == 3:
                arrived.set()

        bus.subscribe(subscriber)
        await bus.publish(ev("a", 1), timeout=DEADLINE)  # the loop has dispatched once

        def producer() -> None:
            bus.publish_nowait(ev("a", 2))
            bus.publish_nowait(ev("a", 3))

        thread = threading.Thread(target=producer)
        thread.start()
        await asyncio.to_thread(thread.join, DEADLINE)
        async with asyncio.timeout(DEADLINE):
            await arrived.wait()
        bus.unsubscribe(subscriber)

    asyncio.run(main())
    assert got == [1, 2, 3]


def test_publish_on_loop_a_returns_promptly_once_a_subscriber_on_loop_b_handled_it() -> None:
    """publish() awaited on loop A for a subscriber bound to loop B (thread B) is woken by
    B's thread as soon as B handled the event: five publishes, each back within 0.5 s.

    Not timing-flaky: a working wake-up takes microseconds to a few milliseconds; a broken one
    (loop A never told that its future was resolved) sleeps out the whole 3 s ``timeout``
    of ``publish``. 0.5 s sits far from both, so only a stall of loop A or thread B longer
    than 0.5 s, not ordinary load, could fail it.
    """
    bus = FeedbackBus()
    subscribed = threading.Event()
    done = threading.Event()
    seen: list[tuple[int, int]] = []

    async def on_b() -> None:
        async def subscriber(event: FeedbackEvent) -> None:
            seen.append((threading.get_ident(), event.seq))

        bus.subscribe(subscriber)
        subscribed.set()
        try:
            await asyncio.to_thread(done.wait, DEADLINE + 5 * 3)
        finally:
            bus.unsubscribe(subscriber)

    thread_b = threading.Thread(target=asyncio.run, args=(on_b(),), name="loop-b")
    thread_b.start()
    took: list[float] = []
    try:
        assert subscribed.wait(DEADLINE)

        async def on_a() -> None:
            for seq in range(1, 6):
                started = time.perf_counter()
                await bus.publish(ev("a", seq), timeout=3)
                took.append(time.perf_counter() - started)

        asyncio.run(on_a())
    finally:
        done.set()
        thread_b.join(DEADLINE)
    assert not thread_b.is_alive()
    assert seen == [(thread_b.ident, seq) for seq in range(1, 6)]
    assert all(t < 0.5 for t in took), took
