"""stop() stays bounded with the DLQ on a real filesystem that hangs (a frozen loop mount).

Needs root, a loop device, mkfs.ext4 and fsfreeze; skips otherwise. The filesystem is thawed
and unmounted whatever happens in the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from market_data_store.coordinator import DeadLetterQueue, FeedbackBus, WriteCoordinator
from market_data_store.testing.waits import wait_until

TOOLS = ("mkfs.ext4", "mount", "umount", "fsfreeze")


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


class FrozenMount:
    """An ext4 image mounted on a loop device, which the test can freeze and thaw."""

    def __init__(self, base: Path) -> None:
        self.image = base / "fs.img"
        self.path = base / "mnt"
        self.frozen = False

    def mount(self) -> None:
        with self.image.open("wb") as fh:
            fh.truncate(8 * 2**20)
        _run("mkfs.ext4", "-q", "-F", str(self.image))
        self.path.mkdir()
        _run("mount", "-o", "loop", str(self.image), str(self.path))

    def freeze(self) -> None:
        _run("fsfreeze", "-f", str(self.path))
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            _run("fsfreeze", "-u", str(self.path))
            self.frozen = False


@pytest.fixture
def frozen_mount(tmp_path: Path) -> Iterator[FrozenMount]:
    """A mounted loop filesystem; thawed and unmounted at the end, or the test skips."""
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool in TOOLS):
        pytest.skip("needs root, mkfs.ext4, mount and fsfreeze")
    fs = FrozenMount(tmp_path)
    try:
        fs.mount()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a loop filesystem here: {exc}")
    try:
        yield fs
    finally:
        fs.thaw()
        _run("umount", str(fs.path))


class HangingSink:
    async def write(self, batch: Sequence[Any]) -> None:
        await asyncio.Future()


async def test_stop_is_bounded_with_the_dlq_on_a_frozen_filesystem(
    frozen_mount: FrozenMount,
) -> None:
    """stop(timeout=0.3) returns within 0.8 s with the DLQ's filesystem frozen; the items
    count as dlq_failed, then as dead-lettered once the filesystem thaws and the save lands."""
    dlq: DeadLetterQueue[int] = DeadLetterQueue(frozen_mount.path / "dlq" / "dlq.ndjson")
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=HangingSink(), workers=1, batch_size=10, dlq=dlq, bus=FeedbackBus()
    )
    await coord.start()
    await coord.submit_many(range(100))
    frozen_mount.freeze()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await coord.stop(timeout=0.3)
        assert loop.time() - started < 0.8
        assert coord.stats().dropped == {"dlq_failed": 100}
    finally:
        frozen_mount.thaw()
    await wait_until(lambda: coord.stats().dead_lettered == 100, timeout=10.0)
    assert coord.stats().dropped == {}
    assert sorted(i for r in await dlq.replay(max_records=100) for i in r.items) == list(range(100))
