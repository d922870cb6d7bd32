"""pytest fixtures for testing against a real primary with streaming replicas.

Installed as a ``pytest11`` entry point, so any project that installs
django-replica-router can use them:

* ``replica_cluster`` (session): a running :class:`~replica_router.testing.cluster.Cluster`.
  It attaches to the cluster named by ``REPLICA_ROUTER_CLUSTER_DIR`` when that is
  set, and otherwise creates one for the session and removes it afterwards.
* ``pause_replica``: call it with a replica's name to hold that replica behind
  (WAL replay paused) until the test ends.
* ``delay_replica``: call it with a name and seconds to delay WAL apply on a
  replica until the test ends.

``pytest --replica-cluster`` starts a cluster before Django's settings are read
and exports ``DATABASE_URL``, ``REPLICA_URLS`` and ``REPLICA_ROUTER_CLUSTER_DIR``,
so a settings module can build ``DATABASES`` from them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import pytest

from replica_router.testing.cluster import Cluster

_ENV_DIR = "REPLICA_ROUTER_CLUSTER_DIR"
_started: list[Cluster] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("replica_router")
    group.addoption(
        "--replica-cluster",
        action="store_true",
        default=False,
        help="start a local PostgreSQL primary with streaming replicas for this run",
    )
    parser.addini(
        "replica_cluster_replicas", "replicas in a cluster the plugin starts", default="2"
    )


def _replicas(config: pytest.Config) -> int:
    return int(str(config.getini("replica_cluster_replicas")))


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # Runs before pytest-django imports the settings module, which may need the URLs.
    if not early_config.known_args_namespace.replica_cluster or os.environ.get(_ENV_DIR):
        return
    cluster = Cluster(tempfile.mkdtemp(prefix="replica-cluster-"))
    cluster.up(_replicas(early_config))
    _started.append(cluster)
    os.environ.update(cluster.env())


def pytest_unconfigure(config: pytest.Config) -> None:
    while _started:
        cluster = _started.pop()
        cluster.down()
        for key in cluster.env():
            os.environ.pop(key, None)


@pytest.fixture(scope="session")
def replica_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A running primary with streaming replicas for the whole test session."""
    existing = os.environ.get(_ENV_DIR)
    if existing:
        cluster = Cluster(existing)
        cluster.up(_replicas(request.config))  # restarts any node a test left down
        yield cluster
        return
    # Not tmp_path_factory: pytest's base temp dir is private to the user, and the
    # servers may run as another account (postgres, when pytest runs as root).
    cluster = Cluster(tempfile.mkdtemp(prefix="replica-cluster-"))
    cluster.up(_replicas(request.config))
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def pause_replica(replica_cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """Pause WAL replay on the named replica until the test ends."""
    paused: list[str] = []

    def pause(name: str) -> None:
        replica_cluster.pause(name)
        paused.append(name)

    yield pause
    for name in paused:
        if replica_cluster.is_up(name):
            replica_cluster.resume(name)


@pytest.fixture
def delay_replica(replica_cluster: Cluster) -> Iterator[Callable[[str, float], None]]:
    """Delay WAL apply on the named replica by some seconds until the test ends."""
    delayed: list[str] = []

    def delay(name: str, seconds: float) -> None:
        replica_cluster.delay(name, seconds)
        delayed.append(name)

    yield delay
    for name in delayed:
        if replica_cluster.is_up(name):
            replica_cluster.delay(name, 0)
