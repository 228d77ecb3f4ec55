"""Prometheus metrics (default registry) of the bar sinks, labelled by sink name.

Each sink looks its labelled children up once when it is built, so a batch costs two
unlabelled updates (rows, latency) and no label lookup.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from market_data_store.coordinator.types import SinkError

SINK_ROWS_WRITTEN = Counter("mds_sink_rows_written", "Rows written by bar sinks", ["sink"])
SINK_WRITE_LATENCY = Histogram(
    "mds_sink_write_latency_seconds",
    "Duration of successful batch writes by bar sinks",
    ["sink"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SINK_WRITE_ERRORS = Counter(
    "mds_sink_write_errors", "Failed batch writes by bar sinks", ["sink", "kind"]
)


class SinkMetrics:
    """The labelled children one sink updates, looked up once."""

    __slots__ = ("_latency", "_permanent_errors", "_retryable_errors", "_rows")

    def __init__(self, sink: str) -> None:
        self._rows = SINK_ROWS_WRITTEN.labels(sink=sink)
        self._latency = SINK_WRITE_LATENCY.labels(sink=sink)
        self._retryable_errors = SINK_WRITE_ERRORS.labels(sink=sink, kind="retryable")
        self._permanent_errors = SINK_WRITE_ERRORS.labels(sink=sink, kind="permanent")

    def written(self, rows: int, seconds: float) -> None:
        """Count one successful batch of ``rows`` rows that took ``seconds``."""
        self._rows.inc(rows)
        self._latency.observe(seconds)

    def failed(self, error: SinkError) -> None:
        """Count one failed batch, by whether it may be retried."""
        (self._retryable_errors if error.retryable else self._permanent_errors).inc()
