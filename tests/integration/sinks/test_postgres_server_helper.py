"""The throwaway PostgreSQL helper's failure modes (what lets the fixture skip or fail)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from market_data_store.testing.postgres import (
    PostgresServer,
    PostgresUnavailableError,
    postgres_required,
)


def test_missing_binaries_raise_unavailable_and_leave_nothing_behind(tmp_path: Path) -> None:
    """Without initdb, start() raises PostgresUnavailableError; destroy() cleans up."""
    server = PostgresServer(bin_dir=tmp_path / "no-such-bin")
    with pytest.raises(PostgresUnavailableError, match="initdb"):
        server.start()
    created = server.data_dir.parent
    server.destroy()
    assert not created.exists()
    assert not server.running


@pytest.mark.parametrize(("value", "required"), [("1", True), ("0", False), ("", False)])
def test_mds_require_postgres_turns_skips_into_failures(
    monkeypatch: pytest.MonkeyPatch, value: str, required: bool
) -> None:
    """MDS_REQUIRE_POSTGRES=1 (as .ci/run sets it) makes a missing server a failure."""
    monkeypatch.setenv("MDS_REQUIRE_POSTGRES", value)
    assert postgres_required() is required


@pytest.mark.postgres
def test_a_taken_port_is_replaced_on_first_start(pg_server: PostgresServer) -> None:
    """A port taken before the first start is replaced by another free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = PostgresServer()
        server.port = taken.getsockname()[1]
        try:
            server.start()
            assert server.running
            assert server.port != taken.getsockname()[1]
        finally:
            server.destroy()
