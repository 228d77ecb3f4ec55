"""Unknown MDS_* variables are reported once with a "did you mean", never silently ignored."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from market_data_store import (
    CoordinatorRuntimeSettings,
    FeedbackSettings,
    UnknownSettingWarning,
    _settings,
)
from market_data_store._settings import MdsSettings, known_variables

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MDS_* variable from outside, no .env, and no name reported yet in this process."""
    for name in list(os.environ):
        if name.upper().startswith("MDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_settings, "_warned", set())


def warned(build: Callable[[], object]) -> list[str]:
    """The UnknownSettingWarning messages raised while ``build()`` runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build()
    return [str(w.message) for w in caught if issubclass(w.category, UnknownSettingWarning)]


def test_a_guessed_webhook_name_suggests_the_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_FB_WEBHOOK_URL warns and points to MDS_FB_FEEDBACK_WEBHOOK_URL."""
    monkeypatch.setenv("MDS_FB_WEBHOOK_URL", "http://127.0.0.1:8080/hook")
    with pytest.warns(UnknownSettingWarning, match="did you mean MDS_FB_FEEDBACK_WEBHOOK_URL"):
        FeedbackSettings()


def test_a_typo_suggests_the_variable_it_misspells(monkeypatch: pytest.MonkeyPatch) -> None:
    """MDS_CAPASITY warns, is ignored, and points to MDS_CAPACITY."""
    monkeypatch.setenv("MDS_CAPASITY", "5")
    with pytest.warns(UnknownSettingWarning, match=r"MDS_CAPASITY .*did you mean MDS_CAPACITY\?"):
        settings = CoordinatorRuntimeSettings()
    assert settings.capacity == 10_000


def test_each_unknown_name_warns_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building settings again (either class) does not repeat a warning already given."""
    monkeypatch.setenv("MDS_CAPASITY", "5")
    assert len(warned(CoordinatorRuntimeSettings)) == 1
    assert warned(CoordinatorRuntimeSettings) == []
    assert warned(FeedbackSettings) == []


def test_unknown_names_in_dotenv_warn_too(tmp_path: Path) -> None:
    """An unknown MDS_ line of .env warns, naming .env as its source."""
    (tmp_path / ".env").write_text("MDS_WORKER=3\nMDS_COORD_ID=bars\n")
    messages = warned(CoordinatorRuntimeSettings)
    assert len(messages) == 1
    assert re.search(r"MDS_WORKER \(\.env\).*did you mean MDS_WORKERS\?", messages[0])


def test_each_class_knows_the_other_ones_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MDS_FB_* names are not unknown to CoordinatorRuntimeSettings, nor MDS_* to feedback."""
    monkeypatch.setenv("MDS_FB_FEEDBACK_WEBHOOK_URL", "http://127.0.0.1:8080/hook")
    monkeypatch.setenv("MDS_FB_HTTP_TIMEOUT", "1.5")
    monkeypatch.setenv("mds_capacity", "64")
    (tmp_path / ".env").write_text("MDS_WORKERS=2\nMDS_FB_HTTP_MAX_RETRIES=1\n")
    assert warned(CoordinatorRuntimeSettings) == []
    assert warned(FeedbackSettings) == []


def test_other_prefixes_are_not_looked_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Variables without the MDS_ prefix (MDSX_, OTHER_APP) never warn."""
    monkeypatch.setenv("MDSX_CAPACITY", "1")
    monkeypatch.setenv("OTHER_APP_CAPACITY", "1")
    (tmp_path / ".env").write_text("OTHER_APP=1\nMDSCAPACITY=2\n")
    assert warned(CoordinatorRuntimeSettings) == []


def test_known_names_follow_the_settings_classes_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field added to a settings class is known at once: no hand-kept list to update."""

    class ExtraSettings(MdsSettings):
        model_config = SettingsConfigDict(env_prefix="MDS_", extra="ignore")
        recover_watermark_for_test: int = 0

    monkeypatch.setenv("MDS_RECOVER_WATERMARK_FOR_TEST", "3")
    assert "MDS_RECOVER_WATERMARK_FOR_TEST" in known_variables()
    assert warned(CoordinatorRuntimeSettings) == []
    assert ExtraSettings().recover_watermark_for_test == 3


def test_every_mds_variable_the_library_names_is_known() -> None:
    """Each "MDS_..." string literal in src/ (a variable read somewhere) is a known name."""
    literals = {
        match
        for path in SRC.rglob("*.py")
        for match in re.findall(r"[\"'](MDS_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text())
    }
    assert "MDS_REQUIRE_POSTGRES" in literals
    assert sorted(literals - known_variables()) == []
