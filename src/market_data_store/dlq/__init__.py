"""Dead-letter files: read them back and replay them into a bar sink.

``DeadLetterQueue`` and ``DLQRecord`` are re-exported from ``market_data_store.coordinator``
(where they stay importable). ``replay_file`` resubmits every record of a file of bars
through a ``WriteCoordinator`` into a sink, then archives the file; the command line does
the same::

    python -m market_data_store.dlq replay FILE --sqlite PATH
    python -m market_data_store.dlq replay FILE --postgres-dsn DSN

Replaying twice stores nothing twice: the sinks upsert on (vendor, symbol, timeframe, ts).
"""

from market_data_store.coordinator.dlq import DeadLetterQueue, DLQRecord
from market_data_store.dlq.replay import ReplayReport, replay_file

__all__ = ["DLQRecord", "DeadLetterQueue", "ReplayReport", "replay_file"]
