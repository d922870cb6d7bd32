"""A probe without a server: its client-side deadline, its kept connections, and
what it makes of a node's answers (a scripted psycopg connection)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from replica_router.health import probe
from replica_router.health.model import Probe
from replica_router.health.probe import ParallelProber, ProbeConnections

CAUGHT_UP = Probe(ok=True, in_recovery=True, receive_lsn=1000, replay_lsn=1000, streaming=True)


class Node:
    """One node's connections: a probe that ``hangs`` waits until released."""

    def __init__(self) -> None:
        self.connects = 0
        self.hangs = threading.Event()
        self.released = threading.Event()
        self.broken: set[int] = set()  # connection numbers whose next query fails

    def connect(self, params: dict[str, Any], timeout: float) -> Any:
        self.connects += 1
        return Connection(self.connects)

    def measure(self, conn: Connection, started: float, timeout: float) -> Probe:
        if conn.number in self.broken:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        if self.hangs.is_set():
            self.released.wait(30)  # a frozen server: no answer, no error
        return CAUGHT_UP


class Connection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def node(monkeypatch) -> Iterator[Node]:
    fake = Node()
    monkeypatch.setattr(probe, "_connect", fake.connect)
    monkeypatch.setattr(probe, "_measure", fake.measure)
    monkeypatch.setattr(probe.registry, "register", lambda alias, conn: None)
    yield fake
    fake.released.set()


def params_for(alias: str) -> dict[str, Any]:
    return {"host": alias}


def test_the_deadline_is_kept_by_the_client_while_the_server_never_answers(node):
    """No statement timeout can fire on a frozen server: the prober stops
    waiting itself, while the probe thread is still stuck."""
    prober = ParallelProber(workers=1)
    node.hangs.set()
    [(alias, result)] = prober.probe(["replica_1"], params_for, timeout=0.05).items()
    assert not node.released.is_set()  # the server has still not answered
    assert alias == "replica_1" and not result.ok
    assert result.error == "no answer within CHECK_TIMEOUT (0.05s)"
    prober.close()


def test_a_node_whose_probe_still_hangs_is_not_probed_again(node):
    prober = ParallelProber(workers=2)
    node.hangs.set()
    prober.probe(["replica_1"], params_for, timeout=0.05)
    again = prober.probe(["replica_1"], params_for, timeout=0.05)["replica_1"]
    assert again.error == "previous probe still waiting"
    assert node.connects == 1  # no second thread, no second connection
    node.hangs.clear()
    node.released.set()
    for _ in range(1000):  # until the stuck probe has returned
        if prober.probe(["replica_1"], params_for, timeout=1)["replica_1"].ok:
            break
        threading.Event().wait(0.01)
    else:
        pytest.fail("the node was never probed again after it answered")
    prober.close()


def test_a_kept_connection_serves_the_next_probe(node):
    kept = ProbeConnections()
    assert kept.probe("replica_1", params_for("replica_1"), timeout=1).ok
    assert kept.probe("replica_1", params_for("replica_1"), timeout=1).ok
    assert node.connects == 1
    kept.close()


def test_a_kept_connection_that_fails_is_replaced_within_the_same_probe(node):
    kept = ProbeConnections()
    kept.probe("replica_1", params_for("replica_1"), timeout=1)
    node.broken.add(1)  # the server restarted since: the kept session is gone
    result = kept.probe("replica_1", params_for("replica_1"), timeout=1)
    assert result.ok  # up, not down
    assert node.connects == 2
    kept.close()


def test_new_settings_make_a_new_connection(node):
    kept = ProbeConnections()
    kept.probe("replica_1", {"host": "old"}, timeout=1)
    kept.probe("replica_1", {"host": "test-database"}, timeout=1)
    assert node.connects == 2
    kept.close()


# -- what a probe makes of the answers ------------------------------------------


class Scripted:
    """A psycopg connection whose queries answer from a script, by query."""

    def __init__(self, rows: list[tuple[Any, ...]], *, privileged: bool = True) -> None:
        self.node_rows = list(rows)
        self.privileged = privileged
        self.queries: list[str] = []

    def execute(self, sql: str) -> Scripted:
        self.queries.append(sql)
        if "pg_control_system" in sql:
            if not self.privileged:
                raise psycopg.errors.InsufficientPrivilege("permission denied")
            self._rows = [(7, "streaming")]
        elif "pg_stat_replication" in sql:
            self._rows = [("replica_1", 0.25)]
        else:
            self._rows = [self.node_rows.pop(0)]
        return self

    def nextset(self) -> None:
        return None

    def fetchone(self) -> tuple[Any, ...]:
        return self._rows[0]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


def measure(conn: Scripted) -> Probe:
    return probe._measure(conn, 0.0, 0.5)  # type: ignore[arg-type]


def test_every_query_carries_its_own_statement_timeout():
    conn = Scripted([(True, None, 1000, 1000, 0.0, False, 0)])
    measure(conn)
    assert all(sql.startswith("SET LOCAL statement_timeout = 500; ") for sql in conn.queries)


def test_a_replica_replaying_what_it_received_is_looked_at_again():
    conn = Scripted(
        [(True, None, 2000, 1000, 9.0, False, 3), (True, None, 2000, 2000, 9.0, False, 3)]
    )
    result = measure(conn)
    assert (result.receive_lsn, result.replay_lsn) == (2000, 2000)
    assert result.recovery_conflicts == 3 and result.streaming is True
    assert result.system_identifier == 7


def test_a_primary_reports_its_position_and_its_replicas_lag():
    result = measure(Scripted([(False, 5000, None, None, None, None, None)]))
    assert result.ok and not result.in_recovery and result.current_lsn == 5000
    assert result.replay_lags == {"replica_1": 0.25}
    assert result.streaming is None and result.recovery_conflicts is None


def test_without_pg_monitor_the_privileged_fields_are_left_out():
    result = measure(Scripted([(True, None, 1000, 1000, 0.0, False, 0)], privileged=False))
    assert result.ok
    assert result.system_identifier is None and result.streaming is None
