"""A PgBouncer in transaction pooling mode in front of one local PostgreSQL server.

The cluster tool (``up --pgbouncer``) starts one in front of each node, so
that tests run through PgBouncer as many deployments do: the client connects
to PgBouncer, which lends it a server connection for one transaction at a time.
It runs Debian's ``pgbouncer`` (``apt-get install pgbouncer``), never a system
service that may be running already.

Each instance listens on 127.0.0.1 only, on a port picked free, with no Unix
socket; it trusts every client (as the servers behind it do on loopback) and
sends every database name to the same name on its server. Its config, log and
pid files live in the cluster's directory. It outlives a kill or a stop of its
server, which is what a deployment sees when a node dies: connecting to
PgBouncer still works, the server behind it is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import psycopg

from replica_router.testing.processes import cmdline, process_alive

__all__ = ["POOL_MODE", "WAIT_APPLICATION_NAME", "PgBouncer", "PgBouncerError", "find_pgbouncer"]

POOL_MODE: Final = "transaction"
HOST: Final = "127.0.0.1"
#: The application_name of wait_serving's connections.
WAIT_APPLICATION_NAME: Final = "replica_router pgbouncer wait"

# What a deployment in transaction mode sets, apart from the addresses and
# files. ignore_startup_parameters is left at its default on purpose, so that a
# client sending a start-up parameter PgBouncer does not pass on is refused as
# it would be in production. Two settings differ from PgBouncer's defaults, as
# docs/pgbouncer.md advises in front of the router: query_wait_timeout (120 s
# by default), because a query queued for a server that died waits that long
# before PgBouncer fails it; and server_login_retry (15 s), so that a node
# restarted by a test serves through PgBouncer within a second.
_SETTINGS: Final = """\
pool_mode = {pool_mode}
listen_addr = {host}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
admin_users = {user}
max_client_conn = 1000
default_pool_size = 40
query_wait_timeout = 2
server_login_retry = 1
logfile = {log}
pidfile = {pid}
"""


class PgBouncerError(RuntimeError):
    """PgBouncer could not be found, started or stopped."""


def find_pgbouncer() -> str:
    """The path of ``pgbouncer``, or an error that says how to install it.

    ``$PGBOUNCER`` first, then ``PATH``, then Debian's ``/usr/sbin`` (which is
    not on a non-root user's ``PATH``).
    """
    candidates = [os.environ.get("PGBOUNCER"), shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PgBouncerError(
        "pgbouncer was not found. Install it:\n"
        "  Debian/Ubuntu: sudo apt-get install pgbouncer\n"
        "  macOS:         brew install pgbouncer\n"
        "or point PGBOUNCER at the binary."
    )


class PgBouncer:
    """One PgBouncer named after the node it fronts, with its files in ``directory``."""

    def __init__(
        self, directory: str | os.PathLike[str], name: str, *, port: int, server_port: int
    ) -> None:
        if port == server_port:
            raise ValueError(f"PgBouncer needs a port of its own, not its server's ({port})")
        self.dir = Path(directory)
        self.name = name
        self.port = port
        self.server_port = server_port

    @property
    def config_path(self) -> Path:
        return self.dir / f"{self.name}.ini"

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / f"{self.name}.pid"

    def write_config(self, *, user: str) -> None:
        """Write the config and the user list (trust: the user need only be listed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        userlist = self.dir / "userlist.txt"
        userlist.write_text(f'"{user}" ""\n')
        settings = _SETTINGS.format(
            pool_mode=POOL_MODE,
            host=HOST,
            port=self.port,
            userlist=userlist,
            user=user,
            log=self.log_path,
            pid=self.pid_path,
        )
        databases = f"* = host={HOST} port={self.server_port}\n"
        self.config_path.write_text(f"[databases]\n{databases}\n[pgbouncer]\n{settings}")

    def pid(self) -> int | None:
        """The pid of this PgBouncer if it is running, else None."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        # A recycled pid is not ours: ours names its config file.
        if not process_alive(pid) or str(self.config_path).encode() not in cmdline(pid):
            return None
        return pid

    def is_up(self) -> bool:
        return self.pid() is not None

    def start(self, run: Callable[[Sequence[str]], Any], *, timeout: float = 10.0) -> None:
        """Start it as a daemon through ``run`` (which runs a command as the
        servers' account); return once it accepts connections."""
        if self.is_up():
            return
        run([find_pgbouncer(), "--daemon", str(self.config_path)])
        deadline = time.monotonic() + timeout
        while not (self.is_up() and _accepts(self.port)):
            if time.monotonic() > deadline:
                tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
                raise PgBouncerError(f"PgBouncer for {self.name} did not start:\n{tail}")
            time.sleep(0.02)

    def wait_serving(self, *, user: str, dbname: str, timeout: float = 30.0) -> None:
        """Return once a query through it reaches its server.

        The server session it used stays in PgBouncer's pool, named
        :data:`WAIT_APPLICATION_NAME` (PgBouncer passes the name on).
        """
        conninfo = (
            f"host={HOST} port={self.port} user={user} dbname={dbname} connect_timeout=2 "
            f"application_name='{WAIT_APPLICATION_NAME}'"
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise PgBouncerError(
                        f"PgBouncer for {self.name} does not reach its server: {exc}"
                    ) from None
            time.sleep(0.05)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop it at once (SIGTERM: PgBouncer's immediate shutdown), else SIGKILL it."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process_alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)

    def url(self, *, user: str, dbname: str) -> str:
        return f"postgres://{user}@{HOST}:{self.port}/{dbname}"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False
