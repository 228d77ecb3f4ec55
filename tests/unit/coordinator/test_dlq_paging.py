"""DeadLetterQueue.replay pages through a file with max_records and offset (issue 13.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from market_data_store.coordinator import DeadLetterQueue
from market_data_store.errors import ConfigError


async def filled(path: Path, n: int) -> DeadLetterQueue[int]:
    dlq: DeadLetterQueue[int] = DeadLetterQueue(path)
    for i in range(n):
        await dlq.save([i], "e")
    return dlq


async def test_pages_cover_every_record_once_in_order(tmp_path: Path) -> None:
    """offset += len(page) walks the whole file: every record once, in file order."""
    dlq = await filled(tmp_path / "dlq.ndjson", 7)
    seen: list[list[int]] = []
    offset = 0
    while page := await dlq.replay(3, offset=offset):
        seen += [r.items for r in page]
        offset += len(page)
    assert seen == [[i] for i in range(7)]


async def test_offset_past_the_end_is_an_empty_page(tmp_path: Path) -> None:
    """An offset at or past the last record returns no records."""
    dlq = await filled(tmp_path / "dlq.ndjson", 2)
    assert await dlq.replay(5, offset=2) == []
    assert await dlq.replay(5, offset=10) == []


async def test_corrupt_lines_take_no_place_in_the_numbering(
    tmp_path: Path, log_messages: list[str]
) -> None:
    """A corrupt line is skipped and not counted, and reported only by the page it falls in."""
    path = tmp_path / "dlq.ndjson"
    dlq = await filled(path, 2)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("not json\n")
    await dlq.save([2], "e")
    assert [r.items for r in await dlq.replay(2)] == [[0], [1]]
    assert [r.items for r in await dlq.replay(2, offset=2)] == [[2]]
    assert [r.items for r in await dlq.replay(2, offset=3)] == []
    assert sum("corrupt line 3" in m for m in log_messages) == 1


@pytest.mark.parametrize(
    ("max_records", "offset", "named"),
    [
        (-1, 0, "max_records"),
        (10, -1, "offset"),
        (float("nan"), 0, "max_records"),
        (2.5, 0, "max_records"),
        (10, True, "offset"),
    ],
)
async def test_bad_arguments_are_rejected(
    tmp_path: Path, max_records: Any, offset: Any, named: str
) -> None:
    """A negative, NaN, fractional or boolean max_records or offset raises ConfigError
    naming it."""
    dlq = await filled(tmp_path / "dlq.ndjson", 1)
    with pytest.raises(ConfigError, match=named):
        await dlq.replay(max_records, offset=offset)


async def test_paging_parses_each_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """offset += len(page) resumes where the last page stopped: walking a file of 60 records
    in pages of 5 parses 60 lines, not 5 + 10 + ... + 60 (a re-scan per page)."""
    dlq = await filled(tmp_path / "dlq.ndjson", 60)
    parsed = 0
    parse = DeadLetterQueue._parse

    def counting(line: str) -> Any:
        nonlocal parsed
        parsed += 1
        return parse(line)

    monkeypatch.setattr(DeadLetterQueue, "_parse", staticmethod(counting))
    offset = 0
    while page := await dlq.replay(5, offset=offset):
        offset += len(page)
    assert offset == 60
    assert parsed == 60


async def test_a_last_line_still_being_written_is_read_again_once_complete(
    tmp_path: Path,
) -> None:
    """A line cut short at the end of the file is skipped as corrupt for now, but the next
    page starts before it: once its writer finishes it, it is read as a record."""
    path = tmp_path / "dlq.ndjson"
    dlq = await filled(path, 2)
    whole = dlq.encode_record([99], "e", None)
    with path.open("a") as fh:
        fh.write(whole[:10])  # the writer has not finished yet
    assert [r.items for r in await dlq.replay(10)] == [[0], [1]]
    with path.open("a") as fh:
        fh.write(whole[10:] + "\n")
    assert [r.items for r in await dlq.replay(10, offset=2)] == [[99]]


async def test_a_file_replaced_under_the_same_path_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    """The position kept from the last page belongs to the file it was read from."""
    path = tmp_path / "dlq.ndjson"
    dlq = await filled(path, 3)
    assert len(await dlq.replay(3)) == 3
    other = await filled(tmp_path / "other.ndjson", 5)
    other.path.replace(path)
    assert [r.items for r in await dlq.replay(10, offset=3)] == [[3], [4]]
