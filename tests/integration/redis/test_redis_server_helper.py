"""RedisServer, the throwaway redis-server of the tests: start, kill, restart empty."""

from __future__ import annotations

import socket

import pytest

from market_data_store.testing.redis import RedisServer, RedisUnavailableError


def ping(server: RedisServer) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_kill_and_restart_keep_the_port(redis_server: RedisServer) -> None:
    """kill() ends the server by its PID; restart() brings it back on the same port."""
    port, pid = redis_server.port, redis_server.pid
    assert ping(redis_server) and redis_server.host == "127.0.0.1"
    redis_server.kill()
    assert not redis_server.running and not ping(redis_server)
    redis_server.restart()
    assert redis_server.port == port and redis_server.pid != pid and ping(redis_server)


def test_a_missing_binary_is_reported_as_unavailable() -> None:
    """A redis-server that cannot run raises RedisUnavailableError (what the fixture skips on)."""
    server = RedisServer(binary="/nonexistent/redis-server")
    try:
        with pytest.raises(RedisUnavailableError, match="cannot run"):
            server.start()
    finally:
        server.destroy()
