"""The router in front of a real Patroni cluster that changes leader under load.

The primary is one libpq multi-host alias that takes the writable node; the
replicas are found from Patroni's REST API. While readers read and a writer
writes and reads its own rows back, Patroni switches over (``patronictl``) or
fails over (the leader is killed). No read may fail, none may be stale, and
writes resume on the new leader with no restart; the promoted node leaves
rotation and the demoted one joins once it streams from the new leader.
"""

from __future__ import annotations

import pytest
from django.db import close_old_connections, connections

from replica_router.runtime import get_monitor
from replica_router.testing.patroni import PatroniCluster
from testbed.polling import wait_for
from testbed.switchover import (
    Change,
    Traffic,
    alias_of,
    change_under_load,
    in_rotation,
    rotation_follows_the_cluster,
)

pytestmark = [pytest.mark.replica_routing, pytest.mark.usefixtures("db")]


def serving_leader(patroni: PatroniCluster) -> str:
    close_old_connections()  # a request boundary: this thread's last session ended with its leader
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT inet_server_port(), pg_is_in_recovery()")
        port, in_recovery = cursor.fetchone()
    assert in_recovery is False
    return next(name for name, node in patroni.nodes.items() if node.port == port)


def retryable(change: Change) -> None:
    """Each write that failed failed as Django's OperationalError or
    InterfaceError, which a caller may retry: never as a wrong result."""
    for _, error in change.traffic.failed_writes:
        assert error.startswith(("OperationalError", "InterfaceError")), error


def test_a_switchover_fails_no_read_serves_no_stale_read_and_writes_resume(patroni):
    change = change_under_load(patroni, patroni.switchover)
    print(f"\n{change.line('switchover')}")
    assert change.traffic.failed_reads == []
    assert change.traffic.stale_reads == 0
    assert serving_leader(patroni) == change.new
    # The demoted leader now serves reads as a replica of the new one.
    wait_for(lambda: alias_of(patroni.nodes[change.old].port) in in_rotation(), timeout=60)
    assert rotation_follows_the_cluster(patroni)
    retryable(change)


def test_a_killed_leader_fails_no_read_serves_no_stale_read_and_writes_resume(patroni):
    change = change_under_load(patroni, patroni.kill_leader)
    print(f"\n{change.line('leader killed')}")
    old = change.old
    assert change.traffic.failed_reads == []
    assert change.traffic.stale_reads == 0
    assert serving_leader(patroni) == change.new
    assert alias_of(patroni.nodes[old].port) not in in_rotation()
    retryable(change)
    # Started again, the old leader rejoins as a replica and serves reads.
    patroni.start(old)
    patroni.wait_streaming(timeout=120)
    wait_for(lambda: rotation_follows_the_cluster(patroni), timeout=60)
    assert get_monitor().snapshot.node(alias_of(patroni.nodes[old].port)).source == "patroni"


def test_a_patroni_api_that_stops_answering_keeps_the_last_list(patroni):
    """Every Patroni killed, PostgreSQL running on: discovery fails, the last
    list is kept and served, and it is followed again once Patroni is back."""
    wait_for(lambda: rotation_follows_the_cluster(patroni), timeout=60)
    before = in_rotation()
    with Traffic() as traffic:
        wait_for(lambda: traffic.total_reads() > 100)
        for name in patroni.nodes:
            patroni.kill_patroni(name)
        wait_for(lambda: get_monitor().snapshot.discovery.error is not None)
        failing = traffic.total_reads()
        # Several refreshes (REFRESH_SECONDS is 1) without an answer.
        wait_for(lambda: traffic.total_reads() > failing + 500)
        kept = in_rotation()
        for name in patroni.nodes:
            patroni.start(name)
        wait_for(lambda: get_monitor().snapshot.discovery.error is None, timeout=60)
    assert traffic.failed_reads == []
    assert traffic.stale_reads == 0
    assert kept == before
    assert set(traffic.reads) >= before  # the kept replicas served meanwhile
