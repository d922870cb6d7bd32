"""A read kept on the primary by read-your-writes, when the primary's
connection breaks under it (a switchover ends every session, a crash too):
it runs again where the write is.

Not in the PgBouncer pass: behind PgBouncer, a server session that ends does
not break the client's connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import OperationalError, connections, router
from django.db.models.expressions import RawSQL
from django.test import override_settings

from replica_router import causal, current_token
from replica_router.runtime import get_monitor
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.testapp.models import Author

pytestmark = [
    pytest.mark.replica_routing,
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


@pytest.fixture
def slow_monitor(replica_cluster: Cluster) -> Iterator[None]:
    """One probe at start, then none for a minute: the router keeps a read
    after a write on the primary, as no probe sees the write replayed."""
    replica_cluster.wait_replayed()
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "CHECK_INTERVAL": 60.0}):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        yield


def end_primary_session(cluster: Cluster) -> None:
    pid = connections["default"].connection.info.backend_pid
    cluster.query(PRIMARY, "SELECT pg_terminate_backend(%s)", [pid])


def port_of(pk: int, using: str | None = None) -> int:
    rows = (
        Author.objects.db_manager(using)
        .filter(pk=pk)
        .annotate(port=RawSQL("inet_server_port()", ()))
    )
    port: int = rows.values_list("port", flat=True)[0]
    return port


@pytest.mark.usefixtures("slow_monitor")
def test_a_read_after_a_write_runs_again_on_the_primary_connected_to_again(
    replica_cluster: Cluster,
):
    with causal():
        author = Author.objects.create(name="wrote here")
        assert router.db_for_read(Author) == "default"  # pinned by the write
        end_primary_session(replica_cluster)
        port = port_of(author.pk)
    assert port == replica_cluster.port(PRIMARY)


@pytest.mark.usefixtures("slow_monitor")
def test_a_read_given_a_token_runs_on_a_replica_that_has_replayed_it(replica_cluster: Cluster):
    with causal():
        author = Author.objects.create(name="written elsewhere")
        token = current_token()
    with causal(token):
        # On the primary, as the router sends it while no probe has seen the
        # token replayed.
        Author.objects.using("default").exists()
        end_primary_session(replica_cluster)
        port = port_of(author.pk, using="default")
        assert connections["default"].borrowed_from in replica_cluster.replicas
        # The next query is the primary's again.
        assert Author.objects.using("default").filter(pk=author.pk).exists()
        assert connections["default"].borrowed_from is None
    assert port in {replica_cluster.port(name) for name in replica_cluster.replicas}


@pytest.mark.usefixtures("slow_monitor")
def test_a_read_that_is_not_pinned_by_a_write_still_fails(replica_cluster: Cluster):
    # A request that has not written and holds no token: nothing says where
    # else the read may run, so the error is the caller's.
    with causal():
        Author.objects.using("default").exists()
        end_primary_session(replica_cluster)
        with pytest.raises(OperationalError):
            Author.objects.using("default").exists()
    connections["default"].close()  # as Django does at the end of the request
