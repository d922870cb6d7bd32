from __future__ import annotations

import pytest

from replica_router.testing.cluster import Cluster


@pytest.fixture(autouse=True)
def _cluster_left_healthy(replica_cluster: Cluster):
    """Each test gets every node up and replaying, whatever the previous test did."""
    yield
    for name in replica_cluster.nodes:
        if not replica_cluster.is_up(name):
            replica_cluster.start(name)
    for name in replica_cluster.replicas:
        if replica_cluster.is_paused(name):
            replica_cluster.resume(name)
