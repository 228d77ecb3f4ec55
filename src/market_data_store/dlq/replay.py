"""Resubmit a dead-letter file of bars into a sink, then archive the file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from loguru import logger
from pydantic import ValidationError

from market_data_store.coordinator.dlq import DeadLetterQueue, DLQRecord
from market_data_store.coordinator.write_coordinator import WriteCoordinator
from market_data_store.feedback.bus import FeedbackBus
from market_data_store.sinks.bar import Bar

CLAIMED_SUFFIX = ".replaying-"  # the file while it is being replayed
ARCHIVED_SUFFIX = ".replayed-"  # the file once every item of it is stored

OnRecord = Callable[[int, DLQRecord[Any], list[Bar]], None]


class CountingSink(Protocol):
    """An open bar sink that can count its rows (``SqliteBarsSink``, ``PostgresBarsSink``)."""

    async def write(self, batch: Any) -> None: ...
    async def count(self) -> int: ...


@dataclass(frozen=True)
class ReplayReport:
    """What one replay did; ``complete`` when every item of the file was stored.

    Args:
        path: the file asked for.
        found: False when there was no such file (then nothing else is set).
        records: records read (corrupt lines are not records).
        items: items in those records.
        written: items the sink stored.
        invalid: items that are not valid bars (not submitted).
        rows_before: rows in the sink before the replay.
        rows_after: rows in the sink after it.
        archived_to: where the file went when complete (``FILE.replayed-<UTC time>``).
        kept_at: where the file stays when not complete (``FILE.replaying-<UTC time>``).
    """

    path: Path
    found: bool = False
    records: int = 0
    items: int = 0
    written: int = 0
    invalid: int = 0
    rows_before: int = 0
    rows_after: int = 0
    archived_to: Path | None = None
    kept_at: Path | None = None

    @property
    def new_rows(self) -> int:
        """Rows the sink holds now that it did not before (0 for an already stored file)."""
        return self.rows_after - self.rows_before

    @property
    def complete(self) -> bool:
        """True when the file was absent or every item of it was stored."""
        return not self.found or (self.invalid == 0 and self.written == self.items)


def stamped(path: Path, suffix: str, now: datetime) -> Path:
    """``path`` + ``suffix`` + a UTC timestamp, made unique with ``-N`` if already taken."""
    base = f"{path.name}{suffix}{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    candidate, n = path.with_name(base), 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{base}-{n}")
    return candidate


async def replay_file(
    path: str | os.PathLike[str],
    sink: CountingSink,
    *,
    page_size: int = 100,
    on_record: OnRecord | None = None,
    now: datetime | None = None,
) -> ReplayReport:
    """Resubmit every record of the dead-letter file ``path`` into the open ``sink``.

    The file is first renamed to ``FILE.replaying-<UTC time>`` (so what a running coordinator
    dead-letters meanwhile starts a new ``FILE``), read in pages of ``page_size`` records and
    submitted through a ``WriteCoordinator`` (on a private feedback bus). When every item was
    stored it is renamed to ``FILE.replayed-<UTC time>``; otherwise it stays at its
    ``.replaying-`` name (``kept_at``), to be replayed again. Items that are not valid bars
    are counted in ``invalid`` and keep the file from being archived. A missing file is
    not an error: the report says ``found=False``.

    Args:
        path: the NDJSON file a ``DeadLetterQueue`` of bars wrote.
        sink: an open bar sink; it upserts, so replaying a file twice stores nothing twice.
        page_size: records read at a time (memory stays bounded for large files).
        on_record: called with (index, record, bars) for each record as it is submitted.
        now: the time used in the file names (default: now).
    """
    source = Path(path)
    when = now or datetime.now(UTC)
    claimed = await asyncio.to_thread(_move, source, CLAIMED_SUFFIX, when)
    if claimed is None:
        return ReplayReport(path=source)
    dlq: DeadLetterQueue[Bar] = DeadLetterQueue(claimed)
    rows_before = await sink.count()
    records = items = invalid = 0
    coordinator: WriteCoordinator[Bar] = WriteCoordinator(
        sink=sink, coord_id="dlq-replay", bus=FeedbackBus()
    )
    async with coordinator:
        while page := await dlq.replay(page_size, offset=records):
            for record in page:
                bars = []
                for item in record.items:
                    try:
                        bars.append(Bar.model_validate(item))
                    except ValidationError as exc:
                        invalid += 1
                        logger.warning("DLQ {}: not a valid bar: {}", claimed, exc)
                if on_record is not None:
                    on_record(records, record, bars)
                items += len(record.items)
                records += 1
                await coordinator.submit_many(bars)
    report = ReplayReport(
        path=source,
        found=True,
        records=records,
        items=items,
        written=coordinator.stats().written,
        invalid=invalid,
        rows_before=rows_before,
        rows_after=await sink.count(),
    )
    if not report.complete:
        return replace(report, kept_at=claimed)
    archived = await asyncio.to_thread(_move, claimed, ARCHIVED_SUFFIX, when, source)
    return replace(report, archived_to=archived)


def _move(path: Path, suffix: str, now: datetime, named_after: Path | None = None) -> Path | None:
    """Rename ``path`` to ``stamped(named_after or path, suffix, now)``; None if it is absent."""
    if not path.is_file():
        return None
    target = stamped(named_after or path, suffix, now)
    path.rename(target)
    return target
