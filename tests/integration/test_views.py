"""The JSON health view against the real cluster.

A load balancer polls it, often many times a second from several checkers, so
it must answer from what the monitor already knows and never open a database
connection per request; it must turn 503 only when reads really cannot be
served; and, being reachable by anyone, it must not hand hosts, ports or
errors to anonymous callers.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import AsyncClient, override_settings

from replica_router.runtime import get_monitor
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.testapp.models import Author
from tests.support.pools import close_pools

pytestmark = pytest.mark.replica_routing

ALL = ["default", "replica_1", "replica_2"]
ALL_NODES = [PRIMARY, "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)
URL = "/health/replicas/"
PASSWORD = "s3cret-pw"  # every alias's PASSWORD in testbed.settings
AUTH_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
PUBLIC_KEYS = {
    "alias",
    "role",
    "state",
    "in_rotation",
    "lag_seconds",
    "lag_bytes",
    "recovery_conflicts",
    "recovery_conflicts_per_second",
    "source",
}
TOPOLOGY_KEYS = PUBLIC_KEYS | {
    "host",
    "port",
    "weight",
    "reason",
    "since",
    "checked_at",
    "rtt_ms",
    "lsn",
    "last_error",
    "pool",
}


def node_name(alias: str) -> str:
    return PRIMARY if alias == "default" else alias


def router_settings(**changes: object) -> dict:
    return {**settings.REPLICA_ROUTER, **changes}


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.02)


def overall() -> str:
    monitor = get_monitor()
    assert monitor is not None
    return monitor.snapshot.overall


def assert_no_topology(response, cluster: Cluster) -> None:
    body = response.content.decode()
    assert "127.0.0.1" not in body
    for port in cluster.ports.values():
        assert not re.search(rf"(?<!\d){port}(?!\d)", body), port
    assert PASSWORD not in body
    document = json.loads(body)
    assert set(document) == {"status", "taken_at", "nodes"}
    assert [node["alias"] for node in document["nodes"]] == ALL
    for node in document["nodes"]:
        assert set(node) == PUBLIC_KEYS


def staff_client(client, cluster: Cluster):
    user = User.objects.create_user("ops", password="x", is_staff=True)
    client.force_login(user)
    # The session row is read back through the router, perhaps from a replica.
    cluster.wait_replayed()
    return client


@db
def test_anonymous_callers_see_states_but_no_hosts_ports_or_errors(client, replica_cluster):
    replica_cluster.wait_replayed()
    with override_settings(MIDDLEWARE=AUTH_MIDDLEWARE):
        response = client.get(URL)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert response["Content-Type"] == "application/json"
    assert_no_topology(response, replica_cluster)
    document = response.json()
    assert document["status"] == "ok"
    assert {node["state"] for node in document["nodes"]} == {"healthy"}


@db
def test_a_site_without_auth_middleware_is_served_as_anonymous(client, replica_cluster):
    response = client.get(URL)  # testbed.settings has no middleware: no request.user

    assert response.status_code == 200
    assert_no_topology(response, replica_cluster)


@db
def test_staff_see_the_topology(client, replica_cluster):
    with override_settings(MIDDLEWARE=AUTH_MIDDLEWARE):
        staff = staff_client(client, replica_cluster)
        response = staff.get(URL)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.content.decode()
    assert PASSWORD not in body
    document = json.loads(body)
    assert document["status"] == "ok"
    for node in document["nodes"]:
        assert set(node) == TOPOLOGY_KEYS
        assert node["host"] == "127.0.0.1"
        assert node["port"] == str(replica_cluster.port(node_name(node["alias"])))
        assert node["rtt_ms"] is not None
        assert node["lsn"] is not None


@db
def test_a_logged_in_user_who_is_not_staff_sees_no_topology(client, replica_cluster):
    user = User.objects.create_user("someone", password="x")
    client.force_login(user)
    replica_cluster.wait_replayed()
    with override_settings(MIDDLEWARE=AUTH_MIDDLEWARE):
        response = client.get(URL)

    assert response.status_code == 200
    assert_no_topology(response, replica_cluster)


@db
def test_an_async_server_serves_it_too(replica_cluster):
    replica_cluster.wait_replayed()
    with override_settings(MIDDLEWARE=AUTH_MIDDLEWARE):
        response = async_to_sync(AsyncClient().get)(URL)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert_no_topology(response, replica_cluster)


@db
def test_only_get_and_head_are_allowed(client):
    assert client.head(URL).status_code == 200
    assert client.post(URL).status_code == 405


@db
def test_503_when_no_replica_serves(client, outage: Cluster):
    with override_settings(
        REPLICA_ROUTER=router_settings(CHECK_INTERVAL=0.2), MIDDLEWARE=AUTH_MIDDLEWARE
    ):
        staff = staff_client(client, outage)
        assert staff.get(URL).status_code == 200  # starts this settings' monitor

        outage.kill("replica_1")
        outage.kill("replica_2")
        wait_until(lambda: overall() == "unavailable", "unavailable")

        as_staff = staff.get(URL)  # its session is read from the primary (FALLBACK)
        staff.logout()
        anonymous = client.get(URL)

    for response in (as_staff, anonymous):
        assert response.status_code == 503
        assert response["Cache-Control"] == "no-store"
        assert PASSWORD not in response.content.decode()
        document = response.json()
        assert document["status"] == "unavailable"
        states = {node["alias"]: node["state"] for node in document["nodes"]}
        assert states == {"default": "healthy", "replica_1": "down", "replica_2": "down"}
    assert_no_topology(anonymous, outage)
    replicas = as_staff.json()["nodes"][1:]
    assert all(node["last_error"] for node in replicas)  # the driver's message, scrubbed


@db
def test_degraded_still_serves_with_200(client, replica_cluster: Cluster, pause_replica):
    threshold = 64 * 1024  # far above an idle primary's own WAL, far below 5000 rows
    with override_settings(
        REPLICA_ROUTER=router_settings(CHECK_INTERVAL=0.2, MAX_LAG_BYTES=threshold)
    ):
        assert client.get(URL).status_code == 200
        pause_replica("replica_1")
        Author.objects.bulk_create(Author(name=f"author {i}") for i in range(5000))
        wait_until(lambda: overall() == "degraded", "degraded")

        response = client.get(URL)

    assert response.status_code == 200
    document = response.json()
    assert document["status"] == "degraded"
    replica_1 = document["nodes"][1]
    assert (replica_1["alias"], replica_1["state"], replica_1["in_rotation"]) == (
        "replica_1",
        "lagging",
        False,
    )
    assert replica_1["lag_bytes"] > threshold


@db
def test_without_health_checks_it_reports_unmonitored(client):
    with override_settings(REPLICA_ROUTER=router_settings(HEALTH_CHECKS=False)):
        response = client.get(URL)

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert response.json() == {"status": "unmonitored", "taken_at": None, "nodes": []}


def _sessions(conn) -> int:
    """Sessions ever established to the node (PostgreSQL 14+), all databases."""
    return int(conn.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()[0])


def _monitor_sessions(conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replica_router monitor'"
    ).fetchone()[0]


@db
def test_a_thousand_requests_open_no_database_connection(client, replica_cluster: Cluster):
    # The monitor probes once when the first request starts it, then not for a
    # minute: any session that appears during the requests is the view's. With
    # probes a minute apart, any lag at that probe takes a replica out of
    # rotation: let the replicas replay the last test's flush first.
    replica_cluster.wait_replayed()
    with override_settings(
        REPLICA_ROUTER=router_settings(CHECK_INTERVAL=60), MIDDLEWARE=AUTH_MIDDLEWARE
    ):
        assert client.get(URL).status_code == 200
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        wait_until(lambda: monitor.cycles >= 1, "probed")
        # Nothing of this process stays connected, so that a query would need a
        # new connection; pools are closed, so none reconnects in the background.
        connections.close_all()
        close_pools()

        created: list[str] = []

        def count(sender, connection, **kwargs):
            created.append(connection.alias)

        with ExitStack() as stack:
            # One measuring session per node, open from the first reading to the
            # last: it is the only new session allowed.
            conns = {name: stack.enter_context(replica_cluster.connect(name)) for name in ALL_NODES}
            for conn in conns.values():
                # Monitors stopped by the settings change close their sessions; the
                # new one keeps one session per node, made before "before".
                wait_until(lambda conn=conn: _monitor_sessions(conn) == 1, "one monitor session")
            before = {name: _sessions(conn) for name, conn in conns.items()}
            queries: list[str] = []

            def record(execute, sql, params, many, context):
                queries.append(sql)
                return execute(sql, params, many, context)

            for alias in ALL:  # unlike CaptureQueriesContext, this does not connect
                stack.enter_context(connections[alias].execute_wrapper(record))
            connection_created.connect(count)
            try:
                statuses = {client.get(URL).status_code for _ in range(1000)}
            finally:
                connection_created.disconnect(count)
            after = {name: _sessions(conn) for name, conn in conns.items()}

        assert monitor.cycles == 1  # the monitor did not probe meanwhile either

    assert statuses == {200}
    assert created == []
    assert queries == []
    for name in ALL_NODES:
        assert after[name] - before[name] <= 1, (name, before[name], after[name])


@pytest.mark.django_db(databases=["default", "replica_1", "replica_2"], transaction=True)
def test_the_staff_check_reads_the_user_from_the_primary(client, replica_cluster, pause_replica):
    """Right after a staff account is created, the replicas may not have it yet;
    the health view must still recognise the staff user (and not depend on the
    replicas it reports on)."""
    pause_replica("replica_1")
    pause_replica("replica_2")
    staff = User.objects.create_user("fresh-staff", password="pw", is_staff=True)
    middleware = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ]
    with override_settings(
        MIDDLEWARE=middleware,
        REPLICA_ROUTER={
            **settings.REPLICA_ROUTER,
            "PRIMARY_ONLY": ["sessions"],
            "MAX_LAG_SECONDS": 3600.0,
            "MAX_LAG_BYTES": 2**40,
        },
    ):
        client.force_login(staff)
        document = client.get("/health/replicas/").json()
    assert "host" in document["nodes"][0]
