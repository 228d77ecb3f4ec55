"""The public API: sorted, importable, complete ``__all__`` lists."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest

import market_data_store
import market_data_store.coordinator as coordinator
import market_data_store.errors as errors
import market_data_store.feedback as feedback
import market_data_store.sinks as sinks

# DESIGN.md section 3 (public API) with the module section 2 places each name in.
CONTRACT = {
    "Sink": "types",
    "BackpressureCallback": "types",
    "QueueFullError": "types",
    "BackpressureLevel": "feedback",
    "FeedbackEvent": "feedback",
    "FeedbackSubscriber": "feedback",
    "FeedbackBus": "feedback",
    "feedback_bus": "feedback",
    "BoundedQueue": "queue",
    "RetryPolicy": "policy",
    "default_retry_classifier": "policy",
    "CircuitBreaker": "policy",
    "CircuitOpenError": "policy",
    "DeadLetterQueue": "dlq",
    "DLQRecord": "dlq",
    "WriteCoordinator": "write_coordinator",
    "CoordinatorHealth": "write_coordinator",
    "CoordinatorRuntimeSettings": "settings",
    "FeedbackSettings": "settings",
    "HttpFeedbackBroadcaster": "http_broadcast",
    "RateController": "rate_controller",
}


def test_all_is_sorted() -> None:
    """coordinator.__all__ is sorted."""
    assert coordinator.__all__ == sorted(coordinator.__all__)


def test_all_has_no_duplicates() -> None:
    """Each name appears in coordinator.__all__ once."""
    assert len(set(coordinator.__all__)) == len(coordinator.__all__)


@pytest.mark.parametrize("name", coordinator.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    """`from market_data_store.coordinator import <name>` works for every name in __all__."""
    namespace: dict[str, object] = {}
    exec(f"from market_data_store.coordinator import {name}", namespace)
    assert namespace[name] is getattr(coordinator, name)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_every_contract_name_is_in_all(name: str) -> None:
    """Each coordinator name of DESIGN.md section 3 is exported by coordinator.__all__."""
    assert name in coordinator.__all__


@pytest.mark.parametrize(("name", "module"), sorted(CONTRACT.items()))
def test_every_contract_name_lives_in_its_documented_module(name: str, module: str) -> None:
    """Each contract name is importable from the module DESIGN.md section 2 places it in."""
    mod = importlib.import_module(f"market_data_store.coordinator.{module}")
    assert hasattr(mod, name)


def test_package_all_is_sorted_and_importable() -> None:
    """market_data_store.__all__ is sorted and each name resolves on the package."""
    names = market_data_store.__all__
    assert names == sorted(names)
    assert all(hasattr(market_data_store, name) for name in names)


@pytest.mark.parametrize("name", ["Bar", "PostgresBarsSink", "SqliteBarsSink", "WriteCoordinator"])
def test_package_reexports_the_main_names(name: str) -> None:
    """The sinks and the coordinator's main names are importable from market_data_store."""
    assert name in market_data_store.__all__
    if hasattr(coordinator, name):
        assert getattr(market_data_store, name) is getattr(coordinator, name)


# DESIGN.md section 8: the signal path's package and the module each name moved to.
SIGNAL_PATH = {
    "BackpressureLevel": "events",
    "FeedbackEvent": "events",
    "FeedbackSubscriber": "events",
    "FeedbackBus": "bus",
    "feedback_bus": "bus",
    "HttpFeedbackBroadcaster": "http_broadcast",
    "RateController": "rate_controller",
    "FeedbackSettings": "settings",
}


def test_feedback_package_all_is_sorted_and_importable() -> None:
    """market_data_store.feedback.__all__ is sorted and each name resolves on the package."""
    names = feedback.__all__
    assert names == sorted(names)
    assert all(hasattr(feedback, name) for name in names)


@pytest.mark.parametrize(("name", "module"), sorted(SIGNAL_PATH.items()))
def test_signal_path_names_live_in_the_feedback_package(name: str, module: str) -> None:
    """Each signal-path name is defined in market_data_store.feedback and is the very object
    the coordinator re-exports (moved, not copied)."""
    mod = importlib.import_module(f"market_data_store.feedback.{module}")
    obj = getattr(mod, name)
    assert getattr(feedback, name) is obj
    assert getattr(coordinator, name) is obj
    assert obj.__module__ == f"market_data_store.feedback.{module}"


# The top-level package (issue 13.3): DESIGN.md section 3 plus every exception and the stats.
PACKAGE_CONTRACT = sorted(
    {*CONTRACT, "Bar", "SqliteBarsSink", "PostgresBarsSink", "CoordinatorStats"}
    | {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    }
)


def test_package_exports_every_exception_of_the_error_tree() -> None:
    """Every exception class market_data_store.errors defines is in the package's __all__."""
    error_names = [name for name in PACKAGE_CONTRACT if name.endswith("Error")]
    assert {"QueueFullError", "ConfigError", "MarketDataStoreError"} <= set(error_names)
    assert [name for name in error_names if name not in market_data_store.__all__] == []


@pytest.mark.parametrize("name", PACKAGE_CONTRACT)
def test_package_all_is_complete(name: str) -> None:
    """Each public name (section 3, the errors, CoordinatorStats) is importable from the
    package and is the very object the defining package exports."""
    assert name in market_data_store.__all__
    namespace: dict[str, object] = {}
    exec(f"from market_data_store import {name}", namespace)
    for home in (coordinator, errors, sinks):
        if hasattr(home, name):
            assert namespace[name] is getattr(home, name)


def test_package_docstring_opens_with_a_runnable_quickstart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """help(market_data_store) starts with a one-line summary and a quickstart that runs."""
    doc = market_data_store.__doc__ or ""
    summary, _, rest = doc.partition("\n")
    assert "market data" in summary.lower()
    code = textwrap.dedent(rest.split("::\n", 1)[1].split("\n\n``", 1)[0])
    assert "WriteCoordinator" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "market_data_store.__doc__", "exec"), {"__name__": "quickstart"})
    assert capsys.readouterr().out.strip() == "1"
