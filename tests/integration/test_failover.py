"""Reads keep being served when a replica dies under them, and when the primary stops.

Each test kills a real postmaster (SIGKILL) or stops the primary, and checks the
read that was headed for it, the state the monitor records, and where the read
was really served (the server port seen by the query itself).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import OperationalError, connections, router, transaction
from django.db.models.expressions import RawSQL
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from replica_router.backends.postgresql.base import DatabaseWrapper
from replica_router.health import State
from replica_router.health.monitor import Monitor
from replica_router.runtime import get_monitor
from replica_router.signals import replica_state_changed
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.polling import wait_for
from testbed.testapp.models import Author
from tests.support.factories import AuthorFactory
from tests.support.pools import close_pools

# make test runs these a second time through PgBouncer (see testbed/settings.py).
pytestmark = [pytest.mark.pgbouncer, pytest.mark.replica_routing]

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)


def served_port(using: str | None = None) -> int:
    """Read a row through the router (or an alias) and return the server port it ran on."""
    queryset = Author.objects.all() if using is None else Author.objects.using(using)
    return queryset.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[
        0
    ]


@pytest.fixture
def slow_monitor(replica_cluster: Cluster) -> Iterator[Monitor]:
    """A monitor that probes once at start and then not for a minute: whatever
    notices a dead replica during the test is the application itself. (The
    replicas replay the last test's writes first, or lag at that one probe
    would keep them out of rotation.)"""
    replica_cluster.wait_replayed()
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 60.0}):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        yield monitor


@pytest.fixture
def seeded(replica_cluster: Cluster) -> None:
    AuthorFactory()
    replica_cluster.wait_replayed()


@db
def test_a_refused_connection_is_served_by_another_replica(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    connections["replica_1"].close()
    killed("replica_1")
    # The alias is asked for explicitly, as a read routed to it would be.
    assert served_port("replica_1") == replica_cluster.port("replica_2")
    assert slow_monitor.snapshot.node("replica_1").state is State.DOWN
    assert {router.db_for_read(Author) for _ in range(10)} == {"replica_2"}


@db
def test_a_connection_that_breaks_mid_read_is_retried_elsewhere(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    # replica_1 keeps its connection (CONN_MAX_AGE): open it, then kill the server.
    assert served_port("replica_1") == replica_cluster.port("replica_1")
    killed("replica_1")
    assert served_port("replica_1") == replica_cluster.port("replica_2")
    assert slow_monitor.snapshot.node("replica_1").state is State.DOWN


@db
def test_a_read_run_again_is_recorded_twice_under_debug(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    # connection.queries (DEBUG, CaptureQueriesContext, debug toolbars) lists
    # every statement a server ran: the failed run and the run again.
    assert served_port("replica_1") == replica_cluster.port("replica_1")
    killed("replica_1")
    with CaptureQueriesContext(connections["replica_1"]) as captured:
        assert served_port("replica_1") == replica_cluster.port("replica_2")
    statements = [query["sql"] for query in captured.captured_queries]
    assert len(statements) == 2 and "inet_server_port()" in statements[0]
    assert statements[0] == statements[1]


@db
def test_a_pooled_replica_that_dies_is_read_around(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    # replica_2 is pooled: its idle pool connections break when the server dies.
    assert served_port("replica_2") == replica_cluster.port("replica_2")
    connections["replica_2"].close()  # back to the pool, still open
    killed("replica_2")
    assert served_port("replica_2") == replica_cluster.port("replica_1")
    assert slow_monitor.snapshot.node("replica_2").state is State.DOWN


@pytest.fixture
def checked_pool() -> Iterator[None]:
    """replica_2's pool with CONN_HEALTH_CHECKS (psycopg_pool checks each
    connection it hands out) and a pool timeout long enough to tell a read
    that waited it out from one that did not."""
    settings_dict = connections["replica_2"].settings_dict
    saved = dict(settings_dict), dict(settings_dict["OPTIONS"])
    connections["replica_2"].close()
    _forget_pool("replica_2")
    settings_dict["CONN_HEALTH_CHECKS"] = True
    settings_dict["OPTIONS"] = {
        **saved[1],
        "pool": {**saved[1]["pool"], "timeout": 30},
    }
    try:
        yield
    finally:
        connections["replica_2"].close()
        settings_dict.update(saved[0])
        settings_dict["OPTIONS"] = saved[1]
        _forget_pool("replica_2")


def _forget_pool(alias: str) -> None:
    close_pools()


@db
def test_a_pooled_replica_whose_connections_fail_their_health_check_is_read_around_once_found_down(
    seeded, killed, replica_cluster: Cluster, checked_pool
):
    """With CONN_HEALTH_CHECKS, psycopg_pool checks a connection before it
    hands it out and, when the check fails, waits for a new one until its
    timeout. The monitor finds the replica down and its pool is closed, which
    wakes the read; it goes elsewhere, not after the pool timeout."""
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 0.2}):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert served_port("replica_2") == replica_cluster.port("replica_2")
        connections["replica_2"].close()  # back to the pool, still open
        killed("replica_2")
        assert served_port("replica_2") == replica_cluster.port("replica_1")
        node = monitor.snapshot.node("replica_2")
        assert node.state is State.DOWN
        # Not "couldn't get a connection after 30.00 sec": the pool timeout.
        assert "couldn't get a connection" not in (node.last_error or ""), node.last_error


@db
def test_a_read_inside_a_transaction_on_a_dead_replica_is_not_retried(
    seeded, slow_monitor: Monitor, killed
):
    assert Author.objects.using("replica_1").exists()
    killed("replica_1")
    with pytest.raises(OperationalError), transaction.atomic(using="replica_1"):
        list(Author.objects.using("replica_1").all())


@db
def test_a_borrowed_connection_serves_one_cursor_only(
    seeded, slow_monitor: Monitor, killed, replica_cluster: Cluster
):
    connections["replica_1"].close()
    killed("replica_1")
    served_port("replica_1")
    wrapper = connections["replica_1"]
    assert isinstance(wrapper, DatabaseWrapper)
    assert wrapper.borrowed_from == "replica_2"
    replica_cluster.start("replica_1")
    replica_cluster.wait_streaming(["replica_1"])
    # Still marked down (the monitor has not looked), so this read is borrowed
    # again, on a fresh connection; the old one was dropped.
    assert served_port("replica_1") == replica_cluster.port("replica_2")


@db
def test_a_down_pool_does_not_storm_the_server_or_grow_threads(
    seeded, replica_cluster: Cluster, killed
):
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 0.2}):
        for _ in range(10):
            list(Author.objects.all())
        pool = connections["replica_2"].pool
        killed("replica_2")
        wait_for(lambda: get_monitor().snapshot.node("replica_2").state is State.DOWN)
        threads_before = threading.active_count()
        errors_before = pool.get_stats().get("connections_errors", 0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            list(Author.objects.all())  # routed around the dead replica
        assert threading.active_count() <= threads_before
        assert pool.get_stats().get("connections_errors", 0) - errors_before <= 3

        replica_cluster.start("replica_2")
        replica_cluster.wait_streaming(["replica_2"])
        wait_for(lambda: get_monitor().snapshot.node("replica_2").in_rotation)
        connections["replica_2"].close()
        # The pool the failure left behind is gone (closed by the backend) or,
        # if the monitor noticed first, still holds connections to the dead
        # server: either way a fresh one serves the replica's return.
        close_pools()
        assert served_port("replica_2") == replica_cluster.port("replica_2")


@db
def test_with_the_primary_down_reads_go_on_and_writes_fail_fast(seeded, replica_cluster: Cluster):
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 0.2}):
        router.db_for_read(Author)
        monitor = get_monitor()
        connections["default"].close()
        replica_cluster.stop_primary()
        try:
            wait_for(lambda: monitor.snapshot.primary.state is State.DOWN)
            for _ in range(20):
                assert Author.objects.count() >= 1
            assert all(n.in_rotation for n in monitor.snapshot.replicas)
            with pytest.raises(OperationalError):
                AuthorFactory()
            out = io.StringIO()
            with pytest.raises(SystemExit) as exited:
                call_command("replica_health", "--check", stdout=out)
            assert exited.value.code == 2
        finally:
            replica_cluster.start(PRIMARY)
            replica_cluster.wait_streaming()
            replica_cluster.wait_replayed()
            connections["default"].close()


# -- faults other than a dead server ---------------------------------------------

SLOW_READ = "SELECT pg_sleep(1), inet_server_port(), count(*) FROM testapp_author"


def _read_in_thread(
    alias: str, sql: str = SLOW_READ, *, before: Callable[[], None] | None = None
) -> tuple[threading.Thread, dict]:
    """Start ``sql`` on ``alias`` in a thread of its own (after ``before()``, if
    given); its row or error lands in the dict."""
    outcome: dict = {}

    def read() -> None:
        try:
            if before is not None:
                before()
            with connections[alias].cursor() as cursor:
                cursor.execute(sql)
                outcome["row"] = cursor.fetchone()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=read)
    thread.start()
    return thread, outcome


def _running_on(cluster: Cluster, node: str, sql: str = SLOW_READ) -> int | None:
    """The pid of the backend running ``sql`` on ``node``, once it runs."""
    return cluster.query(
        node,
        "SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'",
        [sql],
    )


@db
def test_a_read_cancelled_for_a_recovery_conflict_runs_again_elsewhere(
    seeded, slow_monitor: Monitor, recovery_conflicts, replica_cluster: Cluster
):
    recovery_conflicts("replica_1")
    conflicts_before = replica_cluster.recovery_conflicts("replica_1")
    thread, outcome = _read_in_thread("replica_1")
    wait_for(lambda: _running_on(replica_cluster, "replica_1") is not None)
    # An exclusive lock on the primary is replayed on the replica, where it
    # conflicts with the read's lock: with no streaming delay allowed, the
    # replica cancels the read at once ("conflict with recovery", 40001).
    with transaction.atomic(using="default"), connections["default"].cursor() as cursor:
        cursor.execute("LOCK TABLE testapp_author IN ACCESS EXCLUSIVE MODE")
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["row"][1] == replica_cluster.port("replica_2")
    # A backend counts its cancellation when it reports its statistics: at
    # once when it exits, within seconds when it stays, as behind PgBouncer.
    wait_for(lambda: replica_cluster.recovery_conflicts("replica_1") > conflicts_before)
    # The replica is fine: it stays in rotation.
    assert slow_monitor.snapshot.node("replica_1").in_rotation


@db
@pytest.mark.parametrize("alias", ["replica_1", "replica_2"])  # persistent, pooled
def test_a_read_whose_session_the_server_terminates_runs_again_elsewhere(
    alias, seeded, slow_monitor: Monitor, replica_cluster: Cluster
):
    thread, outcome = _read_in_thread(alias)
    wait_for(lambda: _running_on(replica_cluster, alias) is not None)
    # FATAL 57P01 "terminating connection due to administrator command": what a
    # backend says before it closes, as in a shutdown or a crash of the server.
    replica_cluster.query(
        alias, "SELECT pg_terminate_backend(%s)", [_running_on(replica_cluster, alias)]
    )
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    other = "replica_2" if alias == "replica_1" else "replica_1"
    assert outcome["row"][1] == replica_cluster.port(other)
    assert slow_monitor.snapshot.node(alias).state is State.DOWN


@db
def test_a_replica_that_dies_while_the_connection_is_set_up_is_read_around(
    seeded, slow_monitor: Monitor, replica_cluster: Cluster, monkeypatch, killed
):
    # The server accepts the connection, then goes before the session's set-up
    # queries (SET TIME ZONE) are done: as when it is killed at that moment. The
    # same set-up runs for a persistent connection and for one per request.
    from django.db.backends.postgresql.base import DatabaseWrapper as DjangoWrapper

    set_up = DjangoWrapper.init_connection_state
    ended: list[int] = []

    def dies_during_set_up(self) -> None:
        if self.alias == "replica_1" and not ended:
            pid = self.connection.info.backend_pid
            if settings.VIA_PGBOUNCER:
                # The connection is PgBouncer's (the pid is its cancel key, no
                # backend's) and lends no server until the set-up's query: the
                # server behind it dies.
                killed("replica_1")
            else:
                replica_cluster.query("replica_1", "SELECT pg_terminate_backend(%s, 5000)", [pid])
            ended.append(pid)
        set_up(self)

    monkeypatch.setattr(DjangoWrapper, "init_connection_state", dies_during_set_up)
    # A time zone other than the server's, so that the set-up runs SET TIME ZONE.
    with override_settings(USE_TZ=False, TIME_ZONE="America/Chicago"):
        connections["replica_1"].close()
        assert served_port("replica_1") == replica_cluster.port("replica_2")
    assert ended
    assert slow_monitor.snapshot.node("replica_1").state is State.DOWN


@pytest.fixture
def fast_monitor(replica_cluster: Cluster) -> Iterator[Monitor]:
    """A monitor that probes every 0.2 s and gives a probe 0.3 s to answer."""
    replica_cluster.wait_replayed()
    fast = {**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.3}
    with override_settings(REPLICA_ROUTER=fast):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        yield monitor


PLAIN_READ = "SELECT inet_server_port(), count(*) FROM testapp_author"


@db
@pytest.mark.parametrize(
    ("alias", "connected"),
    [
        ("replica_1", True),  # a persistent connection, open when the host hangs
        ("replica_1", False),  # a new connection, made while the host hangs
        ("replica_2", True),  # a pooled connection, in use when the host hangs
    ],
    ids=["persistent", "new-connection", "pooled"],
)
def test_a_read_on_a_hung_replica_runs_elsewhere_once_the_monitor_finds_it_down(
    alias, connected, seeded, fast_monitor: Monitor, freeze_node, replica_cluster: Cluster
):
    opened, frozen = threading.Event(), threading.Event()

    def open_then_wait_for_the_freeze() -> None:
        if connected:
            served_port(alias)  # this thread's connection is open when the host hangs
        opened.set()
        frozen.wait(30)

    thread, outcome = _read_in_thread(alias, PLAIN_READ, before=open_then_wait_for_the_freeze)
    assert opened.wait(30)
    freeze_node(alias)  # thawed when the test ends, not before
    frozen.set()
    # Without the cut-off the read waits for as long as the host hangs: here,
    # until the test ends.
    thread.join(20)
    assert not thread.is_alive(), "the read is still waiting on the hung replica"
    assert "error" not in outcome, outcome.get("error")
    other = "replica_2" if alias == "replica_1" else "replica_1"
    assert outcome["row"][0] == replica_cluster.port(other)
    assert fast_monitor.snapshot.node(alias).state is State.DOWN


@db
def test_a_primary_found_down_keeps_its_connections(
    fast_monitor: Monitor, replica_cluster: Cluster
):
    """The cut-off is for replicas, whose reads can go elsewhere. A primary's
    probe can time out (a busy host, a long checkpoint) while its sessions are
    fine; cutting them would abort every transaction in flight, and a COMMIT
    cut midway leaves the client not knowing whether it committed. Here the
    primary hangs long enough to be found down, then answers again, and a
    transaction that was open meanwhile commits."""
    opened, thawed = threading.Event(), threading.Event()
    outcome: dict = {}

    def write() -> None:
        try:
            with transaction.atomic(using="default"):
                Author.objects.using("default").create(name="before the hang")
                opened.set()
                thawed.wait(30)
                Author.objects.using("default").create(name="after the hang")
            outcome["done"] = True
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connections.close_all()

    found_down = threading.Event()

    def note(sender, alias, new_state, **kwargs):
        # Connected after the backend's receiver: called once the cut-off has run.
        if alias == "default" and new_state == "down":
            found_down.set()

    replica_state_changed.connect(note, dispatch_uid="test.primary_found_down")
    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert opened.wait(30)
        with replica_cluster.frozen(PRIMARY):
            assert found_down.wait(30)
    finally:
        replica_state_changed.disconnect(dispatch_uid="test.primary_found_down")
        thawed.set()
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome.get("done")
    names = set(Author.objects.using("default").values_list("name", flat=True))
    assert {"before the hang", "after the hang"} <= names


@db
def test_a_replica_found_down_loses_its_own_connections_and_nothing_else(
    seeded, fast_monitor: Monitor, replica_cluster: Cluster
):
    """The cut-off shuts down the connections the engine made for the alias,
    not every socket of the process to that address: another client of the
    same server (a plain psycopg connection, as another alias or a library
    would hold) keeps its session."""
    served_port("replica_1")  # the alias's persistent connection is open
    engine_connection = connections["replica_1"].connection
    with replica_cluster.connect("replica_1") as bystander:
        pid = bystander.info.backend_pid
        fast_monitor.report_failure("replica_1", "found down by the test")
        with pytest.raises(psycopg.OperationalError):
            engine_connection.execute("SELECT 1")  # its socket is shut down
        assert bystander.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
