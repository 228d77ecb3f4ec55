"""A throwaway redis-server for tests, examples and benchmarks.

``RedisServer`` runs ``redis-server`` on a free 127.0.0.1 port without persistence
(``--save "" --appendonly no``), so a restart comes back empty, as a crashed cache would.
``kill()`` ends it by its PID with SIGKILL (a crash), ``pause()``/``resume()`` freeze and thaw
it (a hung server), ``restart()`` starts it again on the same port. Without the binary,
``start()`` raises ``RedisUnavailableError``; tests skip on it unless ``MDS_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from market_data_store.testing._server import ThrowawayServer, log_tail
from market_data_store.testing.postgres import free_port

REQUIRE_ENV = "MDS_REQUIRE_REDIS"
START_TIMEOUT_SEC = 10.0


class RedisUnavailableError(RuntimeError):
    """No usable ``redis-server`` binary, or it did not start."""


def redis_required() -> bool:
    """True when ``MDS_REQUIRE_REDIS=1``: a missing server is then a failure, not a skip."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def find_redis_server() -> str:
    """The path of ``redis-server`` on PATH (or in /usr/bin, /usr/local/bin)."""
    found = shutil.which("redis-server") or shutil.which(
        "redis-server", path="/usr/local/bin:/usr/bin:/usr/sbin"
    )
    if found is None:
        raise RedisUnavailableError("redis-server is not installed (apt-get install redis-server)")
    return found


class RedisServer(ThrowawayServer):
    """One throwaway server: ``with RedisServer() as server: server.url``.

    ``binary``: the ``redis-server`` to run (default: found on PATH).
    ``port``: the port on 127.0.0.1 (default: a free one, picked again if taken at start).
    """

    def __init__(self, *, binary: str | None = None, port: int | None = None) -> None:
        self._binary = binary
        self._port_chosen = port is None
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING; no-op when running."""
        if self.running:
            return
        binary = self._binary or find_redis_server()
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="mds-redis-"))
        for attempt in range(3):
            try:
                self._spawn(binary)
                return
            except RedisUnavailableError:
                # The port may have been taken since we picked it; only a first start may
                # move (a restart must keep the port its clients know).
                if not self._port_chosen or attempt == 2:
                    raise
                self.port = free_port()

    def _spawn(self, binary: str) -> None:
        assert self._dir is not None
        log = self._dir / "server.log"
        args = [binary, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self._dir), "--logfile", str(log), "--daemonize", "no"]
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, cwd=self._dir)
        except OSError as exc:
            raise RedisUnavailableError(f"cannot run {binary}: {exc}") from exc
        deadline = time.monotonic() + START_TIMEOUT_SEC
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._answers_ping():
                return
            time.sleep(0.01)  # polling a process we just spawned; nothing to wait on
        self.kill()
        raise RedisUnavailableError(f"redis-server did not start:\n{self.log_tail()}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server by its PID (a crash: its data is gone) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a paused server must be able to die
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the server by its PID and wait for it (SIGKILL after 5 s)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers (a hung server)."""
        if self.running:
            assert self._proc is not None
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.running:
            assert self._proc is not None
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Kill the server and start it again, empty, on the same port."""
        self.kill()
        self._port_chosen = False
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log, for error messages."""
        if self._dir is None:
            return ""
        return log_tail(self._dir / "server.log", lines)
