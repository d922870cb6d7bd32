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

import contextlib
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Sequence

import psycopg

from replica_router.testing.cluster_faults import ClusterFaults
from replica_router.testing.cluster_nodes import (
    DBNAME,
    PRIMARY,
    SERVER_ACCOUNT,
    STATE_FILE,
    SUPERUSER,
    ClusterError,
    ServerStatus,
    find_bindir,
)
from replica_router.testing.pgbouncer import WAIT_APPLICATION_NAME, PgBouncer
from replica_router.testing.processes import cmdline, free_port, process_alive, processes_with

# This module is the cluster tool's public face and its lifecycle. Cluster's
# layers live in cluster_nodes.py (state, ports, processes, status),
# cluster_replication.py (waits) and cluster_faults.py; the command line in
# cluster_cli.py. The demo imports the /proc helpers from here.
__all__ = [
    "DBNAME",
    "PRIMARY",
    "SERVER_ACCOUNT",
    "STATE_FILE",
    "SUPERUSER",
    "Cluster",
    "ClusterError",
    "ServerStatus",
    "find_bindir",
    "main",
    "process_alive",
    "processes_with",
]

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


class Cluster(ClusterFaults):
    """A primary named ``primary`` and replicas named ``replica_1``, ``replica_2``, ..."""

    # -- PgBouncer -----------------------------------------------------------

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (:mod:`replica_router.testing.cluster_cli`) with ``argv``."""
    # Imported here: the command line imports this module for Cluster.
    from replica_router.testing.cluster_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
