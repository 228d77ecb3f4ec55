"""Dead-letter queue: failed batches appended to an NDJSON file, one batch a line."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from loguru import logger
from pydantic import BaseModel

from market_data_store._validation import check_int

T = TypeVar("T")


class _Cursor(NamedTuple):
    """Where a read of the file stopped: records counted, lines read, byte position, and
    which file ((st_dev, st_ino)) it was."""

    offset: int
    lineno: int
    position: int
    file: tuple[int, int]


@dataclass(frozen=True)
class DLQRecord(Generic[T]):
    """One failed batch as read back: ``items`` hold the decoded JSON values.

    Args:
        ts: when the batch was saved (Unix seconds).
        error: why it failed, ``"TypeName: message"``.
        metadata: what the saver attached (a coordinator: its id, the worker, attempts, reason).
        items: the batch's items as JSON values (dicts for models and dataclasses).
    """

    ts: float
    error: str
    metadata: dict[str, Any] = field(default_factory=dict)
    items: list[Any] = field(default_factory=list)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal | uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return repr(obj)  # never lose the record over an unknown type: keep a readable form


async def _in_daemon_thread(func: Callable[..., None], *args: Any) -> None:
    """Run ``func(*args, cancelled)`` in a new daemon thread and wait for it. Cancelling the
    wait sets ``cancelled``, so that ``func`` can skip work it has not begun."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    cancelled = threading.Event()

    def report(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        try:
            func(*args, cancelled)
        except BaseException as exc:  # handed to the waiting coroutine
            error = exc
        try:
            loop.call_soon_threadsafe(report, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=target, name="mds-dlq-save", daemon=True).start()
    try:
        await done
    except asyncio.CancelledError:
        cancelled.set()
        raise


def describe_error(error: BaseException | str) -> str:
    """``"TypeName: message"`` for an exception, the string itself otherwise."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return error


class DeadLetterQueue(Generic[T]):
    """Appends failed batches to ``path`` (NDJSON); ``replay`` reads them back, removing none.

    Items are encoded as pydantic models via ``model_dump(mode="json")``, dataclasses via
    ``asdict``, else with ``encoder(item)`` when given, else as JSON values. Each ``save``
    encodes, writes, flushes and fsyncs in a daemon thread of its own, off the event loop
    (see ``save``).

    Args:
        path: the NDJSON file; created (with its folder) on the first save.
        encoder: turns an item that is neither a pydantic model nor a dataclass into a JSON
            value; without it such items must already be JSON values.

    ``python -m market_data_store.dlq replay FILE --sqlite PATH`` resubmits a file of bars
    into a sink and archives it (see ``market_data_store.dlq``).
    """

    def __init__(self, path: str | os.PathLike[str], *, encoder: Callable[[T], Any] | None = None):
        self._path = Path(path)
        self._encoder = encoder
        self._lock = threading.Lock()
        self._cursor: _Cursor | None = None  # where the last read stopped

    @property
    def path(self) -> Path:
        """The NDJSON file."""
        return self._path

    def _encode(self, item: T) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.asdict(item)
        if self._encoder is not None:
            return self._encoder(item)
        return item

    def encode_record(
        self,
        items: Sequence[T],
        error: BaseException | str,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """The NDJSON line (without newline) that ``save`` appends."""
        record = {
            "ts": time.time(),
            "error": describe_error(error),
            "metadata": dict(metadata or {}),
            "items": [self._encode(item) for item in items],
        }
        return json.dumps(record, default=_json_default, separators=(",", ":"))

    async def save(
        self,
        items: Sequence[T],
        error: BaseException | str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one record holding ``items``, the error and ``metadata``.

        Encoding and writing both run in a daemon thread of their own, never on the event
        loop: 300,000 items encode without stalling it, and a filesystem that hangs holds
        only that thread (a caller may stop waiting; ``WriteCoordinator.stop`` does at its
        deadline). The thread is a daemon so that it cannot keep the interpreter alive.
        """
        snapshot = list(items)  # the caller may reuse its sequence once we return
        await _in_daemon_thread(self._encode_and_append, snapshot, error, metadata)

    def _encode_and_append(
        self,
        items: list[T],
        error: BaseException | str,
        metadata: Mapping[str, Any] | None,
        cancelled: threading.Event,
    ) -> None:
        self._append(self.encode_record(items, error, metadata), cancelled)

    def _append(self, line: str, cancelled: threading.Event) -> None:
        data = line.encode("utf-8") + b"\n"
        with self._lock:
            if cancelled.is_set():
                return  # the caller stopped waiting before our turn came: write nothing
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a+b") as fh:
                end = fh.seek(0, os.SEEK_END)
                if end:  # a crash may have cut the last line short: never glue onto it
                    fh.seek(end - 1)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

    async def replay(self, max_records: int = 100, *, offset: int = 0) -> list[DLQRecord[T]]:
        """Read up to ``max_records`` records, skipping the first ``offset``; removes none.

        Page through a file with ``offset += len(page)`` until a page comes back shorter than
        ``max_records``. Records count as ``replay`` returns them: corrupt lines are skipped
        (logged at WARNING) and take no place in the numbering.
        """
        check_int("max_records", max_records, lo=0)
        check_int("offset", offset, lo=0)
        return await asyncio.to_thread(self._read, max_records, offset)

    def _read(self, max_records: int, offset: int = 0) -> list[DLQRecord[T]]:
        records: list[DLQRecord[T]] = []
        if not self._path.exists():
            return records
        with self._lock, self._path.open("rb") as fh:
            # Resume where the last read stopped when this page starts there or later (the
            # documented paging pattern): a page then costs its own lines, not the file's
            # up to it. The file only grows by appends, so a byte position stays valid while
            # the file is the same one and at least that long.
            stat = os.fstat(fh.fileno())
            file = (stat.st_dev, stat.st_ino)
            cursor = self._cursor
            if (
                cursor is None
                or cursor.offset > offset
                or cursor.file != file
                or cursor.position > stat.st_size
            ):
                cursor = _Cursor(0, 0, 0, file)
            fh.seek(cursor.position)
            counted, lineno = cursor.offset, cursor.lineno
            while len(records) < max_records:
                raw_line = fh.readline()
                if not raw_line:
                    break
                lineno += 1
                record = self._parse(raw_line.decode("utf-8", errors="replace"))
                if isinstance(record, Exception):
                    if counted >= offset:  # lines before the page were reported by earlier pages
                        logger.warning(
                            "DLQ {}: skipping corrupt line {}: {}", self._path, lineno, record
                        )
                elif record is not None:
                    if counted >= offset:
                        records.append(record)
                    counted += 1
                if raw_line.endswith(b"\n"):  # an unfinished last line is read again next time
                    cursor = _Cursor(counted, lineno, fh.tell(), file)
            self._cursor = cursor
        return records

    @staticmethod
    def _parse(line: str) -> DLQRecord[T] | Exception | None:
        """The record a line holds, the error that makes it corrupt, or None (blank)."""
        if not line.strip():
            return None
        try:
            raw = json.loads(line)
            return DLQRecord(
                ts=float(raw["ts"]),
                error=str(raw["error"]),
                metadata=dict(raw.get("metadata") or {}),
                items=list(raw["items"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            return exc
