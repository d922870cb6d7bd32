"""pytest fixtures for testing against a real primary with streaming replicas.

Loaded on request, not into every pytest run of a project that installs
django-replica-router: ``-p replica_router.testing.pytest_plugin`` in pytest's
``addopts`` (which ``--replica-cluster`` needs), or
``pytest_plugins = ["replica_router.testing.pytest_plugin"]`` in the top-level
``conftest.py``. It gives:

* ``replica_cluster`` (session): a running :class:`~replica_router.testing.cluster.Cluster`.
  It attaches to the cluster named by ``REPLICA_ROUTER_CLUSTER_DIR`` when that is
  set, and otherwise creates one for the session and removes it afterwards.
* ``pause_replica``: call it with a replica's name to hold that replica behind
  (WAL replay paused) until the test ends.
* ``delay_replica``: call it with a name and seconds to delay WAL apply on a
  replica until the test ends.
* ``freeze_node``: call it with a node's name to SIGSTOP its postmaster and
  backends (a hung host: connections stay open, nothing answers) until the
  test ends.
* ``recovery_conflicts``: call it with a replica's name to make it cancel
  queries that conflict with WAL replay (``hot_standby_feedback = off``,
  ``max_standby_streaming_delay = 0``) until the test ends.
* ``@pytest.mark.replica_routing``: the test's reads go to the replicas for
  real, as outside tests (:func:`~replica_router.testing.routing.replica_routing`);
  without it, a replica that mirrors the primary's test database serves reads
  through the primary's connection.
* ``redis_server`` (session): the URL (``redis://127.0.0.1:PORT/0``) of a
  throwaway ``redis-server`` started for the session and stopped afterwards
  (:class:`~replica_router.testing.redis_server.RedisServer`).

``pytest --replica-cluster`` starts a cluster before Django's settings are read
and exports ``DATABASE_URL``, ``REPLICA_URLS`` and ``REPLICA_ROUTER_CLUSTER_DIR``,
so a settings module can build ``DATABASES`` from them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from replica_router.testing.cluster import Cluster
from replica_router.testing.redis_server import RedisServer

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


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("replica_cluster") and not _started and not os.environ.get(_ENV_DIR):
        # pytest calls pytest_load_initial_conftests only for plugins named
        # before the conftest files load, so pytest_plugins comes too late.
        raise pytest.UsageError(
            "--replica-cluster needs the plugin loaded with "
            "-p replica_router.testing.pytest_plugin (on the command line or in "
            "addopts), not through pytest_plugins in conftest.py"
        )
    config.addinivalue_line(
        "markers",
        "replica_routing: route reads to the mirrored replicas for real in this test",
    )


@pytest.fixture(autouse=True)
def _replica_routing_marker(request: pytest.FixtureRequest) -> None:
    # Set for each test, not undone after it: consecutive marked tests keep one
    # routing and its health monitor, as a site keeps them between requests.
    # The engine stops the monitor before the test database is dropped.
    marked = request.node.get_closest_marker("replica_routing") is not None
    if not marked and "replica_router.runtime" not in sys.modules:
        return  # nothing routed yet, so nothing to undo; and Django may not be set up
    from replica_router import runtime

    runtime.set_route_test_mirrors(marked)


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


def _undone_at_teardown(
    cluster: Cluster, cause: Callable[..., None], undo: Callable[[str], None]
) -> Iterator[Callable[..., None]]:
    """A fixture's body: the test causes a fault on named nodes; each is undone afterwards."""
    names: list[str] = []

    def cause_on(name: str, *args: Any) -> None:
        cause(name, *args)
        names.append(name)

    yield cause_on
    for name in reversed(names):
        if cluster.is_up(name):
            undo(name)


@pytest.fixture
def pause_replica(replica_cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """Pause WAL replay on the named replica until the test ends."""
    yield from _undone_at_teardown(replica_cluster, replica_cluster.pause, replica_cluster.resume)


@pytest.fixture
def delay_replica(replica_cluster: Cluster) -> Iterator[Callable[[str, float], None]]:
    """Delay WAL apply on the named replica by some seconds until the test ends."""
    yield from _undone_at_teardown(
        replica_cluster, replica_cluster.delay, lambda name: replica_cluster.delay(name, 0)
    )


@pytest.fixture
def freeze_node(replica_cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """SIGSTOP the named node's postmaster and backends (a hung host) until the test ends."""
    yield from _undone_at_teardown(replica_cluster, replica_cluster.freeze, replica_cluster.thaw)


@pytest.fixture
def recovery_conflicts(replica_cluster: Cluster) -> Iterator[Callable[[str], None]]:
    """Make the named replica cancel queries on recovery conflicts until the test ends."""
    yield from _undone_at_teardown(
        replica_cluster,
        replica_cluster.conflicts,
        lambda name: replica_cluster.conflicts(name, on=False),
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a Redis server started for this session on a free loopback port.

    Never one that was running already: its data is the session's alone, and
    it is stopped, its directory removed, when the session ends. Needs
    ``redis-server`` on PATH (Debian: ``apt-get install redis-server``).
    """
    with RedisServer() as server:
        yield server.url()
