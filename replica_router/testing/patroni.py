"""A throwaway Patroni cluster on 127.0.0.1: etcd plus one Patroni per node.

Used as a library::

    cluster = PatroniCluster("/tmp/patroni")
    cluster.up(nodes=3)
    cluster.database_url()       # libpq multi-host, target_session_attrs=read-write
    cluster.switchover()          # patronictl switchover to a replica
    cluster.kill_leader()         # SIGKILL the leader's Patroni and PostgreSQL
    cluster.down()

and as a command, ``python -m replica_router.testing.patroni run --dir DIR -- CMD...``
(:mod:`~replica_router.testing.patroni_cli`).

Patroni (``apt-get install patroni``, with ``etcd-server``) runs PostgreSQL
itself: it initialises the first node, clones the others with
``pg_basebackup``, and switches the leader over or fails it over when asked or
when the leader's lock in etcd expires. Every server listens on loopback only,
on ports picked free at creation and recorded in ``DIR/patroni.json``.
Synchronous mode is on, so that a failover never loses a committed write:
the router's read-your-writes can only be as good as the cluster's durability.
When run as root the Patroni processes run as the ``postgres`` account.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from replica_router.testing.cluster_nodes import DBNAME, SERVER_ACCOUNT, SUPERUSER, find_bindir
from replica_router.testing.etcd import EtcdServer
from replica_router.testing.processes import free_port, process_alive, processes_with

__all__ = ["PatroniCluster", "PatroniError", "PatroniNode", "find_patroni"]

HOST: Final = "127.0.0.1"
STATE_FILE: Final = "patroni.json"
SCOPE: Final = "replica-router"
#: The leader lock's TTL and Patroni's loop: a killed leader is replaced
#: within about TTL seconds. 20 s and 1 s are the shortest Patroni accepts
#: without complaint, and keep a failover test short.
TTL: Final = 20
LOOP_WAIT: Final = 1
RETRY_TIMEOUT: Final = 5


class PatroniError(RuntimeError):
    """The Patroni cluster could not be found, started or changed."""


def find_patroni() -> tuple[str, str]:
    """The paths of ``patroni`` and ``patronictl``, or an error that says how to install them."""
    patroni, patronictl = shutil.which("patroni"), shutil.which("patronictl")
    if patroni is None or patronictl is None:
        raise PatroniError(
            "patroni was not found on PATH. Install it: sudo apt-get install patroni etcd-server"
        )
    return patroni, patronictl


@dataclass(frozen=True)
class PatroniNode:
    name: str
    port: int
    api_port: int

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"


class PatroniCluster:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).resolve()
        self.etcd = EtcdServer(self.directory / "etcd")
        self.nodes: dict[str, PatroniNode] = {}
        #: The Patroni processes this object started, reaped when they end.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle ---------------------------------------------------------

    def up(self, nodes: int = 3, *, timeout: float = 120.0) -> None:
        """Start etcd and ``nodes`` Patroni nodes; return once one leads and
        every other streams from it, with the ``app`` database created."""
        find_patroni()
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self._give_to_server_account(self.directory)
        self.etcd.start()
        self.nodes = {
            f"node{i}": PatroniNode(f"node{i}", free_port(), free_port()) for i in range(nodes)
        }
        self._save()
        for name in self.nodes:
            self._write_config(name)
        first, *others = self.nodes
        self.start(first)
        self.wait_for(lambda: self.leader() == first, timeout, "the first node to lead")
        self._create_database()
        for name in others:
            self.start(name)
        self.wait_streaming(timeout=timeout)

    def down(self) -> None:
        for name in self.nodes:
            self.stop(name)
        self.etcd.stop()

    def start(self, name: str) -> None:
        """Start (or start again) node ``name``'s Patroni."""
        patroni, _ = find_patroni()
        log = (self.directory / f"{name}.log").open("ab")
        with log:
            # Found again by its command line (_patroni_pid), so that a
            # cluster loaded from its directory by another process can stop it.
            self._children[name] = subprocess.Popen(
                [patroni, str(self._config_path(name))],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                start_new_session=True,
                **self._account(),
            )

    def stop(self, name: str) -> None:
        """Stop node ``name``'s Patroni and, as Patroni does on SIGTERM, its PostgreSQL."""
        pid = self._patroni_pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, 60):
                os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, 10)
        self._reap(name)
        self._kill_postmaster(name)

    def node_down(self, name: str) -> bool:
        """Whether node ``name``'s Patroni is not running (killed, say)."""
        return self._patroni_pid(name) is None

    def _reap(self, name: str) -> None:
        child = self._children.pop(name, None)
        if child is not None:
            child.wait(timeout=10)

    # -- what the cluster is doing ------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's ``GET /cluster`` members, from the first node that answers."""
        for node in self.nodes.values():
            try:
                with urllib.request.urlopen(f"{node.api_url}/cluster", timeout=2) as response:
                    members: list[dict[str, Any]] = json.load(response)["members"]
                    return members
            except (OSError, ValueError, KeyError):
                continue
        return []

    def leader(self) -> str | None:
        return next((m["name"] for m in self.members() if m.get("role") == "leader"), None)

    def replicas(self) -> list[str]:
        return [m["name"] for m in self.members() if m.get("role") != "leader"]

    def sync_standby(self) -> str | None:
        return next((m["name"] for m in self.members() if m.get("role") == "sync_standby"), None)

    def streaming(self) -> set[str]:
        """The replicas that stream from the leader, by the leader's pg_stat_replication."""
        leader = self.leader()
        if leader is None:
            return set()
        rows = self.query(
            leader, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        )
        return {row[0] for row in rows}

    def wait_streaming(self, *, timeout: float = 120.0) -> None:
        """Wait until every node but the leader streams from it, and Patroni
        has named a synchronous standby: until then no node may take over
        from a leader that dies, since none is known to hold every commit."""
        self.wait_for(
            lambda: (
                self.leader() is not None
                and self.streaming() == set(self.nodes) - {self.leader()}
                and self.sync_standby() is not None
            ),
            timeout,
            "every replica to stream from the leader, one of them synchronously",
        )

    def query(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn(name, dbname="postgres"), connect_timeout=2) as conn:
            return list(conn.execute(sql).fetchall())

    # -- changing the leader -------------------------------------------------

    def switchover(self, candidate: str | None = None, *, timeout: float = 60.0) -> float:
        """``patronictl switchover`` to ``candidate`` (by default the synchronous
        standby, the only node synchronous mode lets take over); the seconds
        patronictl took, which returns once the new leader is promoted."""
        _, patronictl = find_patroni()
        leader = self.leader()
        if leader is None:
            raise PatroniError("no leader to switch over from")
        target = candidate or self.sync_standby()
        if target is None:
            raise PatroniError("no synchronous standby to switch over to")
        started = time.monotonic()
        result = subprocess.run(
            [
                patronictl,
                *("-c", str(self._config_path(leader))),
                "switchover",
                *("--leader", leader),
                *("--candidate", target),
                "--force",
                SCOPE,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            **self._account(),
        )
        took = time.monotonic() - started
        if result.returncode != 0 or self.leader() != target:
            raise PatroniError(f"patronictl switchover failed:\n{result.stdout}{result.stderr}")
        return took

    def kill_patroni(self, name: str) -> None:
        """SIGKILL node ``name``'s Patroni but not its PostgreSQL, which runs
        on: the REST API is gone. ``start(name)`` brings Patroni back, and it
        takes the running server over again."""
        pid = self._patroni_pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)
        self._reap(name)

    def kill_leader(self) -> str:
        """SIGKILL the leader's Patroni and its PostgreSQL, as a crashed host;
        the name of the node killed. Its lock expires within ``TTL`` seconds."""
        leader = self.leader()
        if leader is None:
            raise PatroniError("no leader to kill")
        pid = self._patroni_pid(leader)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)
        self._reap(leader)
        self._kill_postmaster(leader)
        return leader

    # -- connecting ------------------------------------------------------------

    def dsn(self, name: str, *, dbname: str = DBNAME) -> str:
        return f"host={HOST} port={self.nodes[name].port} user={SUPERUSER} dbname={dbname}"

    def database_url(self, *, dbname: str = DBNAME) -> str:
        """The primary as libpq finds it: every node, the writable one taken."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes.values())
        return f"postgresql://{SUPERUSER}@{hosts}/{dbname}?target_session_attrs=read-write"

    def api_urls(self) -> list[str]:
        return [node.api_url for node in self.nodes.values()]

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PatroniCluster:
        """The cluster that ``up()`` recorded in ``directory`` (read-only use)."""
        cluster = cls(directory)
        state = json.loads((cluster.directory / STATE_FILE).read_text())
        cluster.nodes = {n["name"]: PatroniNode(**n) for n in state["nodes"]}
        return cluster

    # -- internals ---------------------------------------------------------------

    @staticmethod
    def wait_for(ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise PatroniError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def _save(self) -> None:
        state = {"etcd": self.etcd.address, "nodes": [asdict(n) for n in self.nodes.values()]}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _config_path(self, name: str) -> Path:
        return self.directory / f"{name}.yml"

    def _write_config(self, name: str) -> None:
        node = self.nodes[name]
        config = {
            "scope": SCOPE,
            "name": name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{HOST}:{node.api_port}",
                "connect_address": f"{HOST}:{node.api_port}",
            },
            "etcd": {"host": self.etcd.address},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "hot_standby_feedback": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
                "pg_hba": [
                    f"host replication all {HOST}/32 trust",
                    f"host all all {HOST}/32 trust",
                    "local all all trust",
                ],
            },
            "postgresql": {
                "listen": f"{HOST}:{node.port}",
                "connect_address": f"{HOST}:{node.port}",
                "data_dir": str(self.directory / name),
                "bin_dir": str(find_bindir()),
                "pgpass": str(self.directory / f"{name}.pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER},
                    "replication": {"username": SUPERUSER},
                    "rewind": {"username": SUPERUSER},
                },
                "parameters": {"unix_socket_directories": str(self.directory)},
                # A clone starts at once, not after a spread checkpoint.
                "basebackup": [{"checkpoint": "fast"}],
            },
        }
        # JSON is YAML: no YAML library is needed to write Patroni's config.
        path = self._config_path(name)
        path.write_text(json.dumps(config, indent=2))
        self._give_to_server_account(path)

    def _create_database(self) -> None:
        import psycopg

        leader = self.leader()
        assert leader is not None
        with psycopg.connect(self.dsn(leader, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")

    def _patroni_pid(self, name: str) -> int | None:
        config = str(self._config_path(name)).encode()
        pids = [pid for pid in processes_with(b"patroni", config) if process_alive(pid)]
        return pids[0] if pids else None

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while process_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _postmaster_pid(self, name: str) -> int | None:
        try:
            return int((self.directory / name / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill_postmaster(self, name: str) -> None:
        pid = self._postmaster_pid(name)
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)

    @staticmethod
    def _account() -> Mapping[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": SERVER_ACCOUNT, "group": SERVER_ACCOUNT, "extra_groups": []}

    @staticmethod
    def _give_to_server_account(path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_ACCOUNT)
            os.chown(path, account.pw_uid, account.pw_gid)


#: The variable ``run`` sets for the command it runs: the cluster's directory.
DIR_VARIABLE: Final = "REPLICA_ROUTER_PATRONI_DIR"


if __name__ == "__main__":
    from replica_router.testing.patroni_cli import main

    sys.exit(main())
