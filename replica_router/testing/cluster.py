"""A throwaway PostgreSQL primary with streaming replicas, for tests, demos and benchmarks.

Used as a library::

    cluster = Cluster("/tmp/pg")
    cluster.up(replicas=2)
    cluster.pause("replica_1")
    ...
    cluster.down()

and as a command::

    python -m replica_router.testing.cluster up --dir .cluster --replicas 2 [--pgbouncer]
    python -m replica_router.testing.cluster env --dir .cluster
    python -m replica_router.testing.cluster run --dir .cluster -- pytest

Every server listens on 127.0.0.1 only, on ports picked free at creation and
recorded in ``DIR/cluster.json``; loopback connections are trusted, nothing else
is accepted. When run as root the servers run as the ``postgres`` account,
because PostgreSQL refuses to run as root. With ``pgbouncer=True`` (``up
--pgbouncer``) a PgBouncer in transaction pooling mode runs in front of each
node as well (:mod:`replica_router.testing.pgbouncer`).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from replica_router.testing.pgbouncer import WAIT_APPLICATION_NAME, PgBouncer, PgBouncerError
from replica_router.testing.processes import (
    children,
    cmdline,
    free_port,
    process_alive,
    process_state,
    processes_with,
)

PRIMARY = "primary"
STATE_FILE = "cluster.json"
SERVER_ACCOUNT = "postgres"
DBNAME = "app"
SUPERUSER = "postgres"

# Durability is worthless for a throwaway cluster and costs seconds per test run.
_SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 32MB
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 10
wal_keep_size = 512MB
# A killed standby replays from its last restartpoint, which follows the
# primary's checkpoints: with the default 5 min, a busy test run left it more
# WAL to redo than a start waits for ("could not start replica_1", test-matrix).
checkpoint_timeout = 30s
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
track_commit_timestamp = on
log_min_messages = warning
include_if_exists = 'node.conf'
include_if_exists = 'faults.conf'
include_if_exists = 'conflicts.conf'
"""

_HBA = """
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


class ClusterError(RuntimeError):
    """The local cluster could not be created, started or changed."""


@dataclass
class NodeStatus:
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


class Cluster:
    """A primary named ``primary`` and replicas named ``replica_1``, ``replica_2``, ..."""

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

    def start_pgbouncers(self) -> None:
        """Put a PgBouncer in front of each node that has none; start any that is down.

        A PgBouncer is left running when its node is killed or stopped, as in a
        deployment where the node's host, not PgBouncer's, fails.
        """
        state = self._state()
        ports: dict[str, int] = state.setdefault("pgbouncer", {})
        added = [name for name in self.nodes if name not in ports]
        for name in added:
            ports[name] = free_port()
        if added:
            self._save_state(state)
        for name, bouncer in self.pgbouncers.items():
            if name in added or not bouncer.config_path.exists():
                bouncer.write_config(user=SUPERUSER)
                self._chown(bouncer.dir)
            bouncer.start(self._run)
            if self.is_up(name):
                self._wait_serving(name, bouncer)

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

    # -- lifecycle -----------------------------------------------------------

    def up(self, replicas: int = 2, *, pgbouncer: bool = False, timeout: float = 60.0) -> bool:
        """Create and start the cluster; return False if it was already running.

        On an existing cluster, nodes and PgBouncers that are down are started
        again. ``pgbouncer=True`` puts a PgBouncer in front of each node (on an
        existing cluster too).
        """
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if self.exists():
            bouncers = self.pgbouncers
            if (
                all(self.is_up(n) for n in self.nodes)
                and all(b.is_up() for b in bouncers.values())
                and (bouncers or not pgbouncer)
            ):
                return False
            for name in self.nodes:
                if not self.is_up(name):
                    self.start(name)
            self.wait_streaming(timeout=timeout)
            if bouncers or pgbouncer:
                self.start_pgbouncers()
            return True
        self.bindir  # noqa: B018 - fail early with the install hint
        self._check_reachable()
        self.dir.mkdir(parents=True, exist_ok=True)
        names = [PRIMARY] + [f"replica_{i}" for i in range(1, replicas + 1)]
        self._save_state({"ports": {name: free_port() for name in names}})
        self._chown(self.dir)
        try:
            self._create_primary()
            for name in names[1:]:
                self._create_replica(name)
            self.wait_streaming(timeout=timeout)
            if pgbouncer:
                self.start_pgbouncers()
        except BaseException:
            self.down()
            raise
        return True

    def _check_reachable(self) -> None:
        if not self._as_account:
            return
        for parent in self.dir.parents:
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                raise ClusterError(
                    f"The {SERVER_ACCOUNT!r} account that runs the servers cannot enter {parent}, "
                    f"so it cannot reach {self.dir}. Choose a directory it can reach, such as "
                    "one under /tmp."
                )

    def _write_node_file(self, name: str, filename: str, text: str) -> None:
        path = self.datadir(name) / filename
        path.write_text(text)
        self._chown(path)

    def _create_primary(self) -> None:
        datadir = self.datadir(PRIMARY)
        self._run(
            [
                self._bin("initdb"),
                "--pgdata",
                str(datadir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--no-sync",
                "--no-instructions",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ]
        )
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write(_SERVER_SETTINGS)
        (datadir / "pg_hba.conf").write_text(_HBA)
        self._write_node_file(PRIMARY, "node.conf", f"port = {self.port(PRIMARY)}\n")
        self.start(PRIMARY)
        with psycopg.connect(self.conninfo(PRIMARY, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")

    def _create_replica(self, name: str) -> None:
        datadir = self.datadir(name)
        primary_conninfo = (
            f"host=127.0.0.1 port={self.port(PRIMARY)} user={SUPERUSER} application_name={name}"
        )
        self._run(
            [
                self._bin("pg_basebackup"),
                "--pgdata",
                str(datadir),
                "--dbname",
                primary_conninfo,
                "--write-recovery-conf",
                "--checkpoint",
                "fast",
                "--wal-method",
                "stream",
                "--no-sync",
            ]
        )
        # -R records the conninfo it connected with; set it explicitly so the
        # primary's pg_stat_replication names each replica by its alias.
        with open(datadir / "postgresql.auto.conf", "a") as auto:
            auto.write(f"primary_conninfo = '{primary_conninfo}'\n")
        self._write_node_file(name, "node.conf", f"port = {self.port(name)}\n")
        for fault in ("faults.conf", "conflicts.conf"):
            with contextlib.suppress(FileNotFoundError):
                (datadir / fault).unlink()
        self.start(name)

    def start(self, name: str, *, timeout: float = 30.0) -> None:
        """Start a node (after ``kill`` or ``stop``); a running node is left alone.

        With a PgBouncer in front of it, return once that serves each database
        again: after failing to reach the node, PgBouncer refuses the clients
        of a database until it has tried again (``server_login_retry``).
        """
        self.port(name)
        if self.is_up(name):
            return
        self._start_server(name, timeout)
        bouncer = self.pgbouncers.get(name)
        if bouncer is not None and bouncer.is_up():
            self._wait_serving(name, bouncer, timeout=timeout)

    def _wait_serving(self, name: str, bouncer: PgBouncer, *, timeout: float = 30.0) -> None:
        """Wait until ``bouncer`` reaches its node in every database (the test
        database too: PgBouncer keeps a pool, and its failures, per database)."""
        with self.connect(name, "postgres") as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
            ).fetchall()
        for (dbname,) in rows:
            bouncer.wait_serving(user=SUPERUSER, dbname=dbname, timeout=timeout)
        # PgBouncer keeps the server sessions these checks opened; one in a test
        # database would make its DROP DATABASE fail at the end of a test run.
        self.query(
            name,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [WAIT_APPLICATION_NAME],
        )

    def _start_server(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self._run(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "--pgdata",
                    str(self.datadir(name)),
                    "--log",
                    str(self.dir / f"{name}.log"),
                    "--wait",
                    "--timeout",
                    str(max(1, int(timeout))),
                ],
                check=False,
            )
            if result.returncode == 0:
                return
            # After a SIGKILL the old postmaster's children may still hold the
            # shared memory for a moment; a retry succeeds once they are gone.
            if time.monotonic() > deadline:
                log = self.dir / f"{name}.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise ClusterError(f"could not start {name}:\n{result.stderr}\n{tail}")
            time.sleep(0.2)

    def stop(self, name: str, *, mode: str = "fast") -> None:
        """Stop a node cleanly (a frozen one is thawed first, so that it can)."""
        if not self.is_up(name):
            return
        self.thaw(name)
        self._run(
            [self._bin("pg_ctl"), "stop", "--pgdata", str(self.datadir(name)), "--mode", mode]
        )

    def stop_primary(self) -> None:
        self.stop(PRIMARY)

    def kill(self, name: str) -> None:
        """SIGKILL a node's postmaster, the way a crashed host looks to its clients."""
        self.port(name)
        pid = self.pid(name)
        if pid is None:
            raise ClusterError(f"{name} is not running")
        # The whole host goes: the postmaster and every backend, so that open
        # client connections break at once instead of lingering for a moment.
        victims = [pid, *children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_alive(v) for v in victims):
            time.sleep(0.01)

    def down(self) -> None:
        """Stop every node and PgBouncer, frozen nodes included, and remove the
        cluster's directory."""
        if self.exists():
            for bouncer in self.pgbouncers.values():
                bouncer.stop()
            for name in self.nodes:
                with contextlib.suppress(ClusterError):
                    self.stop(name, mode="immediate")
        for pid in self._orphans():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _orphans(self) -> list[int]:
        """Server processes and PgBouncers still running from this cluster's directory."""
        marker = str(self.dir).encode()
        # By the program's name: a command naming the directory (this one's
        # `down --dir /tmp/pgbouncer-test`, say) is no server.
        servers = (b"postgres", b"postmaster", b"pgbouncer")
        return [
            pid
            for pid in processes_with(marker)
            if os.path.basename(cmdline(pid).split(b"\0", 1)[0]) in servers
        ]

    # -- replication ---------------------------------------------------------

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

    def streaming(self) -> set[str]:
        with self.connect(PRIMARY) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchall()
        return {row[0] for row in rows}

    def wait_streaming(self, names: Sequence[str] | None = None, *, timeout: float = 30.0) -> None:
        """Wait until the primary lists each replica as ``streaming``."""
        wanted = set(self.replicas if names is None else names)
        deadline = time.monotonic() + timeout
        while True:
            try:
                missing = wanted - self.streaming()
            except psycopg.OperationalError:
                missing = wanted
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"not streaming after {timeout}s: {', '.join(sorted(missing))}")
            time.sleep(0.05)

    def primary_lsn(self) -> str:
        return str(self.query(PRIMARY, "SELECT pg_current_wal_lsn()"))

    def replay_lsn(self, name: str) -> str | None:
        lsn = self.query(name, "SELECT pg_last_wal_replay_lsn()")
        return None if lsn is None else str(lsn)

    def lag_bytes(self, name: str, target_lsn: str) -> int:
        """How many bytes ``name`` has yet to replay to reach ``target_lsn``."""
        with self.connect(name) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (target_lsn,)
            ).fetchone()
        assert row is not None
        return max(0, int(row[0]))

    def wait_replayed(
        self, names: Sequence[str] | None = None, *, lsn: str | None = None, timeout: float = 30.0
    ) -> None:
        """Wait until each replica has replayed the primary's current WAL position."""
        target = lsn or self.primary_lsn()
        pending = list(self.replicas if names is None else names)
        deadline = time.monotonic() + timeout
        while pending:
            pending = [n for n in pending if self.lag_bytes(n, target) > 0]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{', '.join(pending)} did not replay {target} in {timeout}s")
            time.sleep(0.02)

    # -- faults --------------------------------------------------------------

    def pause(self, name: str) -> None:
        """Pause WAL replay: the replica keeps receiving WAL but its data stops moving.

        It first lets the replica replay what the primary has written so far:
        paused in the middle of a replayed TRUNCATE or DDL, a standby would hold
        that transaction's exclusive lock, and every query on the table would
        wait for as long as replay stays paused.
        """
        self._require_replica(name)
        self.wait_replayed([name])
        self.query(name, "SELECT pg_wal_replay_pause()")

    def resume(self, name: str) -> None:
        self._require_replica(name)
        self.query(name, "SELECT pg_wal_replay_resume()")

    def is_paused(self, name: str) -> bool:
        return bool(self.query(name, "SELECT pg_is_wal_replay_paused()"))

    @contextlib.contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """Hold a replica behind for the duration of a ``with`` block."""
        self.pause(name)
        try:
            yield
        finally:
            if self.is_up(name):
                self.resume(name)

    def _processes(self, name: str) -> list[int]:
        pid = self.pid(name)
        if pid is None:
            raise ClusterError(f"{name} is not running")
        return [pid, *children(pid)]

    def freeze(self, name: str) -> None:
        """SIGSTOP a node's postmaster and every backend: a hung host.

        As with a frozen VM or a network partition, clients get no error and no
        RST: their connections stay open and nothing answers, and new
        connections wait in the listen queue. ``thaw`` lets it run again.
        """
        # The postmaster first, and stopped for sure, before its children are
        # listed: a backend it forks meanwhile (a pooler opening a server
        # connection under load) would escape the freeze and go on answering
        # through that pooler, so that the node never looked hung.
        postmaster = self.pid(name)
        if postmaster is None:
            raise ClusterError(f"{name} is not running")
        os.kill(postmaster, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while process_state(postmaster) not in ("T", None):  # None: it died meanwhile
            if time.monotonic() > deadline:
                raise ClusterError(f"{name}'s postmaster did not stop on SIGSTOP")
            time.sleep(0.001)
        stopped: set[int] = set()
        while pending := [pid for pid in children(postmaster) if pid not in stopped]:
            for pid in pending:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
        # Returns once nothing of the node runs (an exited backend stays a zombie).
        while any(process_state(pid) not in ("T", "Z", None) for pid in stopped):
            if time.monotonic() > deadline:
                raise ClusterError(f"{name}'s backends did not stop on SIGSTOP")
            time.sleep(0.001)

    def thaw(self, name: str) -> None:
        """SIGCONT a node frozen by ``freeze`` (a running node is left as it is)."""
        if self.is_up(name):
            for pid in self._processes(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def is_frozen(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and process_state(pid) == "T"

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[None]:
        """Hold a node frozen for the duration of a ``with`` block."""
        self.freeze(name)
        try:
            yield
        finally:
            self.thaw(name)

    def conflicts(self, name: str, *, on: bool = True) -> None:
        """Make a replica cancel its queries on recovery conflicts (``on=False`` undoes it).

        ``hot_standby_feedback = off`` lets VACUUM on the primary remove rows the
        replica's queries may still need, and ``max_standby_streaming_delay = 0``
        cancels such a query at once instead of delaying replay: SQLSTATE 40001,
        "canceling statement due to conflict with recovery". Production
        replicas with short delays see the same under write load.
        """
        self._require_replica(name)
        text = "hot_standby_feedback = off\nmax_standby_streaming_delay = 0\n" if on else ""
        self._write_node_file(name, "conflicts.conf", text)
        self.query(name, "SELECT pg_reload_conf()")
        expected = "0" if on else "30000"
        setting = "SELECT setting FROM pg_settings WHERE name = 'max_standby_streaming_delay'"
        deadline = time.monotonic() + 10
        while self.query(name, setting) != expected:
            if time.monotonic() > deadline:
                raise ClusterError(f"{name}: the conflict settings did not take effect")
            time.sleep(0.02)

    def recovery_conflicts(self, name: str) -> int:
        """How many queries ``name`` has cancelled for conflicts with recovery, in all
        its databases (``pg_stat_database_conflicts``)."""
        return int(
            self.query(
                name,
                "SELECT coalesce(sum(confl_tablespace + confl_lock + confl_snapshot"
                " + confl_bufferpin + confl_deadlock), 0) FROM pg_stat_database_conflicts",
            )
        )

    def delay(self, name: str, seconds: float) -> None:
        """Apply WAL on ``name`` only ``seconds`` after the primary committed it (0 clears)."""
        self._require_replica(name)
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        milliseconds = int(seconds * 1000)
        text = f"recovery_min_apply_delay = '{milliseconds}ms'\n" if seconds else ""
        self._write_node_file(name, "faults.conf", text)
        self.query(name, "SELECT pg_reload_conf()")
        # The reload is asynchronous. A new session shows the setting once the
        # postmaster has reloaded, and by then it has signalled the startup
        # process, which reloads before it applies the next WAL record.
        deadline = time.monotonic() + 10
        setting = "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'"
        while self.query(name, setting) != str(milliseconds):
            if time.monotonic() > deadline:
                raise ClusterError(f"{name}: recovery_min_apply_delay did not take effect")
            time.sleep(0.02)

    def promote(self, name: str) -> None:
        """Promote a replica to a primary of its own, as a failover tool would."""
        self._require_replica(name)
        self.query(name, "SELECT pg_promote(wait => true)")

    def rebuild(self, name: str) -> None:
        """Throw a replica's data away and clone it from the primary again.

        Undoes ``promote``, or anything else that left the replica unusable.
        """
        self._require_replica(name)
        if self.is_up(name):
            self.stop(name, mode="immediate")
        shutil.rmtree(self.datadir(name))
        self._create_replica(name)
        self.wait_streaming([name])

    def _require_replica(self, name: str) -> None:
        if name not in self.replicas:
            raise ClusterError(
                f"{name!r} is not a replica; the replicas are {', '.join(self.replicas)}."
            )

    # -- reporting -----------------------------------------------------------

    def status(self) -> list[NodeStatus]:
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
            row_status = NodeStatus(name, role, self.port(name), pid, pid is not None, lsn)
            if name in bouncers:
                row_status.pgbouncer_port = bouncers[name].port
                row_status.pgbouncer_up = bouncers[name].is_up()
            rows.append(row_status)
        return rows


# -- command line ------------------------------------------------------------


def _print_status(cluster: Cluster) -> None:
    rows = cluster.status()
    # The PgBouncer column only for a cluster that has them.
    bouncers = any(s.pgbouncer_port is not None for s in rows)
    pgbouncer = f"{'pgbouncer':<16}" if bouncers else ""
    print(f"{'node':<12}{'role':<9}{'port':<7}{'pid':<9}{'state':<7}{pgbouncer}replay LSN")
    for s in rows:
        if bouncers:
            pgbouncer = f"{s.pgbouncer_port} {'up' if s.pgbouncer_up else 'down'}"
            pgbouncer = f"{pgbouncer:<16}"
        print(
            f"{s.name:<12}{s.role:<9}{s.port:<7}{s.pid or '-'!s:<9}"
            f"{'up' if s.up else 'down':<7}{pgbouncer}{s.lsn or '-'}"
        )


# Subcommands that act on one node given by name: help text and the method.
_NODE_COMMANDS: dict[str, tuple[str, Callable[[Cluster, str], None]]] = {
    "pause": ("pause WAL replay on a replica", Cluster.pause),
    "resume": ("resume WAL replay on a replica", Cluster.resume),
    "kill": ("SIGKILL a node's postmaster", Cluster.kill),
    "freeze": ("SIGSTOP a node's postmaster and backends (a hung host)", Cluster.freeze),
    "thaw": ("SIGCONT a frozen node", Cluster.thaw),
    "start": ("start a node that is down", Cluster.start),
    "promote": ("promote a replica to a primary of its own", Cluster.promote),
    "rebuild": ("clone a replica from the primary again", Cluster.rebuild),
}


_PGBOUNCER_HELP = "also start a PgBouncer (transaction pooling) in front of each node"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replica_router.testing.cluster",
        description="A local PostgreSQL primary with streaming replicas, on 127.0.0.1.",
    )
    # --dir is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=argparse.SUPPRESS,
        help="cluster directory (default: $REPLICA_ROUTER_CLUSTER_DIR or .cluster)",
    )
    parser.add_argument("--dir", default=os.environ.get("REPLICA_ROUTER_CLUSTER_DIR", ".cluster"))
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    up = command("up", "create and start the cluster (idempotent)")
    up.add_argument("--replicas", type=int, default=2)
    up.add_argument("--pgbouncer", action="store_true", help=_PGBOUNCER_HELP)
    command("down", "stop every node and remove the directory")
    status = command("status", "role, port, pid, up/down and replay LSN per node")
    status.add_argument("--json", action="store_true")
    command("env", "print DATABASE_URL and REPLICA_URLS (and the PgBouncer URLs)")
    for name, (text, _) in _NODE_COMMANDS.items():
        command(name, text).add_argument("name")
    conflicts = command("conflicts", "make a replica cancel queries on recovery conflicts")
    conflicts.add_argument("name")
    conflicts.add_argument("--off", action="store_true", help="undo it")
    delay = command("delay", "set recovery_min_apply_delay on a replica")
    delay.add_argument("name")
    delay.add_argument("seconds", type=float)
    command("stop-primary", "stop the primary (fast shutdown)")
    run = command("run", "bring the cluster up, run a command with its env, tear it down")
    run.add_argument("--replicas", type=int, default=2)
    run.add_argument("--pgbouncer", action="store_true", help=_PGBOUNCER_HELP)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def _up(cluster: Cluster, args: argparse.Namespace) -> int:
    started = time.monotonic()
    if cluster.up(args.replicas, pgbouncer=args.pgbouncer):
        print(
            f"cluster up in {cluster.dir} "
            f"({len(cluster.replicas)} replicas, {time.monotonic() - started:.1f}s)"
        )
    else:
        print(f"cluster already running in {cluster.dir}")
    _print_status(cluster)
    return 0


def _down(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.down()
    print(f"cluster in {cluster.dir} is down and removed")
    return 0


def _status(cluster: Cluster, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([asdict(s) for s in cluster.status()], indent=2))
    else:
        _print_status(cluster)
    return 0


def _env(cluster: Cluster, args: argparse.Namespace) -> int:
    for key, value in cluster.env().items():
        print(f"{key}={value}")
    return 0


def _delay(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.delay(args.name, args.seconds)
    return 0


def _conflicts(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.conflicts(args.name, on=not args.off)
    return 0


def _stop_primary(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.stop_primary()
    return 0


def _on_node(cluster: Cluster, args: argparse.Namespace) -> int:
    _, method = _NODE_COMMANDS[args.command]
    method(cluster, args.name)
    return 0


def _run(cluster: Cluster, args: argparse.Namespace) -> int:
    return _run_with_cluster(cluster, args.replicas, args.argv, pgbouncer=args.pgbouncer)


# Each subcommand's handler; it returns the exit status.
_HANDLERS: dict[str, Callable[[Cluster, argparse.Namespace], int]] = {
    "up": _up,
    "down": _down,
    "status": _status,
    "env": _env,
    **dict.fromkeys(_NODE_COMMANDS, _on_node),
    "conflicts": _conflicts,
    "delay": _delay,
    "stop-primary": _stop_primary,
    "run": _run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = Cluster(args.dir)
    try:
        return _HANDLERS[args.command](cluster, args)
    except (ClusterError, PgBouncerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run_with_cluster(
    cluster: Cluster, replicas: int, argv: list[str], *, pgbouncer: bool = False
) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("error: run needs a command after --", file=sys.stderr)
        return 2
    created = not cluster.exists()
    started = time.monotonic()
    cluster.up(replicas, pgbouncer=pgbouncer)
    print(
        f"cluster ready in {time.monotonic() - started:.1f}s: "
        f"primary + {len(cluster.replicas)} replicas"
        f"{', each behind PgBouncer' if cluster.pgbouncers else ''} in {cluster.dir}",
        flush=True,
    )
    try:
        return subprocess.call(argv, env={**os.environ, **cluster.env()})
    finally:
        # A cluster the caller started by hand is theirs to stop.
        if created:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
