"""Replica discovery against a real DNS server (dnsmasq) and the real cluster.

The DNS server lists the replicas by SRV records; the test changes the
records while reader threads read through the router, and checks that a
replica added serves reads with no restart, that one removed gets no new
read and no read fails, and that a DNS server that stops answering keeps the
last list.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from replica_router.cutoff import registry
from replica_router.runtime import get_monitor, load
from replica_router.testing.cluster import Cluster
from replica_router.testing.dns_server import DnsServer
from testbed.discovery import NAME, Readers, alias_of, in_rotation, serve
from testbed.polling import wait_for

pytestmark = [pytest.mark.replica_routing]


@pytest.fixture
def db(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Database access outside a TestCase: a TestCase refuses queries to the
    aliases missing from its ``databases``, and discovered aliases are named
    only when found (docs/discovery.md). The tests only read."""
    with django_db_blocker.unblock():
        yield
    connections.close_all()


FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.3, "RECOVERY_CHECKS": 2}
REFRESH = 0.5
DRAIN = 1.0


@pytest.fixture
def dns(replica_cluster: Cluster) -> Iterator[DnsServer]:
    with DnsServer(ttl=0) as server:
        yield server


def discovering(dns: DnsServer, **overrides: object) -> override_settings:
    return override_settings(
        REPLICA_ROUTER={
            **settings.REPLICA_ROUTER,
            **FAST,
            "REPLICAS": {},
            "TRANSACTION_POOLING": False,
            "DISCOVERY": {
                "SOURCE": "dns",
                "NAME": NAME,
                "NAMESERVERS": [dns.address],
                "REFRESH_SECONDS": REFRESH,
                "JITTER_SECONDS": 0,
                "TIMEOUT_SECONDS": 0.5,
                "DRAIN_SECONDS": DRAIN,
                **overrides,
            },
        }
    )


@pytest.mark.usefixtures("db")
def test_a_replica_added_to_dns_serves_reads_without_a_restart(dns, replica_cluster):
    serve(dns, replica_cluster, "replica_1")
    first, second = alias_of(replica_cluster, "replica_1"), alias_of(replica_cluster, "replica_2")
    with discovering(dns, WARMUP_SECONDS=0):
        wait_for(lambda: in_rotation() == {first})
        with Readers() as readers:
            serve(dns, replica_cluster, "replica_1", "replica_2")
            added_at = time.monotonic()
            wait_for(lambda: readers.served(added_at)[second] > 0)
        assert readers.failed == []
        # It is a real replica of this cluster, found at the SRV record's port.
        with connections[second].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery(), inet_server_port()")
            assert cursor.fetchone() == (True, replica_cluster.port("replica_2"))
        snapshot = get_monitor().snapshot
        assert snapshot.node(second).source == "dns"
        assert snapshot.discovery.replicas == 2
        assert snapshot.discovery.error is None


# The template's connection style is the discovered replicas': per request
# (the primary's), persistent (replica_1: CONN_MAX_AGE 60) or pooled (replica_2).
@pytest.mark.parametrize("template", ["default", "replica_1", "replica_2"])
@pytest.mark.usefixtures("db")
def test_a_replica_removed_from_dns_gets_no_new_read_and_no_read_fails(
    dns, replica_cluster, template
):
    serve(dns, replica_cluster, "replica_1", "replica_2")
    first, second = alias_of(replica_cluster, "replica_1"), alias_of(replica_cluster, "replica_2")
    with discovering(dns, WARMUP_SECONDS=0, TEMPLATE=template):
        wait_for(lambda: in_rotation() == {first, second})
        with Readers() as readers:
            wait_for(lambda: readers.served()[first] > 0)
            serve(dns, replica_cluster, "replica_2")
            wait_for(lambda: first not in load().replicas)
            removed_at = time.monotonic()
            # Drained, then retired: each thread closes its connection to it
            # at its next request boundary, and then the alias goes.
            wait_for(lambda: first not in connections.settings)
        assert readers.failed == []
        assert readers.served(removed_at)[first] == 0
        assert readers.served(removed_at)[second] > 0
        assert registry.count(first) == 0


@pytest.mark.usefixtures("db")
def test_a_dns_server_that_stops_answering_keeps_the_last_list(dns, replica_cluster):
    serve(dns, replica_cluster, "replica_1", "replica_2")
    both = {alias_of(replica_cluster, "replica_1"), alias_of(replica_cluster, "replica_2")}
    with discovering(dns, WARMUP_SECONDS=0):
        wait_for(lambda: in_rotation() == both)
        with Readers() as readers:
            dns.halt()
            down_at = time.monotonic()
            wait_for(lambda: get_monitor().snapshot.discovery.error is not None)
            # Several refreshes later the list still holds both replicas.
            time.sleep(4 * REFRESH)
            served = readers.served(down_at)
            kept = set(load().replicas)
            snapshot = get_monitor().snapshot  # the nodes' states, should one have left
            dns.start()
            wait_for(lambda: get_monitor().snapshot.discovery.error is None)
        assert readers.failed == []
        # The list is what discovery keeps; rotation is the health monitor's.
        assert kept == both
        assert set(served) == both, snapshot
        assert set(load().replicas) == both


@pytest.mark.usefixtures("db")
def test_a_new_replica_warms_up_from_a_tenth_of_its_share(dns, replica_cluster):
    serve(dns, replica_cluster, "replica_1")
    first, second = alias_of(replica_cluster, "replica_1"), alias_of(replica_cluster, "replica_2")
    with discovering(dns, WARMUP_SECONDS=600):
        wait_for(lambda: in_rotation() == {first})
        serve(dns, replica_cluster, "replica_1", "replica_2")
        wait_for(lambda: second in in_rotation())
        weights = load().balancer.weights
        # The first list serves at full share; the one that joined later ramps
        # up from a tenth of it (weights are scaled by 10 while one warms up).
        assert weights[first] == 10
        assert 1 <= weights[second] <= 2


@pytest.mark.parametrize("template", ["default", "replica_2"])  # per request, pooled
@pytest.mark.usefixtures("db")
def test_replicas_found_by_a_routing_replaced_go_with_their_last_connection(
    dns, replica_cluster, template
):
    # The routing is replaced when the settings change, as when a test ends;
    # a later test that asks for databases="__all__" must find only the
    # aliases the settings name, or its flush runs on a real replica.
    serve(dns, replica_cluster, "replica_1")
    first = alias_of(replica_cluster, "replica_1")
    with discovering(dns, WARMUP_SECONDS=0, TEMPLATE=template):
        wait_for(lambda: in_rotation() == {first})
        with connections[first].cursor() as cursor:
            cursor.execute("SELECT 1")
    assert first in connections  # its connection is still open
    connections[first].close()  # as a TransactionTestCase does after each test
    # A pooled one's pool is closed in the background first.
    wait_for(lambda: set(connections) == set(settings.DATABASES))
