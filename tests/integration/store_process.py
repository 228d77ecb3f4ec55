"""A store process configured by ``MDS_FB_*`` variables only (run as a script by the tests).

It runs a plain ``WriteCoordinator`` (no broadcaster in sight) whose sink writes one item per
permit, so the test decides every step: SOFT, HARD, then a drain item by item to OK, then
``stop()``. After each event the coordinator emits it prints ``{"event": ...}`` and waits
for a line on stdin (the test's go-ahead once the event arrived on the other side). At the
end it prints ``{"emitted": [...]}``: every event this process's bus saw, in order.

    python store_process.py COORD_ID
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence

from market_data_store.coordinator import WriteCoordinator
from market_data_store.feedback import FeedbackEvent, feedback_bus
from market_data_store.testing.waits import wait_until


class StepSink:
    """Writes one item per permit released by the driver."""

    def __init__(self) -> None:
        self.permits = asyncio.Semaphore(0)
        self.written: asyncio.Queue[int] = asyncio.Queue()

    async def write(self, batch: Sequence[int]) -> None:
        for item in batch:
            await self.permits.acquire()
            self.written.put_nowait(item)


async def main(coord_id: str) -> None:
    bus = feedback_bus()
    emitted: list[FeedbackEvent] = []
    reported = 0

    async def watch(event: FeedbackEvent) -> None:
        emitted.append(event)

    async def report_new() -> None:
        nonlocal reported
        await bus.flush(timeout=5.0)
        for event in emitted[reported:]:
            print(json.dumps({"event": event.to_dict()}), flush=True)
            await asyncio.to_thread(sys.stdin.readline)
        reported = len(emitted)

    bus.subscribe(watch)
    sink = StepSink()
    coordinator: WriteCoordinator[int] = WriteCoordinator(
        sink=sink,
        capacity=10,
        high_watermark=8,
        low_watermark=4,
        workers=1,
        batch_size=1,
        flush_interval=0.01,
        coord_id=coord_id,
    )
    await coordinator.start()  # auto-wires the webhook from MDS_FB_* alone
    await coordinator.submit(0)
    # The worker holds item 0 until the first permit: from now on one step, one item.
    await wait_until(lambda: len(coordinator.queue) == 0, what="worker took item 0")
    for item in range(1, 9):  # the queue climbs one item a step to 8 (HARD)
        await coordinator.submit(item)
        await report_new()
    for _ in range(9):  # drain one item at a time, reporting each level change
        sink.permits.release()
        async with asyncio.timeout(5.0):
            await sink.written.get()
        await report_new()
    await coordinator.stop(timeout=5.0)  # the last coordinator flushes the webhook
    await report_new()
    bus.unsubscribe(watch)
    print(json.dumps({"emitted": [e.to_dict() for e in emitted]}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "store"))
