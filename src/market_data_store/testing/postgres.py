"""A throwaway PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a temporary folder and ``pg_ctl`` to start the server
on a free 127.0.0.1 port with trust authentication; ``stop()`` shuts it down and deletes the
folder. ``initdb`` refuses to run as root, so when the effective uid is 0 every PostgreSQL
command runs as the ``postgres`` system user, which then owns the folder.

The server does not fsync (``fsync``, ``full_page_writes`` off): the data is thrown away
anyway, and tests and benchmarks measure the client, not the disk. Commits are still written
to the WAL before they are acknowledged (``synchronous_commit`` stays on), so a committed row
survives ``stop("immediate")``, which kills the server processes but not the machine.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from market_data_store.testing._server import ThrowawayServer, log_tail

REQUIRE_ENV = "MDS_REQUIRE_POSTGRES"
SERVICE_USER = "postgres"
COMMAND_TIMEOUT_SEC = 60.0

ShutdownMode = Literal["smart", "fast", "immediate"]


class PostgresUnavailableError(RuntimeError):
    """No usable PostgreSQL binaries (or no ``postgres`` user to run them as root)."""


def postgres_required() -> bool:
    """True when ``MDS_REQUIRE_POSTGRES=1``: a missing server is then a failure, not a skip."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def find_bin_dir() -> Path:
    """Return the folder holding ``initdb`` and ``pg_ctl``: PATH first, else the newest
    ``/usr/lib/postgresql/*/bin``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: _version_key(Path(p).parent.parent.name),
    )
    if not candidates:
        raise PostgresUnavailableError(
            "no PostgreSQL binaries: initdb is neither on PATH nor in /usr/lib/postgresql/*/bin"
        )
    return Path(candidates[-1]).parent


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer(ThrowawayServer):
    """One throwaway PostgreSQL cluster; ``with PostgresServer() as server: server.dsn``."""

    def __init__(self, *, bin_dir: Path | None = None, port: int | None = None) -> None:
        self._bin_dir = bin_dir
        self._port_chosen = port is None
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self._dir: Path | None = None
        self._run_as: str | None = None
        self.running = False

    @property
    def dsn(self) -> str:
        """DSN of the ``postgres`` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """DSN of ``database`` on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        return self._require_base() / "data"

    @property
    def log_file(self) -> Path:
        return self._require_base() / "server.log"

    def start(self) -> None:
        """Create the cluster (first call only) and start the server; waits until it accepts."""
        if self.running:
            return
        first = self._dir is None
        if first:
            self._init_cluster()
        for attempt in range(3):
            try:
                self._start_server()
                break
            except PostgresUnavailableError:
                # Another process may have taken the port we picked; pick again (only
                # before the first start: a restart must keep the port clients know).
                if not (first and self._port_chosen) or attempt == 2:
                    raise
                self.port = free_port()
        self.running = True

    def _start_server(self) -> None:
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            str(int(COMMAND_TIMEOUT_SEC)),
            "-l",
            str(self.log_file),
            "-o",
            self._server_options(),
        )

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server, keeping the data. ``fast`` disconnects sessions and rolls back
        their transactions; ``immediate`` kills every process at once, as a crash would
        (the next start recovers from the WAL)."""
        if not self.running:
            return
        self._pg_ctl("stop", "-w", "-m", mode)
        self.running = False

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop (see ``stop``) and start again on the same port."""
        self.stop(mode)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server log, for error messages."""
        return log_tail(self.log_file, lines)

    def _init_cluster(self) -> None:
        bin_dir = self._bin_dir or find_bin_dir()
        self._bin_dir = bin_dir
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise PostgresUnavailableError(
                    f"running as root and there is no {SERVICE_USER!r} user to run initdb as"
                ) from None
            self._run_as = SERVICE_USER
        base = Path(tempfile.mkdtemp(prefix="mds-pg-"))
        self._dir = base
        if self._run_as is not None:
            os.chown(base, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )

    def _server_options(self) -> str:
        # The socket goes into our folder: the default /var/run/postgresql may not exist.
        return (
            f"-h {self.host} -p {self.port} -k {self._require_base()} "
            "-c fsync=off -c full_page_writes=off"
        )

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        assert self._bin_dir is not None
        command = [str(self._bin_dir / program), *args]
        try:
            result = self._spawn(command)
        except OSError as exc:  # the binary is missing or cannot run as that user
            raise PostgresUnavailableError(f"cannot run {command[0]}: {exc}") from exc
        if result.returncode != 0:
            raise PostgresUnavailableError(
                f"{program} {' '.join(args[:1])} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- server log ---\n{self.log_tail()}"
            )

    def _spawn(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            command,
            cwd=self._require_base(),
            env=env,
            user=self._run_as,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SEC,
            check=False,
        )

    def _require_base(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the PostgreSQL cluster has not been created yet: call start()")
        return self._dir
