"""Queue tuning of the coordinator (recover watermark, max batch size): arguments and MDS_*."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from market_data_store.coordinator import WriteCoordinator
from market_data_store.coordinator.settings import CoordinatorRuntimeSettings
from market_data_store.coordinator.types import ConfigError
from market_data_store.feedback import FeedbackBus


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MDS_* variable from the outer environment, no .env from the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("MDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class NullSink:
    """Accepts every batch."""

    async def write(self, batch: Sequence[int]) -> None:
        return None


def test_coordinator_passes_recover_watermark_to_its_queue() -> None:
    """WriteCoordinator(recover_watermark=...) sets the queue's recover watermark."""
    coord: WriteCoordinator[int] = WriteCoordinator(
        sink=NullSink(), capacity=100, recover_watermark=10, bus=FeedbackBus()
    )
    assert coord.queue.recover_watermark == 10
    default: WriteCoordinator[int] = WriteCoordinator(sink=NullSink(), bus=FeedbackBus())
    assert default.queue.recover_watermark == 4_500


def test_coordinator_rejects_recover_watermark_above_low() -> None:
    """A recover watermark above the low watermark is a ConfigError naming the argument."""
    with pytest.raises(ConfigError, match="recover_watermark"):
        WriteCoordinator(
            sink=NullSink(), capacity=100, low_watermark=40, recover_watermark=41, bus=FeedbackBus()
        )


def test_recover_watermark_is_read_from_mds_recover_watermark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MDS_RECOVER_WATERMARK reaches the coordinator built by from_settings()."""
    monkeypatch.setenv("MDS_RECOVER_WATERMARK", "4000")
    assert CoordinatorRuntimeSettings().recover_watermark == 4000
    coord: WriteCoordinator[int] = WriteCoordinator.from_settings(
        sink=NullSink(), bus=FeedbackBus()
    )
    assert coord.queue.recover_watermark == 4000


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ({}, "-1"),
        ({}, "5001"),  # above the default low watermark (5,000)
        ({"MDS_LOW_WATERMARK": "100"}, "101"),
        ({}, "lots"),
    ],
)
def test_invalid_mds_recover_watermark_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], value: str
) -> None:
    """MDS_RECOVER_WATERMARK outside 0..low raises ConfigError naming the variable."""
    for name, other in env.items():
        monkeypatch.setenv(name, other)
    monkeypatch.setenv("MDS_RECOVER_WATERMARK", value)
    with pytest.raises(ConfigError, match="MDS_RECOVER_WATERMARK"):
        CoordinatorRuntimeSettings()


def test_max_batch_size_is_read_from_mds_max_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_MAX_BATCH_SIZE reaches the coordinator built by from_settings()."""
    monkeypatch.setenv("MDS_MAX_BATCH_SIZE", "3000")
    assert CoordinatorRuntimeSettings().max_batch_size == 3000
    coord: WriteCoordinator[int] = WriteCoordinator.from_settings(
        sink=NullSink(), bus=FeedbackBus()
    )
    assert coord.max_batch_size == 3000


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ({}, "0"),
        ({}, "499"),  # below the default batch size (500)
        ({}, "10001"),  # above the default capacity (10,000)
        ({"MDS_BATCH_SIZE": "100", "MDS_CAPACITY": "1000"}, "1001"),
        ({}, "many"),
    ],
)
def test_invalid_mds_max_batch_size_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], value: str
) -> None:
    """MDS_MAX_BATCH_SIZE outside batch size..capacity raises ConfigError naming the variable."""
    for name, other in env.items():
        monkeypatch.setenv(name, other)
    monkeypatch.setenv("MDS_MAX_BATCH_SIZE", value)
    with pytest.raises(ConfigError, match="MDS_MAX_BATCH_SIZE"):
        CoordinatorRuntimeSettings()
