"""CoordinatorRuntimeSettings: MDS_* from the environment and .env, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from market_data_store.coordinator.settings import CoordinatorRuntimeSettings
from market_data_store.coordinator.types import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MDS_* variable from the outer environment, no .env from the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("MDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_coordinator_defaults() -> None:
    """Without variables the settings equal WriteCoordinator's own defaults."""
    s = CoordinatorRuntimeSettings()
    assert (s.coord_id, s.capacity, s.workers, s.batch_size) == ("default", 10_000, 4, None)
    assert (s.flush_interval, s.overflow_strategy) == (0.25, "block")
    assert (s.high_watermark, s.low_watermark, s.dlq_path) == (None, None, None)
    assert (s.retry_max_attempts, s.retry_initial_backoff_ms, s.retry_max_backoff_ms) == (
        5,
        50,
        2000,
    )
    assert (s.breaker_failure_threshold, s.breaker_half_open_after_sec) == (5, 60.0)


def test_reads_mds_variables_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_* variables (any case) are read and converted to their types."""
    monkeypatch.setenv("MDS_CAPACITY", "2000")
    monkeypatch.setenv("MDS_WORKERS", "8")
    monkeypatch.setenv("mds_flush_interval", "0.5")
    monkeypatch.setenv("MDS_OVERFLOW_STRATEGY", "drop_oldest")
    monkeypatch.setenv("MDS_HIGH_WATERMARK", "1500")
    monkeypatch.setenv("MDS_RETRY_JITTER", "false")
    monkeypatch.setenv("MDS_DLQ_PATH", "/var/tmp/dlq.ndjson")
    s = CoordinatorRuntimeSettings()
    assert (s.capacity, s.workers, s.flush_interval) == (2000, 8, 0.5)
    assert (s.overflow_strategy, s.high_watermark, s.retry_jitter) == ("drop_oldest", 1500, False)
    assert s.dlq_path == Path("/var/tmp/dlq.ndjson")


def test_reads_mds_variables_from_a_dotenv_file(tmp_path: Path) -> None:
    """A .env file in the working directory supplies MDS_* values too."""
    (tmp_path / ".env").write_text("MDS_CAPACITY=300\nMDS_COORD_ID=from-dotenv\n")
    s = CoordinatorRuntimeSettings()
    assert (s.capacity, s.coord_id) == (300, "from-dotenv")


def test_environment_beats_dotenv_and_arguments_beat_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Explicit argument > environment variable > .env > default."""
    (tmp_path / ".env").write_text("MDS_CAPACITY=300\nMDS_WORKERS=3\n")
    monkeypatch.setenv("MDS_CAPACITY", "400")
    assert (CoordinatorRuntimeSettings().capacity, CoordinatorRuntimeSettings().workers) == (
        400,
        3,
    )
    assert CoordinatorRuntimeSettings(capacity=500).capacity == 500


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MDS_CAPACITY", "0"),
        ("MDS_CAPACITY", "lots"),
        ("MDS_WORKERS", "0"),
        ("MDS_BATCH_SIZE", "-1"),
        ("MDS_FLUSH_INTERVAL", "0"),
        ("MDS_FLUSH_INTERVAL", "soon"),
        ("MDS_OVERFLOW_STRATEGY", "sideways"),
        ("MDS_HIGH_WATERMARK", "20000"),  # above the default capacity
        ("MDS_LOW_WATERMARK", "9000"),  # not below the default high watermark (8000)
        ("MDS_LOW_WATERMARK", "-1"),
        ("MDS_COORD_ID", ""),
        ("MDS_RETRY_MAX_ATTEMPTS", "0"),
        ("MDS_RETRY_INITIAL_BACKOFF_MS", "-5"),
        ("MDS_RETRY_MAX_BACKOFF_MS", "10"),  # below the initial backoff (50)
        ("MDS_RETRY_BACKOFF_MULTIPLIER", "0.5"),
        ("MDS_RETRY_JITTER", "maybe"),
        ("MDS_BREAKER_FAILURE_THRESHOLD", "0"),
        ("MDS_BREAKER_HALF_OPEN_AFTER_SEC", "0"),
    ],
)
def test_invalid_variable_raises_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Each invalid MDS_* value raises ConfigError whose message names the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        CoordinatorRuntimeSettings()


def test_invalid_dotenv_value_names_the_variable(tmp_path: Path) -> None:
    """A bad value in .env is reported by its variable name as well."""
    (tmp_path / ".env").write_text("MDS_WORKERS=none\n")
    with pytest.raises(ConfigError, match="MDS_WORKERS"):
        CoordinatorRuntimeSettings()


def test_config_error_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """ConfigError is also a ValueError, so generic handlers catch it."""
    monkeypatch.setenv("MDS_CAPACITY", "-1")
    with pytest.raises(ValueError, match="MDS_CAPACITY"):
        CoordinatorRuntimeSettings()


FEEDBACK_VARIABLES = {
    "MDS_FB_ENABLE_HTTP_BROADCAST": "true",
    "MDS_FB_FEEDBACK_WEBHOOK_URL": "https://example.invalid/hook",
    "MDS_FB_HTTP_TIMEOUT": "not-a-number",  # invalid for FeedbackSettings, none of ours
    "MDS_FB_HTTP_MAX_RETRIES": "3",
    "MDS_FB_WEBHOOK_SECRET": "whsec_bm90LWEtcmVhbC1zZWNyZXQ=",
}


def test_feedback_variables_in_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MDS_FB_* variables (even ones invalid for FeedbackSettings) do not disturb these."""
    for name, value in FEEDBACK_VARIABLES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MDS_CAPACITY", "64")
    s = CoordinatorRuntimeSettings()
    assert (s.capacity, s.workers) == (64, 4)


def test_feedback_variables_in_dotenv_are_ignored(tmp_path: Path) -> None:
    """MDS_FB_* lines in .env do not disturb CoordinatorRuntimeSettings."""
    lines = [f"{name}={value}" for name, value in FEEDBACK_VARIABLES.items()]
    (tmp_path / ".env").write_text("\n".join([*lines, "MDS_CAPACITY=64", "OTHER_APP=1"]) + "\n")
    s = CoordinatorRuntimeSettings()
    assert (s.capacity, s.workers) == (64, 4)
