"""Chaos under load: a replica is killed, another paused, the first restarted,
all while client threads read through the router on pooled aliases.

The figures are printed into the test output (and kept in docs/benchmarks.md).
A read must never fail, never be served by a node that is dead or over the lag
threshold at that moment, and never sit out a dead replica's pool timeout.

What the tests assert does not depend on how fast the machine is: no read
failed, none was served by a node while it was dead, none by a replica after
the monitor had taken it out for lag. Latencies and staleness depend on the
machine: they are the printed figures (``make bench`` keeps the lines that
start with "chaos"), never assertions.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections, connections, router
from django.db.models.expressions import RawSQL
from django.test import override_settings
from prometheus_client import REGISTRY

from replica_router.runtime import get_monitor
from replica_router.signals import replica_state_changed
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.polling import wait_for
from testbed.testapp.models import Author
from tests.support.pools import close_pools

# make test runs these a second time through PgBouncer (see testbed/settings.py).
pytestmark = [pytest.mark.pgbouncer, pytest.mark.replica_routing]

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

READERS = 8
MAX_LAG_SECONDS = 1.0
CHAOS = {
    "CHECK_INTERVAL": 0.2,
    "CHECK_TIMEOUT": 0.5,
    "RECOVERY_CHECKS": 2,
    "MAX_LAG_SECONDS": MAX_LAG_SECONDS,
    "FALLBACK": "primary",
}


@dataclass
class Load:
    """Reader threads reading a heartbeat row that a writer keeps fresh."""

    heartbeat_pk: int
    write: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reads: list[tuple[float, float, int, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def _reader(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    beat, port = (
                        Author.objects.filter(pk=self.heartbeat_pk)
                        .annotate(port=RawSQL("inet_server_port()", ()))
                        .values_list("name", "port")
                        .get()
                    )
                except Exception as exc:
                    with self.lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    self._end_request()
                finished = time.perf_counter()
                age = time.time() - float(beat)
                with self.lock:
                    self.reads.append((started, finished - started, port, age))
        finally:
            connections.close_all()

    def _end_request(self) -> None:
        # What the end of a request does: a connection with CONN_MAX_AGE 0 is
        # closed (a pooled one goes back to its pool). An error there is one
        # the user would see too.
        try:
            close_old_connections()
        except Exception as exc:
            with self.lock:
                self.failures.append(f"closing: {type(exc).__name__}: {exc}")

    def _writer(self) -> None:
        try:
            while not self.stop.is_set():
                Author.objects.filter(pk=self.heartbeat_pk).update(name=repr(time.time()))
                time.sleep(0.05)
        finally:
            connections.close_all()

    def start(self) -> None:
        targets = [self._reader] * READERS + ([self._writer] if self.write else [])
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@contextlib.contextmanager
def _reading(cluster: Cluster, settings_overrides: dict, heartbeat_pk: int):
    """The routing under ``settings_overrides``, its monitor running, and readers
    (plus a heartbeat writer) started; yields (monitor, load, t0)."""
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **settings_overrides}):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        load = Load(heartbeat_pk)
        t0 = time.perf_counter()
        load.start()
        try:
            yield monitor, load, t0
        finally:
            load.finish()


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values else 0.0


@pytest.fixture
def transitions() -> Iterator[list[tuple[float, str, str]]]:
    """(perf_counter time, alias, new state) of every state change the monitor
    announces; it announces a change once the rotation has changed."""
    seen: list[tuple[float, str, str]] = []

    def receiver(sender, alias, old_state, new_state, reason, **kwargs):
        seen.append((time.perf_counter(), alias, new_state))

    replica_state_changed.connect(receiver, weak=False)
    yield seen
    replica_state_changed.disconnect(receiver)


@db
def test_chaos_replica_killed_paused_and_restarted_under_read_load(
    replica_cluster: Cluster, transitions, capsys
):
    heartbeat = Author.objects.create(name=repr(time.time()))
    replica_cluster.wait_replayed()
    ports = {name: replica_cluster.port(name) for name in replica_cluster.nodes}
    changes: list[tuple[float, str, str]] = []
    with _reading(replica_cluster, CHAOS, heartbeat.pk) as (monitor, load, t0):
        events: dict[str, float] = {}
        try:
            time.sleep(5)
            replica_cluster.kill("replica_2")  # the pooled replica
            events["kill replica_2"] = time.perf_counter()
            time.sleep(5)
            replica_cluster.pause("replica_1")
            events["pause replica_1"] = time.perf_counter()
            time.sleep(5)
            # Taken before the start: with a PgBouncer in front of it, start()
            # returns only once that serves again, by when the server may
            # have served reads for a while.
            events["start replica_2"] = time.perf_counter()
            replica_cluster.start("replica_2")
            deadline = time.perf_counter() + 30
            while not monitor.snapshot.node("replica_2").in_rotation:
                assert time.perf_counter() < deadline, "replica_2 never came back"
                time.sleep(0.05)
            events["replica_2 back in rotation"] = time.perf_counter()
            time.sleep(max(0.0, t0 + 20 - time.perf_counter()))
        finally:
            load.finish()  # before the cluster is put back
            changes = list(transitions)  # resuming replica_1 brings it back: not under load
            if replica_cluster.is_up("replica_1"):
                replica_cluster.resume("replica_1")
            replica_cluster.start("replica_2")
            replica_cluster.wait_streaming()
            replica_cluster.wait_replayed()

    latencies = [duration for _, duration, _, _ in load.reads]
    # Served by a node that was dead at that moment: replica_2 between its
    # kill and its restart.
    from_dead = [
        r
        for r in load.reads
        if r[2] == ports["replica_2"]
        and events["kill replica_2"] <= r[0] < events["start replica_2"]
    ]
    # Served with data older than the lag threshold (the heartbeat's age): a
    # figure, which a slow machine raises (a read that waits, a writer that
    # does not get to write); what is asserted is the monitor's verdict below.
    too_stale = [r for r in load.reads if r[3] > MAX_LAG_SECONDS]
    # replica_1 stays paused to the end: the monitor takes it out for lag and
    # keeps it out, and no read that starts after that may be served there.
    replica_1_changes = [(at, new) for at, alias, new in changes if alias == "replica_1"]
    final_out = list(
        itertools.takewhile(lambda change: change[1] != "healthy", reversed(replica_1_changes))
    )
    out_since = final_out[-1][0] if final_out else math.inf
    after_out = [r for r in load.reads if r[0] > out_since and r[2] == ports["replica_1"]]
    by_node = {name: sum(1 for r in load.reads if r[2] == port) for name, port in ports.items()}
    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    slowest = max(latencies, default=0.0)
    with capsys.disabled():
        print(
            f"\nchaos: {READERS} reader threads for {time.perf_counter() - t0:.1f} s, "
            f"{len(load.reads)} reads, {len(load.failures)} failed; "
            f"{len(from_dead)} served by a dead node, {len(too_stale)} staler than "
            f"{MAX_LAG_SECONDS:g} s; served by {by_node}; latency p50 {p50 * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, slowest {slowest * 1000:.1f} ms; "
            + ", ".join(f"{name} at {at - t0:.1f} s" for name, at in events.items())
        )
    assert load.failures == []
    assert from_dead == []
    assert "lagging" in {new for _, new in final_out}, replica_1_changes
    assert after_out == [], after_out[:3]
    assert by_node["replica_2"] > 0 and by_node["replica_1"] > 0


@db
def test_chaos_primary_stopped_under_read_load(replica_cluster: Cluster, capsys):
    heartbeat = Author.objects.create(name=repr(time.time()))
    replica_cluster.wait_replayed()
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **CHAOS}):
        router.db_for_read(Author)
        load = Load(heartbeat.pk, write=False)
        t0 = time.perf_counter()
        load.start()
        try:
            time.sleep(1)
            replica_cluster.stop_primary()
            stopped = time.perf_counter()
            time.sleep(4)
            replica_cluster.start(PRIMARY)
            started = time.perf_counter()
            time.sleep(1)
        finally:
            load.finish()
            replica_cluster.start(PRIMARY)
            replica_cluster.wait_streaming()
            replica_cluster.wait_replayed()
            connections["default"].close()
    during = [r for r in load.reads if stopped <= r[0] < started]
    latencies = [r[1] for r in load.reads]
    with capsys.disabled():
        print(
            f"\nchaos, primary stopped for {started - stopped:.1f} s: {len(load.reads)} reads "
            f"({len(during)} while it was down), {len(load.failures)} failed; "
            f"p99 {_percentile(latencies, 99) * 1000:.1f} ms, "
            f"slowest {max(latencies, default=0) * 1000:.1f} ms; "
            f"total {time.perf_counter() - t0:.1f} s"
        )
    assert load.failures == []
    assert len(during) > 0


# -- every fault a replica has, in every way Django holds connections ---------------

# The set-up: probes every 0.5 s, each given 0.5 s to answer.
FAULTS = {**CHAOS, "CHECK_INTERVAL": 0.5, "CHECK_TIMEOUT": 0.5, "MAX_LAG_SECONDS": 5.0}
MODES = {
    "pooled": {
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"pool": {"min_size": 1, "max_size": 8, "timeout": 1}},
    },
    "persistent": {"CONN_MAX_AGE": 60, "OPTIONS": {}},
    "per-request": {"CONN_MAX_AGE": 0, "OPTIONS": {}},
}
FAULT_AT, FAULT_FOR, RUN_FOR = 2.0, 7.0, 11.0


def _conflict_storm(cluster: Cluster, stop: threading.Event) -> None:
    """Keep the primary updating, vacuuming and locking the table being read.

    With the replicas set to cancel conflicting queries, replaying a VACUUM's
    removal of old row versions cancels the reads that may still need them, and
    replaying an exclusive lock (VACUUM takes one to truncate a table) cancels
    every read holding the table at that moment. A report on each replica that
    keeps its transaction open is cancelled on every round, so the storm is
    sure to happen however the readers' timing falls.
    """
    dbname = connections["default"].settings_dict["NAME"]
    reports: dict[str, psycopg.Connection] = {}
    with cluster.connect(PRIMARY, dbname=dbname) as conn:
        while not stop.is_set():
            for name in cluster.replicas:
                report = reports.get(name)
                # The storm cancels the report, and may cancel its reconnection
                # too ("conflict with recovery" during start-up): try next round.
                with contextlib.suppress(psycopg.Error):
                    if report is None or report.closed or report.info.transaction_status == 3:
                        if report is not None:
                            report.close()
                        reports.pop(name, None)
                        report = reports[name] = psycopg.connect(cluster.conninfo(name, dbname))
                    report.execute("SELECT count(*) FROM testapp_author").fetchone()
            conn.execute("UPDATE testapp_author SET name = name")
            conn.execute("VACUUM testapp_author")
            with conn.transaction():
                conn.execute("LOCK TABLE testapp_author IN ACCESS EXCLUSIVE MODE")
            stop.wait(0.02)
    for report in reports.values():
        report.close()


def _cause(fault: str, cluster: Cluster, target: str, stop: threading.Event) -> None:
    if fault == "kill":
        cluster.kill(target)
        stop.wait(FAULT_FOR)
        cluster.start(target)
    elif fault == "freeze":
        with cluster.frozen(target):
            stop.wait(FAULT_FOR)
    else:
        _conflict_storm(cluster, stop)


@db
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["kill", "freeze", "conflicts"])
def test_chaos_faults_under_read_load(
    fault, mode, replica_cluster: Cluster, recovery_conflicts, monkeypatch, capsys
):
    """8 readers through the router while a replica is killed, frozen for 7 s, or
    both replicas cancel reads in a conflict storm: no read fails."""
    for alias in ("replica_1", "replica_2"):
        for key, value in MODES[mode].items():
            monkeypatch.setitem(settings.DATABASES[alias], key, value)
    if fault == "conflicts":
        for alias in ("replica_1", "replica_2"):
            recovery_conflicts(alias)
    heartbeat = Author.objects.create(name=repr(time.time()))
    replica_cluster.wait_replayed()
    ports = {replica_cluster.port(name): name for name in replica_cluster.nodes}
    conflicts_before = _conflicts_retried()
    cancelled_before = sum(map(replica_cluster.recovery_conflicts, replica_cluster.replicas))
    target = "replica_1"
    stop_fault = threading.Event()
    went_down = []
    with _reading(replica_cluster, FAULTS, heartbeat.pk) as (monitor, load, t0):
        faulting = threading.Thread(
            target=_cause, args=(fault, replica_cluster, target, stop_fault), daemon=True
        )
        try:
            time.sleep(FAULT_AT)
            faulting.start()
            while time.perf_counter() < t0 + RUN_FOR:
                if monitor.snapshot.node(target).state == "down":
                    went_down.append(True)
                time.sleep(0.05)
        finally:
            stop_fault.set()
            faulting.join(30)
            load.finish()
            _restore(replica_cluster)

    conflicts = _conflicts_retried() - conflicts_before
    latencies = [r[1] for r in load.reads]
    on_replicas = sum(1 for r in load.reads if ports.get(r[2], PRIMARY) != PRIMARY)
    share = on_replicas / len(load.reads) if load.reads else 0.0
    with capsys.disabled():
        print(
            f"\nchaos {fault}, {mode}: {READERS} readers for {time.perf_counter() - t0:.1f} s, "
            f"{len(load.reads)} reads, {len(load.failures)} failed, "
            f"{share:.0%} served by replicas, {conflicts:.0f} cancelled by a replica for a "
            "recovery conflict and run again elsewhere; "
            f"p99 {_percentile(latencies, 99) * 1000:.1f} ms, "
            f"slowest {max(latencies, default=0) * 1000:.1f} ms"
        )
    assert load.failures == [], load.failures[:3]
    if fault in ("kill", "freeze"):
        assert went_down, f"{target} never left rotation: the fault did not happen"
    else:
        # The replicas' own count, flushed once their sessions have ended; none
        # within 30 s would mean the storm did not happen.
        wait_for(
            lambda: (
                sum(map(replica_cluster.recovery_conflicts, replica_cluster.replicas))
                > cancelled_before
            ),
        )


def _conflicts_retried() -> float:
    """Reads the replicas cancelled for recovery conflicts, counted by the failover
    engine (the server's own count is flushed only when its backends go idle)."""
    return sum(
        REGISTRY.get_sample_value("replica_router_recovery_conflicts_total", {"alias": alias}) or 0
        for alias in ("replica_1", "replica_2")
    )


def _restore(cluster: Cluster) -> None:
    """Every node running, streaming and caught up; no connection or pool of this
    process left pointing at a server that was killed or frozen."""
    for name in cluster.nodes:
        cluster.thaw(name)
        cluster.start(name)
    cluster.wait_streaming()
    cluster.wait_replayed()
    connections.close_all()
    close_pools()
