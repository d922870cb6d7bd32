"""The local cluster's nodes: where they live and listen, how to reach them, whether they run.

The base of :class:`~replica_router.testing.cluster.Cluster`, which adds
replication waits (:mod:`~replica_router.testing.cluster_replication`), faults
(:mod:`~replica_router.testing.cluster_faults`) and the lifecycle on top; use that.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from replica_router.testing.pgbouncer import PgBouncer
from replica_router.testing.processes import process_state

PRIMARY = "primary"
STATE_FILE = "cluster.json"
SERVER_ACCOUNT = "postgres"
DBNAME = "app"
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """The local cluster could not be created, started or changed."""


@dataclass
class ServerStatus:
    """One node's server process as the cluster tool sees it (``status``).

    Not :class:`replica_router.health.NodeStatus`, the health monitor's view of a node.
    """

    name: str
    role: str
    port: int
    pid: int | None
    up: bool
    lsn: str | None
    #: The port of the PgBouncer in front of the node, if the cluster has them.
    pgbouncer_port: int | None = None
    pgbouncer_up: bool | None = None


def find_bindir() -> Path:
    """Locate the PostgreSQL server binaries, or explain how to install them."""
    candidates: list[Path] = []
    env_bindir = os.environ.get("PG_BINDIR")
    if env_bindir:
        candidates.append(Path(env_bindir))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    # Debian/Ubuntu keep each major version apart; prefer the newest.
    versioned = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in versioned)
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path:
        candidates.append(Path(initdb_on_path).parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) were not found.\n"
        "Install PostgreSQL 13 or newer:\n"
        "  Debian/Ubuntu: sudo apt-get install postgresql\n"
        "  macOS:         brew install postgresql@16\n"
        "or point PG_BINDIR at the directory that holds initdb."
    )


class ClusterNodes:
    """The cluster's directory, nodes, ports and server processes."""

    def __init__(self, directory: str | os.PathLike[str], *, bindir: Path | None = None) -> None:
        self.dir = Path(directory).resolve()
        self._bindir = bindir
        self._as_account = os.geteuid() == 0

    # -- state ---------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def exists(self) -> bool:
        return self.state_path.exists()

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"No cluster in {self.dir}: run 'up' first.") from None
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    @property
    def ports(self) -> dict[str, int]:
        ports: dict[str, int] = self._state()["ports"]
        return ports

    @property
    def replicas(self) -> list[str]:
        return [name for name in self.ports if name != PRIMARY]

    @property
    def nodes(self) -> list[str]:
        return list(self.ports)

    def port(self, name: str) -> int:
        try:
            return self.ports[name]
        except KeyError:
            raise ClusterError(
                f"No node named {name!r}; the nodes are {', '.join(self.nodes)}."
            ) from None

    def datadir(self, name: str) -> Path:
        return self.dir / name

    def url(self, name: str, dbname: str = DBNAME) -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port(name)}/{dbname}"

    def conninfo(self, name: str, dbname: str = DBNAME) -> str:
        return (
            f"host=127.0.0.1 port={self.port(name)} user={SUPERUSER} dbname={dbname} "
            "connect_timeout=2"
        )

    def env(self) -> dict[str, str]:
        """The environment variables a Django settings module reads to use this cluster.

        With PgBouncers, ``PGBOUNCER_DATABASE_URL`` and ``PGBOUNCER_REPLICA_URLS``
        name the same nodes through them.
        """
        env = {
            "DATABASE_URL": self.url(PRIMARY),
            "REPLICA_URLS": ",".join(self.url(name) for name in self.replicas),
            "REPLICA_ROUTER_CLUSTER_DIR": str(self.dir),
        }
        bouncers = self.pgbouncers
        if bouncers:
            env["PGBOUNCER_DATABASE_URL"] = self.pgbouncer_url(PRIMARY)
            env["PGBOUNCER_REPLICA_URLS"] = ",".join(
                self.pgbouncer_url(name) for name in self.replicas
            )
        return env

    # -- PgBouncer -----------------------------------------------------------

    @property
    def pgbouncers(self) -> dict[str, PgBouncer]:
        """The PgBouncer in front of each node, by node name (empty without them)."""
        ports: dict[str, int] = self._state().get("pgbouncer", {})
        return {
            name: PgBouncer(self.dir / "pgbouncer", name, port=port, server_port=self.port(name))
            for name, port in ports.items()
        }

    def pgbouncer(self, name: str) -> PgBouncer:
        self.port(name)
        try:
            return self.pgbouncers[name]
        except KeyError:
            raise ClusterError(
                f"No PgBouncer in front of {name}: bring the cluster up with --pgbouncer."
            ) from None

    def pgbouncer_port(self, name: str) -> int:
        return self.pgbouncer(name).port

    def pgbouncer_url(self, name: str, dbname: str = DBNAME) -> str:
        return self.pgbouncer(name).url(user=SUPERUSER, dbname=dbname)

    # -- processes -----------------------------------------------------------

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_account:
            cmd = ["runuser", "-u", SERVER_ACCOUNT, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and result.returncode != 0:
            output = result.stderr or result.stdout
            raise ClusterError(f"{Path(args[0]).name} failed ({result.returncode}):\n{output}")
        return result

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def _chown(self, path: Path) -> None:
        if not self._as_account:
            return
        try:
            account = pwd.getpwnam(SERVER_ACCOUNT)
        except KeyError:
            raise ClusterError(
                "Running as root, but there is no 'postgres' account to run the servers as "
                "(PostgreSQL refuses to run as root). Create one: useradd --system postgres"
            ) from None
        for root, dirs, files in os.walk(path):
            for entry in [root, *(os.path.join(root, d) for d in dirs)]:
                os.chown(entry, account.pw_uid, account.pw_gid)
            for f in files:
                os.chown(os.path.join(root, f), account.pw_uid, account.pw_gid)

    def pid(self, name: str) -> int | None:
        """The postmaster's pid if it is running, else None."""
        pidfile = self.datadir(name) / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        if not Path("/proc/self").exists():  # macOS: no /proc, trust kill(0)
            return pid
        # A zombie or a recycled pid is not our postmaster.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        if b"postgres" not in cmdline and b"postmaster" not in cmdline:
            return None
        if process_state(pid) == "Z":
            return None
        return pid

    def is_up(self, name: str) -> bool:
        return self.pid(name) is not None

    def _write_node_file(self, name: str, filename: str, text: str) -> None:
        path = self.datadir(name) / filename
        path.write_text(text)
        self._chown(path)

    # -- queries -------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self, name: str, dbname: str = DBNAME) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.conninfo(name, dbname), autocommit=True) as conn:
            yield conn

    def query(self, name: str, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement on a node; return the first column of its first row, if any."""
        with self.connect(name) as conn:
            cursor = conn.execute(sql, params)
            if cursor.description is None:
                return None
            row = cursor.fetchone()
            return None if row is None else row[0]

    def _require_replica(self, name: str) -> None:
        if name not in self.replicas:
            raise ClusterError(
                f"{name!r} is not a replica; the replicas are {', '.join(self.replicas)}."
            )

    # -- reporting -----------------------------------------------------------

    def status(self) -> list[ServerStatus]:
        rows = []
        bouncers = self.pgbouncers
        for name in self.nodes:
            pid = self.pid(name)
            lsn = None
            role = "primary" if name == PRIMARY else "replica"
            if pid is not None:
                with contextlib.suppress(psycopg.Error):
                    with self.connect(name) as conn:
                        row = conn.execute(
                            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() "
                            "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
                        ).fetchone()
                    assert row is not None
                    role = "replica" if row[0] else "primary"
                    lsn = str(row[1])
            row_status = ServerStatus(name, role, self.port(name), pid, pid is not None, lsn)
            if name in bouncers:
                row_status.pgbouncer_port = bouncers[name].port
                row_status.pgbouncer_up = bouncers[name].is_up()
            rows.append(row_status)
        return rows
