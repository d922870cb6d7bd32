"""Replication control and faults on the local cluster.

Pausing replay, delaying apply, recovery conflicts, promotion, and the ways a
host fails: killed (``kill``) or hung (``freeze``). A layer of
:class:`~replica_router.testing.cluster.Cluster`; use that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

from replica_router.testing.cluster_nodes import ClusterError
from replica_router.testing.cluster_replication import ClusterReplication
from replica_router.testing.processes import children, process_alive, process_state


class ClusterFaults(ClusterReplication):
    """Hold replicas behind, make them conflict, promote them, kill or freeze nodes."""

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
