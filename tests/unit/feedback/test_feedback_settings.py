"""FeedbackSettings: MDS_FB_* from the environment and .env, validation naming the variable."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from market_data_store.coordinator.settings import CoordinatorRuntimeSettings, FeedbackSettings
from market_data_store.errors import ConfigError

URL = "https://hooks.example.com/feedback"
SECRET = "whsec_" + base64.b64encode(b"settings-test-secret-32-bytes!!!").decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MDS_* variable from the outer environment, and a cwd without a .env file."""
    for key in list(os.environ):
        if key.upper().startswith("MDS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_dotenv(directory: Path, **values: str) -> None:
    lines = [f"{key}={value}" for key, value in values.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n")


def test_defaults_disable_the_broadcast() -> None:
    """With nothing configured the broadcast is off, timeout 2 s, 3 retries, no secret."""
    settings = FeedbackSettings()
    assert settings.enable_http_broadcast is False
    assert settings.feedback_webhook_url is None
    assert settings.http_timeout == 2.0
    assert settings.http_max_retries == 3
    assert settings.webhook_secret is None


def test_reads_every_variable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_FB_* environment variables fill every field."""
    monkeypatch.setenv("MDS_FB_ENABLE_HTTP_BROADCAST", "true")
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", URL)
    monkeypatch.setenv("MDS_FB_HTTP_TIMEOUT", "0.5")
    monkeypatch.setenv("MDS_FB_HTTP_MAX_RETRIES", "0")
    monkeypatch.setenv("MDS_FB_WEBHOOK_SECRET", SECRET)
    settings = FeedbackSettings()
    assert settings.enable_http_broadcast is True
    assert settings.feedback_webhook_url == URL
    assert settings.http_timeout == 0.5
    assert settings.http_max_retries == 0
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == SECRET


def test_reads_a_dotenv_file_in_the_working_directory(clean_env: Path) -> None:
    """A .env file in the current directory is read like the environment."""
    write_dotenv(
        clean_env,
        MDS_FB_ENABLE_HTTP_BROADCAST="1",
        MDS_FB_FEEDBACK_WEBHOOK_URL=URL,
        MDS_FB_HTTP_TIMEOUT="1.5",
        MDS_FB_WEBHOOK_SECRET=SECRET,
    )
    settings = FeedbackSettings()
    assert settings.enable_http_broadcast is True
    assert settings.feedback_webhook_url == URL
    assert settings.http_timeout == 1.5
    assert settings.webhook_secret is not None


def test_argument_beats_environment_beats_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit argument wins over the environment, which wins over .env."""
    write_dotenv(clean_env, MDS_FB_HTTP_TIMEOUT="7", MDS_FB_HTTP_MAX_RETRIES="7")
    monkeypatch.setenv("MDS_FB_HTTP_TIMEOUT", "5")
    settings = FeedbackSettings(http_max_retries=1)
    assert settings.http_timeout == 5.0
    assert settings.http_max_retries == 1


def test_secret_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook secret stays out of repr() so it does not end up in logs."""
    monkeypatch.setenv("MDS_FB_WEBHOOK_SECRET", SECRET)
    settings = FeedbackSettings()
    assert SECRET not in repr(settings)
    assert SECRET.removeprefix("whsec_") not in str(settings)


def test_webhook_url_with_credentials_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in MDS_FB_FEEDBACK_WEBHOOK_URL stays out of repr() and str() of the settings."""
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", "https://ops:pa55w0rd@hooks.example.com/x")
    settings = FeedbackSettings()
    assert settings.feedback_webhook_url == "https://ops:pa55w0rd@hooks.example.com/x"
    assert "pa55w0rd" not in repr(settings) and "pa55w0rd" not in str(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MDS_FB_ENABLE_HTTP_BROADCAST": "true"}, "MDS_FB_FEEDBACK_WEBHOOK_URL"),
        (
            {"MDS_FB_FEEDBACK_WEBHOOK_URL": "ftp://hooks.example.com/x"},
            "MDS_FB_FEEDBACK_WEBHOOK_URL",
        ),
        ({"MDS_FB_FEEDBACK_WEBHOOK_URL": "hooks.example.com/x"}, "MDS_FB_FEEDBACK_WEBHOOK_URL"),
        ({"MDS_FB_FEEDBACK_WEBHOOK_URL": "http://:8080/x"}, "MDS_FB_FEEDBACK_WEBHOOK_URL"),
        ({"MDS_FB_HTTP_TIMEOUT": "0"}, "MDS_FB_HTTP_TIMEOUT"),
        ({"MDS_FB_HTTP_TIMEOUT": "-1"}, "MDS_FB_HTTP_TIMEOUT"),
        ({"MDS_FB_HTTP_MAX_RETRIES": "-1"}, "MDS_FB_HTTP_MAX_RETRIES"),
        ({"MDS_FB_ENABLE_HTTP_BROADCAST": "maybe"}, "MDS_FB_ENABLE_HTTP_BROADCAST"),
        ({"MDS_FB_WEBHOOK_SECRET": "no-prefix"}, "MDS_FB_WEBHOOK_SECRET"),
        ({"MDS_FB_WEBHOOK_SECRET": "whsec_***"}, "MDS_FB_WEBHOOK_SECRET"),
        ({"MDS_FB_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "MDS_FB_WEBHOOK_SECRET"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    """Missing URL when enabled, non-http URL, timeout <= 0, bad secret: ConfigError names it."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=variable) as caught:
        FeedbackSettings()
    assert isinstance(caught.value, ValueError)


def test_bad_value_in_dotenv_is_reported_too(clean_env: Path) -> None:
    """A bad value coming from .env fails the same way as one from the environment."""
    write_dotenv(clean_env, MDS_FB_HTTP_TIMEOUT="-2")
    with pytest.raises(ConfigError, match="MDS_FB_HTTP_TIMEOUT"):
        FeedbackSettings()


def test_malformed_secret_is_not_echoed_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected secret does not appear in the error message."""
    bad = "whsec_abc$secret-material"
    monkeypatch.setenv("MDS_FB_WEBHOOK_SECRET", bad)
    with pytest.raises(ConfigError) as caught:
        FeedbackSettings()
    assert "secret-material" not in str(caught.value)


COORDINATOR_VARIABLES = {
    "MDS_CAPACITY": "100",
    "MDS_WORKERS": "2",
    "MDS_OVERFLOW_STRATEGY": "drop_oldest",
    "MDS_HIGH_WATERMARK": "80",
    "MDS_DLQ_PATH": "/tmp/dlq.ndjson",
}


def test_coordinator_variables_in_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_* coordinator variables in the environment do not disturb FeedbackSettings."""
    for key, value in COORDINATOR_VARIABLES.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MDS_BATCH_SIZE", "not-a-number")  # invalid for the coordinator only
    monkeypatch.setenv("MDS_FB_HTTP_TIMEOUT", "3")
    assert FeedbackSettings().http_timeout == 3.0


def test_coordinator_variables_in_dotenv_are_ignored(clean_env: Path) -> None:
    """MDS_* coordinator variables next to MDS_FB_* ones in .env do not disturb either class."""
    write_dotenv(
        clean_env,
        **COORDINATOR_VARIABLES,
        MDS_FB_ENABLE_HTTP_BROADCAST="true",
        MDS_FB_FEEDBACK_WEBHOOK_URL=URL,
    )
    feedback = FeedbackSettings()
    assert feedback.enable_http_broadcast is True
    assert feedback.feedback_webhook_url == URL
    coordinator = CoordinatorRuntimeSettings()
    assert coordinator.capacity == 100
    assert coordinator.overflow_strategy == "drop_oldest"
