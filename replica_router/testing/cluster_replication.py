"""Watching replication on the local cluster: streaming, WAL positions, lag, waits.

A layer of :class:`~replica_router.testing.cluster.Cluster`; use that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg

from replica_router.testing.cluster_nodes import PRIMARY, ClusterError, ClusterNodes


class ClusterReplication(ClusterNodes):
    """Which replicas stream, how far each has replayed, and waiting for them."""

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
