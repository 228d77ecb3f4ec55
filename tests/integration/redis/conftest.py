"""Fixtures for the Redis transport tests: a throwaway redis-server and a channel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from market_data_store.testing._server import serve_for_tests
from market_data_store.testing.redis import RedisServer, RedisUnavailableError, redis_required


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on 127.0.0.1 for one test (tests kill and restart it); skips
    (fails under MDS_REQUIRE_REDIS=1) where none can be started."""
    yield from serve_for_tests(
        RedisServer(), RedisUnavailableError, required=redis_required, what="redis-server"
    )


@pytest.fixture
def channel() -> str:
    """A channel of this test's own."""
    return f"mds:test:{uuid.uuid4().hex[:10]}"
