"""examples/grafana/market-data-store.json queries only metrics the library exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import market_data_store
from market_data_store import FeedbackBus, WriteCoordinator

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "examples" / "grafana" / "market-data-store.json").read_text())
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
}


class NullSink:
    async def write(self, batch: Sequence[int]) -> None:
        pass


def queries(node: Any) -> Iterator[str]:
    """Every PromQL string of the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str) and "(" in value:
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from queries(value)


def queried_metrics() -> set[str]:
    return {name for q in queries(DASHBOARD) for name in re.findall(r"\bmds_\w+", q)}


async def exported_metrics() -> set[str]:
    """Names a scrape of the default registry can show, after a coordinator has run."""
    assert market_data_store.__name__  # the package (and its metrics) imported
    coordinator: WriteCoordinator[int] = WriteCoordinator(sink=NullSink(), bus=FeedbackBus())
    async with coordinator:
        await coordinator.submit_many(range(10))
        names: set[str] = set()
        for family in REGISTRY.collect():
            names.add(family.name)
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_queries_something() -> None:
    """The extraction finds the dashboard's metrics (the check below is not vacuous)."""
    assert {"mds_queue_depth", "mds_feedback_events_total"} <= queried_metrics()


async def test_every_metric_the_dashboard_queries_is_exported() -> None:
    """Each mds_* name in the dashboard's queries is one the default registry exports."""
    assert sorted(queried_metrics() - await exported_metrics()) == []


@pytest.mark.parametrize("panel", DASHBOARD["panels"], ids=lambda p: p["title"])
def test_every_panel_has_a_query_and_a_readme_description(panel: dict[str, Any]) -> None:
    """Each panel queries something and the README describes it under its title."""
    assert [t["expr"] for t in panel["targets"] if t.get("expr")]
    assert f"**{panel['title']}**" in (ROOT / "README.md").read_text()
