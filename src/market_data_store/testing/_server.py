"""What the throwaway servers share: ``with`` support, and a ``destroy()`` that deletes their
folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

_S = TypeVar("_S", bound="ThrowawayServer")


class ThrowawayServer:
    """``with server:`` calls ``start()`` and, on the way out, ``destroy()``."""

    _dir: Path | None
    """The server's temporary folder; None until ``start()`` creates it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def destroy(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path``; empty when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def serve_for_tests(
    server: _S,
    unavailable: type[Exception],
    *,
    required: Callable[[], bool],
    what: str,
) -> Iterator[_S]:
    """Start ``server`` for a pytest fixture, yield it and destroy it afterwards.

    Where it cannot start (``unavailable`` raised), the test skips, or fails when
    ``required()`` says the run demands the server (the ``MDS_REQUIRE_*`` variables).
    """
    import pytest  # only the test suite calls this; the library does not depend on pytest

    try:
        server.start()
    except unavailable as exc:
        server.destroy()
        if required():
            pytest.fail(f"{what} is required but cannot start: {exc}")
        pytest.skip(f"{what} unavailable: {exc}")
    try:
        yield server
    finally:
        server.destroy()
