"""DeadLetterQueue: NDJSON round trips, corrupt lines, non-destructive replay, metadata."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from market_data_store.coordinator.dlq import DeadLetterQueue, DLQRecord
from market_data_store.coordinator.policy import CircuitBreaker, RetryPolicy
from market_data_store.coordinator.types import PermanentSinkError, RetryableSinkError
from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback import FeedbackBus


class Tick(BaseModel):
    symbol: str
    ts: dt.datetime
    price: Decimal


@dataclass
class Quote:
    symbol: str
    bid: float
    ask: float


class Opaque:
    """Neither a model nor a dataclass: needs an encoder."""

    def __init__(self, key: str) -> None:
        self.key = key


async def test_pydantic_models_round_trip_as_their_json_dump(tmp_path: Path) -> None:
    """A saved pydantic model replays as model_dump(mode="json")."""
    dlq: DeadLetterQueue[Tick] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    tick = Tick(
        symbol="AAPL", ts=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), price=Decimal("1.5")
    )
    await dlq.save([tick], ValueError("bad"), {"k": 1})
    [record] = await dlq.replay()
    assert record.items == [tick.model_dump(mode="json")]
    assert Tick.model_validate(record.items[0]) == tick
    assert (record.error, record.metadata) == ("ValueError: bad", {"k": 1})


async def test_dataclasses_round_trip_as_dicts(tmp_path: Path) -> None:
    """A saved dataclass replays as its asdict() form."""
    dlq: DeadLetterQueue[Quote] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    quotes = [Quote("MSFT", 1.0, 1.5), Quote("IBM", 2.0, 2.5)]
    await dlq.save(quotes, "lost")
    [record] = await dlq.replay()
    assert [Quote(**item) for item in record.items] == quotes
    assert (record.error, record.metadata) == ("lost", {})


async def test_encoder_turns_other_items_into_json(tmp_path: Path) -> None:
    """Items that are neither models nor dataclasses go through the given encoder."""
    dlq: DeadLetterQueue[Opaque] = DeadLetterQueue(
        tmp_path / "dlq.ndjson", encoder=lambda item: {"key": item.key}
    )
    await dlq.save([Opaque("a"), Opaque("b")], RuntimeError("x"))
    [record] = await dlq.replay()
    assert record.items == [{"key": "a"}, {"key": "b"}]


async def test_plain_json_values_round_trip_unchanged(tmp_path: Path) -> None:
    """Plain JSON values (numbers, strings, dicts, lists) replay as they were saved."""
    dlq: DeadLetterQueue[object] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    items: list[object] = [1, "two", {"three": [3]}, None, 4.5]
    await dlq.save(items, "e")
    [record] = await dlq.replay()
    assert record.items == items


async def test_record_carries_timestamp_error_and_metadata(tmp_path: Path) -> None:
    """A record holds when it was saved, "Type: message" of the error and the metadata."""
    dlq: DeadLetterQueue[int] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    before = time.time()
    await dlq.save([1], PermanentSinkError("rows rejected"), {"attempts": 1, "worker_id": 0})
    [record] = await dlq.replay()
    assert isinstance(record, DLQRecord)
    assert before <= record.ts <= time.time()
    assert record.error == "PermanentSinkError: rows rejected"
    assert record.metadata == {"attempts": 1, "worker_id": 0}


async def test_one_batch_per_line(tmp_path: Path) -> None:
    """Each save appends exactly one NDJSON line; concurrent saves never interleave."""
    path = tmp_path / "nested" / "dir" / "dlq.ndjson"
    dlq: DeadLetterQueue[int] = DeadLetterQueue(path)
    await asyncio.gather(*(dlq.save([i, i + 1000], f"e{i}") for i in range(20)))
    lines = path.read_text().splitlines()
    assert len(lines) == 20
    assert sorted(json.loads(line)["items"][0] for line in lines) == list(range(20))


async def test_replay_does_not_remove_records(tmp_path: Path) -> None:
    """Replaying twice returns the same records: replay reads, it does not consume."""
    dlq: DeadLetterQueue[int] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    for i in range(3):
        await dlq.save([i], "e")
    first = await dlq.replay()
    second = await dlq.replay()
    assert [r.items for r in first] == [[0], [1], [2]]
    assert first == second


async def test_replay_reads_at_most_max_records_from_the_start(tmp_path: Path) -> None:
    """replay(max_records=n) returns the n oldest records."""
    dlq: DeadLetterQueue[int] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    for i in range(5):
        await dlq.save([i], "e")
    assert [r.items for r in await dlq.replay(max_records=2)] == [[0], [1]]
    assert await dlq.replay(max_records=0) == []


async def test_replay_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    """A DLQ that never saved anything replays nothing."""
    assert await DeadLetterQueue(tmp_path / "none.ndjson").replay() == []


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"ts": 1.0, "error": "x", "metadata": {}, "ite',  # truncated
        "not json at all",
        "[1, 2, 3]",
        '{"ts": "yesterday", "error": "x", "metadata": {}, "items": []}',
        '{"error": "x", "items": []}',
        "\udcff\udcfe garbage",
    ],
)
async def test_corrupt_line_is_skipped_with_a_warning(
    tmp_path: Path, bad_line: str, log_messages: list[str]
) -> None:
    """A corrupt line in the middle is skipped (logged) and replay continues past it."""
    path = tmp_path / "dlq.ndjson"
    dlq: DeadLetterQueue[int] = DeadLetterQueue(path)
    await dlq.save([1], "e")
    with path.open("a", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(bad_line + "\n")
    await dlq.save([2], "e")
    assert [r.items for r in await dlq.replay()] == [[1], [2]]
    assert any("corrupt line 2" in m for m in log_messages)


async def test_save_after_a_truncated_last_line_is_not_lost(
    tmp_path: Path, log_messages: list[str]
) -> None:
    """After a crash cut the last line short (no newline), the next saved batch replays."""
    path = tmp_path / "dlq.ndjson"
    dlq: DeadLetterQueue[int] = DeadLetterQueue(path)
    await dlq.save([1], "e")
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"ts": 1.0, "error": "cut short", "items": [9')  # the crash
    await dlq.save([2], "e")
    await dlq.save([3], "e")
    assert [r.items for r in await dlq.replay()] == [[1], [2], [3]]
    assert any("corrupt line 2" in m for m in log_messages)


class PermanentlyFailing:
    async def write(self, batch: Sequence[int]) -> None:
        raise PermanentSinkError("rejected")


class TransientlyFailing:
    async def write(self, batch: Sequence[int]) -> None:
        raise RetryableSinkError("locked")


@pytest.mark.parametrize(
    ("sink", "attempts", "reason", "error"),
    [
        (PermanentlyFailing(), 1, "permanent_error", "PermanentSinkError: rejected"),
        (TransientlyFailing(), 3, "retries_exhausted", "RetryableSinkError: locked"),
    ],
)
async def test_coordinator_records_carry_coordinator_worker_and_attempts(
    tmp_path: Path,
    sink: PermanentlyFailing | TransientlyFailing,
    attempts: int,
    reason: str,
    error: str,
) -> None:
    """A batch that fails for good is saved with coordinator id, worker id and attempts."""
    dlq: DeadLetterQueue[int] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=sink,
        workers=2,
        batch_size=2,
        flush_interval=0.01,
        retry_policy=RetryPolicy(max_attempts=3, initial_backoff_ms=0),
        circuit_breaker=CircuitBreaker(failure_threshold=100),  # keep the circuit out of it
        dlq=dlq,
        coord_id="dlq-meta",
        bus=FeedbackBus(),
    )
    async with coord:
        await coord.submit_many(range(4))
    records = await dlq.replay()
    assert sorted(i for r in records for i in r.items) == [0, 1, 2, 3]
    for record in records:
        assert record.metadata["coordinator_id"] == "dlq-meta"
        assert record.metadata["worker_id"] in (0, 1)
        assert record.metadata["attempts"] == attempts
        assert record.metadata["reason"] == reason
        assert record.error == error


async def test_a_save_cancelled_before_its_turn_writes_nothing(tmp_path: Path) -> None:
    """A save whose caller stopped waiting before the file was free leaves no record."""
    dlq: DeadLetterQueue[int] = DeadLetterQueue(tmp_path / "dlq.ndjson")
    dlq._lock.acquire()  # another save is stuck on the filesystem
    try:
        cancelled = asyncio.create_task(dlq.save([1, 2], "gave up"))
        await asyncio.sleep(0)  # let it start its thread
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        later = asyncio.create_task(dlq.save([3], "kept"))
    finally:
        dlq._lock.release()
    await later
    await asyncio.to_thread(_join_save_threads)
    assert [record.items for record in await dlq.replay()] == [[3]]


def _join_save_threads() -> None:
    for thread in threading.enumerate():
        if thread.name == "mds-dlq-save":
            thread.join(timeout=5)


async def test_save_does_not_encode_on_the_event_loop(tmp_path: Path) -> None:
    """Items are encoded in the save's own thread, never on the loop's."""
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def encoder(item: Opaque) -> str:
        threads.add(threading.get_ident())
        return item.key

    dlq: DeadLetterQueue[Opaque] = DeadLetterQueue(tmp_path / "dlq.ndjson", encoder=encoder)
    await dlq.save([Opaque("a"), Opaque("b")], "rejected")
    assert threads and loop_thread not in threads
    assert (await dlq.replay())[0].items == ["a", "b"]
