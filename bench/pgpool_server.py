"""A throwaway pgpool-II in front of the local cluster, for bench/bench_pgpool.py.

It runs Debian's ``pgpool2`` (4.3 on Debian 12; ``make bench`` installs it)
as the account the cluster's servers run as, on 127.0.0.1 and a free port,
with its configuration, log, pid file, status file and sockets all in a
directory of its own. A system pgpool service that the package may have
started is neither used nor touched: it listens on its own ports.

``settings()`` is the whole configuration, so that the benchmark can print
every setting it ran with; docs/bench/pgpool.txt prints each one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from replica_router.testing.cluster import (
    PRIMARY,
    SERVER_ACCOUNT,
    SUPERUSER,
    Cluster,
    process_alive,
)

#: Where Debian's package puts it.
PGPOOL = "/usr/sbin/pgpool"
_SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settings(
    cluster: Cluster,
    *,
    weights: dict[str, int],
    port: int,
    run_dir: Path,
    children: int,
    max_lag_bytes: int,
) -> dict[str, str | int | float]:
    """pgpool.conf as a dict: the primary first (backend 0), weight 0 for reads.

    ``weights`` gives each replica's share of reads, as the router's
    REPLICAS setting does.
    """
    conf: dict[str, str | int | float] = {
        # -- what the comparison is about ------------------------------------
        "backend_clustering_mode": "streaming_replication",
        "load_balance_mode": "on",
        # The load balancing node is drawn per statement, not once per session:
        # Django's pool keeps its sessions for the life of the process, and
        # the pgpool docs recommend this for applications that pool.
        "statement_level_load_balance": "on",
        # After a write, a session's reads go to the primary until it ends:
        # pgpool's strongest read-your-writes setting.
        "disable_load_balance_on_write": "always",
        # The lag check (4.3 measures in bytes only).
        "sr_check_period": 1,
        "sr_check_user": SUPERUSER,
        "sr_check_password": "",
        "sr_check_database": "postgres",
        "delay_threshold": max_lag_bytes,
        "prefer_lower_delay_standby": "on",
        "log_standby_delay": "if_over_threshold",
        # Liveness, as often as our CHECK_INTERVAL; 1 s is its smallest timeout.
        "health_check_period": 1,
        "health_check_timeout": 1,
        "health_check_max_retries": 0,
        "health_check_retry_delay": 1,
        "health_check_user": SUPERUSER,
        "health_check_password": "",
        "health_check_database": "postgres",
        "connect_timeout": 2000,
        "failover_on_backend_error": "on",
        "failover_on_backend_shutdown": "off",
        "auto_failback": "on",
        "auto_failback_interval": 1,
        "failover_command": "",
        "failback_command": "",
        "follow_primary_command": "",
        "search_primary_node_timeout": 10,
        # -- the pool of client sessions ---------------------------------------
        "num_init_children": children,
        "max_pool": 4,
        "reserved_connections": 0,
        "connection_cache": "on",
        "child_life_time": 300,
        "child_max_connections": 0,
        "connection_life_time": 0,
        "client_idle_limit": 0,
        "memory_cache_enabled": "off",
        "use_watchdog": "off",
        # -- loopback only, every file in run_dir -------------------------------
        "listen_addresses": "127.0.0.1",
        "port": port,
        "socket_dir": str(run_dir),
        "pcp_listen_addresses": "",
        "pcp_port": free_port(),
        "pcp_socket_dir": str(run_dir),
        "wd_ipc_socket_dir": str(run_dir),
        "pid_file_name": str(run_dir / "pgpool.pid"),
        "logdir": str(run_dir),
        "enable_pool_hba": "off",
        "pool_passwd": "",
        "log_min_messages": "log",
    }
    for i, name in enumerate([PRIMARY, *cluster.replicas]):
        conf[f"backend_hostname{i}"] = "127.0.0.1"
        conf[f"backend_port{i}"] = cluster.port(name)
        conf[f"backend_weight{i}"] = 0 if name == PRIMARY else weights[name]
        conf[f"backend_flag{i}"] = "ALLOW_TO_FAILOVER"
        # auto_failback looks for this name in the primary's pg_stat_replication.
        conf[f"backend_application_name{i}"] = name
    return conf


def _render(conf: dict[str, str | int | float]) -> str:
    lines = []
    for key, value in conf.items():
        shown = value if isinstance(value, int | float) else f"'{value}'"
        lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"


class PgpoolServer:
    """pgpool-II over a running ``Cluster``; ``start``/``stop`` keep the same port."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        weights: dict[str, int],
        children: int = 32,
        max_lag_bytes: int,
    ) -> None:
        if not Path(PGPOOL).exists():
            raise RuntimeError(f"{PGPOOL} not found: install pgpool2 (make bench does)")
        self.cluster = cluster
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgpool-bench-"))
        self.dir.chmod(0o755)
        self.settings = settings(
            cluster,
            weights=weights,
            port=self.port,
            run_dir=self.dir,
            children=children,
            max_lag_bytes=max_lag_bytes,
        )
        (self.dir / "pgpool.conf").write_text(_render(self.settings))
        # pcp (pgpool's admin protocol) is not used; pgpool wants the file anyway.
        (self.dir / "pcp.conf").write_text("")
        (self.dir / "pool_hba.conf").write_text("")
        self._as_account = os.geteuid() == 0
        if self._as_account:
            account = pwd.getpwnam(SERVER_ACCOUNT)
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
        self.log = self.dir / "pgpool.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/app"

    def conninfo(self, dbname: str = "app") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname} connect_timeout=2"

    def start(self, timeout: float = 30.0) -> None:
        """Start pgpool (forgetting any node it had marked down) and wait until it
        sees the primary and every replica up."""
        # -n: stay in the foreground, so that this object owns the process;
        # -D: discard the status file, so that a restart starts with every node up.
        cmd = [
            PGPOOL,
            "-n",
            "-D",
            "-f",
            str(self.dir / "pgpool.conf"),
            "-F",
            str(self.dir / "pcp.conf"),
            "-a",
            str(self.dir / "pool_hba.conf"),
        ]
        if self._as_account:
            cmd = ["runuser", "-u", SERVER_ACCOUNT, "--", *cmd]
        # Started from a shell's background job, this process ignores SIGINT
        # (and so would pgpool, which then ignores the fast shutdown request):
        # the child gets its default back before it runs pgpool.
        cmd = [sys.executable, "-c", _SIGINT_DEFAULT, *cmd]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(status == "up" for status in self.node_status().values()):
                    return
            except psycopg.Error:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"pgpool-II did not start; its log ends with:\n{tail}")
            time.sleep(0.2)

    def nodes(self) -> dict[str, dict[str, str]]:
        """Node name -> its row of pgpool's ``SHOW POOL_NODES`` (``status``,
        ``select_cnt``, ``replication_state``...)."""
        names = {self.cluster.port(name): name for name in self.cluster.nodes}
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            cursor = conn.execute("SHOW POOL_NODES")
            assert cursor.description is not None
            columns = [column.name for column in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        return {names[int(row["port"])]: row for row in rows}

    def node_status(self) -> dict[str, str]:
        """Node name -> pgpool's status of it (``up``, ``down``, ``waiting``)."""
        return {name: row["status"] for name, row in self.nodes().items()}

    def _pid(self) -> int | None:
        # pgpool writes its pid into a buffer padded with NULs, not a line.
        with contextlib.suppress(OSError):
            match = re.match(rb"\s*(\d+)", (self.dir / "pgpool.pid").read_bytes())
            if match:
                return int(match.group(1))
        return None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to pgpool); SIGKILL to what is left of its process
        group after 10 s; back only once pgpool is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        # pgpool's children are in the session started for it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 10
        while pid is not None and process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # A killed pgpool leaves its pid file, and the next start refuses to run
        # while the pid in it is alive; it is not ours any more.
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "pgpool.pid").unlink()

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgpoolServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
