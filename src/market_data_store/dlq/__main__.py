"""``python -m market_data_store.dlq replay FILE --sqlite PATH | --postgres-dsn DSN``.

Resubmits every record of a dead-letter file of bars into the database, prints what it
stored, and archives the file as ``FILE.replayed-<UTC time>``. Exit status: 0 when every item
was stored (or there was no file), 1 when some were not (the file is then kept as
``FILE.replaying-<UTC time>``: replay that file again), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from market_data_store.coordinator.dlq import DLQRecord
from market_data_store.dlq.replay import ReplayReport, replay_file
from market_data_store.sinks import Bar, PostgresBarsSink, SqliteBarsSink


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m market_data_store.dlq", description="Dead-letter file tools."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser(
        "replay", help="resubmit a dead-letter file of bars into a database, then archive it"
    )
    replay.add_argument("file", help="the NDJSON file a DeadLetterQueue wrote")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--sqlite", metavar="PATH", help="SQLite database (SqliteBarsSink)")
    target.add_argument("--postgres-dsn", metavar="DSN", help="PostgreSQL (PostgresBarsSink)")
    replay.add_argument("--page-size", type=int, default=100, help="records read at a time")
    args = parser.parse_args(argv)
    if args.page_size <= 0:
        parser.error("--page-size must be > 0")
    return args


def print_record(index: int, record: DLQRecord[Any], bars: list[Bar]) -> None:
    when = datetime.fromtimestamp(record.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    symbols = ",".join(sorted({bar.symbol for bar in bars})) or "-"
    error = record.error if len(record.error) <= 60 else record.error[:57] + "..."
    print(f"record {index + 1}: {len(bars)} bars ({symbols}) dead-lettered {when} UTC: {error}")


def print_report(report: ReplayReport, target: str) -> None:
    if not report.found:
        print(f"nothing to replay: {report.path} does not exist")
        return
    print(
        f"stored {report.written} of {report.items} bars from {report.records} records into "
        f"{target}: {report.new_rows} new rows ({report.rows_after} rows now)"
    )
    if report.invalid:
        print(f"{report.invalid} items are not valid bars and were not stored")
    if report.archived_to is not None:
        print(f"archived {report.path} as {report.archived_to}")
    elif report.kept_at is not None:
        print(f"not every bar was stored: the records stay in {report.kept_at}")


async def replay(args: argparse.Namespace) -> int:
    sink: SqliteBarsSink | PostgresBarsSink
    if args.sqlite is not None:
        sink, target = SqliteBarsSink(args.sqlite), f"SQLite {args.sqlite}"
    else:
        sink, target = PostgresBarsSink(args.postgres_dsn), "PostgreSQL"
    async with sink:
        report = await replay_file(
            args.file, sink, page_size=args.page_size, on_record=print_record
        )
    print_report(report, target)
    return 0 if report.complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parse_args(argv)
    return asyncio.run(replay(args))


if __name__ == "__main__":
    sys.exit(main())
