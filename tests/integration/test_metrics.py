"""Prometheus metrics against the real cluster.

An operator reads these to answer "where do our reads go, and why?" and "is a
replica falling behind?". A counter that misses a route, or a gauge that
disagrees with the monitor, sends them the wrong way during an incident; and
with metrics off, the router must not count at all, since the count is paid
for on every query.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.models.expressions import RawSQL
from django.test import Client, override_settings
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from replica_router import metrics as router_metrics
from replica_router import use_primary
from replica_router.conf import get_config
from replica_router.exceptions import ReplicaRouterConfigError
from replica_router.health import State
from replica_router.report import pool_stats
from replica_router.runtime import get_counters, get_monitor
from replica_router.testing.cluster import Cluster
from testbed.polling import wait_for
from testbed.testapp.models import Author
from tests.support.factories import AuthorFactory

pytestmark = pytest.mark.replica_routing

ALL = ["default", "replica_1", "replica_2"]
REPLICAS = ["replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

PINNING = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
FAST = {"CHECK_INTERVAL": 0.2, "CHECK_TIMEOUT": 0.5}


def metrics_settings(**changes: object):
    return override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "METRICS": True, **changes})


@pytest.fixture
def metrics_on() -> Iterator[None]:
    with metrics_settings():
        yield


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in the default registry, by sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    }


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@contextmanager
def counted(name: str = "replica_router_reads_total") -> Iterator[Counter]:
    """The samples of ``name`` that moved during the block, and by how much, keyed
    by their label values in the order of the label names: (alias, reason) for reads."""
    before = samples(name)
    moved: Counter = Counter()
    yield moved
    for labels, after in samples(name).items():
        if after != before.get(labels, 0.0):
            moved[tuple(v for _, v in labels)] = after - before.get(labels, 0.0)


def served_port(using: str) -> int:
    queryset = Author.objects.using(using)
    return queryset.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[
        0
    ]


@pytest.fixture
def author(replica_cluster: Cluster) -> Author:
    created = AuthorFactory()
    replica_cluster.wait_replayed()
    return created


# -- reads, by reason ------------------------------------------------------------


@db
def test_replica_reads_are_counted_on_the_replica_they_went_to(metrics_on, author):
    with counted() as moved:
        chosen = Counter(router.db_for_read(Author) for _ in range(40))
        fetched = Author.objects.get(pk=author.pk)
    chosen[fetched._state.db] += 1
    assert set(chosen) == set(REPLICAS)
    assert moved == {(alias, "replica"): n for alias, n in chosen.items()}


@db
def test_a_read_under_use_primary_is_counted_as_such(metrics_on, author):
    with counted() as moved, use_primary():
        assert Author.objects.get(pk=author.pk)._state.db == "default"
    assert moved == {("default", "use_primary"): 1}


@db
def test_a_read_inside_atomic_is_counted_as_transaction(metrics_on, author):
    with counted() as moved, transaction.atomic():
        assert Author.objects.get(pk=author.pk)._state.db == "default"
    assert moved == {("default", "transaction"): 1}


@db
def test_a_primary_only_read_is_counted_as_such(author):
    with metrics_settings(PRIMARY_ONLY=["testapp"]), counted() as moved:
        assert Author.objects.get(pk=author.pk)._state.db == "default"
    assert moved == {("default", "primary_only"): 1}


@db
def test_a_read_without_replicas_configured_is_counted_as_no_replicas(author):
    with metrics_settings(REPLICAS={}), counted() as moved:
        assert Author.objects.get(pk=author.pk)._state.db == "default"
    assert moved == {("default", "no_replicas"): 1}


@db
def test_reads_when_every_replica_is_out_are_counted_as_fallback(pause_replica):
    with metrics_settings(MAX_LAG_BYTES=1024, **FAST):
        router.db_for_read(Author)  # starts the monitor
        monitor = get_monitor()
        assert monitor is not None
        pause_replica("replica_1")
        pause_replica("replica_2")
        AuthorFactory.create_batch(30)  # WAL neither replica can replay
        wait_for(lambda: not any(n.in_rotation for n in monitor.snapshot.replicas))
        with counted() as moved:
            assert {router.db_for_read(Author) for _ in range(5)} == {"default"}
        assert moved == {("default", "fallback"): 5}


# -- read-your-writes: pinned reads and pins --------------------------------------


@db
def test_pins_set_and_honoured_and_the_reads_they_pin(pause_replica, replica_cluster: Cluster):
    replica_cluster.wait_replayed()
    # Lag tolerated: the replicas stay in rotation, so only pinning keeps the
    # read that follows the write off them.
    tolerant = metrics_settings(MAX_LAG_SECONDS=3600.0, MAX_LAG_BYTES=2**40, READ_YOUR_WRITES="lsn")
    with tolerant, override_settings(ROOT_URLCONF="testbed.ryw_urls", MIDDLEWARE=PINNING):
        client = Client()
        router.db_for_read(Author)  # the monitor is up before the replicas stop
        pause_replica("replica_1")
        pause_replica("replica_2")
        set_before = value("replica_router_pins_set_total")
        honoured_before = value("replica_router_pins_honoured_total")

        with counted() as reads, counted("replica_router_writes_total") as writes:
            pk = client.post("/authors/", {"name": "pinned"}).json()["id"]
        assert value("replica_router_pins_set_total") == set_before + 1
        assert value("replica_router_pins_honoured_total") == honoured_before
        assert writes == {("default",): 1}
        assert reads == {}

        # The next request carries the cookie; no replica has the write.
        with counted() as reads:
            assert client.get(f"/authors/{pk}/").json()["db"] == "default"
        assert value("replica_router_pins_honoured_total") == honoured_before + 1
        assert reads == {("default", "pinned"): 1}

        # Within a request, a read after a write stays on the primary.
        with counted() as reads:
            assert client.get("/write-then-read/").json()["db"] == "default"
        assert reads == {("default", "pinned"): 1}
        assert value("replica_router_pins_set_total") == set_before + 2
        assert value("replica_router_pins_honoured_total") == honoured_before + 2


# -- failover --------------------------------------------------------------------


@db
def test_a_killed_replica_counts_a_failover_to_its_stand_in(metrics_on, outage: Cluster, author):
    router.db_for_read(Author)  # the first routed read starts the monitor, as in a server
    connections["replica_1"].close()  # its next read must connect
    with counted("replica_router_failovers_total") as moved:
        outage.kill("replica_1")
        assert served_port("replica_1") == outage.port("replica_2")
    assert moved == {("replica_1", "replica_2"): 1}  # (from_alias, to_alias)


# -- gauges ------------------------------------------------------------------------


@db
def test_gauges_are_the_monitor_snapshot(pause_replica, replica_cluster: Cluster):
    # Probed once when the first read starts the monitor, then only when this
    # test says so: the snapshot cannot change between the scrape and the asserts.
    replica_cluster.wait_replayed()
    with metrics_settings(CHECK_INTERVAL=60.0):
        router.db_for_read(Author)
        monitor = get_monitor()
        assert monitor is not None and monitor.running
        wait_for(lambda: monitor.cycles >= 1)
        pause_replica("replica_1")
        AuthorFactory.create_batch(30)
        # replica_2 serves throughout: on a loaded machine it may not have
        # replayed the writes yet when the probe comes.
        replica_cluster.wait_replayed(["replica_2"])
        snapshot = monitor.run_cycle()

        replica_1 = snapshot.node("replica_1")
        assert replica_1.state is State.LAGGING  # paused with WAL to apply
        assert replica_1.lag_bytes is not None and replica_1.lag_bytes > 0
        assert value("replica_router_replica_lag_bytes", alias="replica_1") == replica_1.lag_bytes
        for node in snapshot.nodes:
            states = {
                dict(labels)["state"]: v
                for labels, v in samples("replica_router_node_state").items()
                if dict(labels)["alias"] == node.alias
            }
            assert states == {str(s): float(s is node.state) for s in State}
            assert value("replica_router_node_in_rotation", alias=node.alias) == node.in_rotation
            assert value("replica_router_probe_rtt_seconds", alias=node.alias) == node.rtt
            assert value("replica_router_replica_lag_seconds", alias=node.alias) == node.lag_seconds
            assert value("replica_router_replica_lag_bytes", alias=node.alias) == node.lag_bytes
        assert value("replica_router_node_in_rotation", alias="replica_1") == 0.0
        assert value("replica_router_node_in_rotation", alias="replica_2") == 1.0


@db
def test_pool_gauges_are_the_pools_of_this_process(metrics_on, author):
    # testbed.settings pools replica_2 only.
    assert Author.objects.using("replica_2").filter(pk=author.pk).exists()
    connections["replica_2"].close()  # back to the pool

    def gauges() -> dict[str, float | None]:
        return {
            field: value(f"replica_router_pool_{field}", alias="replica_2")
            for field in ("size", "idle", "waiting")
        }

    wait_for(lambda: gauges() == pool_stats("replica_2"))
    assert gauges()["size"] >= 1
    assert pool_stats("replica_1") is None
    assert value("replica_router_pool_size", alias="replica_1") is None


# -- the view --------------------------------------------------------------------


@db
def test_the_metrics_view_serves_every_family_in_the_text_format(metrics_on, author):
    Author.objects.get(pk=author.pk)
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert response["Cache-Control"] == "no-store"

    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    expected = {
        f.name: f.type
        for f in router_metrics.ReplicaRouterCollector(snapshot=lambda: None).describe()
    }
    assert {name: families[name].type for name in expected} == expected
    reads = {
        (s.labels["alias"], s.labels["reason"]): s.value
        for s in families["replica_router_reads"].samples
        if s.name == "replica_router_reads_total"
    }
    assert sum(reads[alias, "replica"] for alias in REPLICAS) >= 1
    states = [s for s in families["replica_router_node_state"].samples if s.value == 1.0]
    assert sorted(s.labels["alias"] for s in states) == ALL
    assert Client().post("/metrics").status_code == 405


def test_the_metrics_view_needs_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ImproperlyConfigured, match=r"django-replica-router\[metrics\]"):
        Client().get("/metrics")


def test_metrics_true_without_the_extra_is_a_configuration_error(monkeypatch):
    with metrics_settings():
        assert get_config().metrics is True
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with metrics_settings(), pytest.raises(ReplicaRouterConfigError, match="replica_router.E010"):
        get_config()
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "METRICS": "auto"}):
        assert get_config().metrics is False


# -- metrics off -----------------------------------------------------------------


WITHOUT_THE_EXTRA = """
import sys

sys.modules["prometheus_client"] = None  # import fails, as if not installed
import django
from django.conf import settings

settings.configure(
    DATABASES={
        "default": {"ENGINE": "replica_router.backends.postgresql", "NAME": "x"},
        "replica_1": {"ENGINE": "replica_router.backends.postgresql", "NAME": "x"},
    },
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "replica_router"],
    DATABASE_ROUTERS=["replica_router.ReplicaRouter"],
    REPLICA_ROUTER={"REPLICAS": ["replica_1"], "HEALTH_CHECKS": False},
)
django.setup()
from django.contrib.auth.models import User
from django.db import router

from replica_router.conf import get_config

assert get_config().metrics is False
assert router.db_for_read(User) == "replica_1"
assert router.db_for_write(User) == "default"
assert "replica_router.metrics" not in sys.modules
print("ok")
"""


def test_without_the_extra_the_router_never_imports_the_metrics():
    # A fresh interpreter: this one has imported prometheus_client already.
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_EXTRA], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _every_count() -> dict[str, list]:
    """What the process-wide counts hold, read without going through the collector."""
    return {
        name: sorted(getattr(router_metrics, name).values())
        for name in ("_READS", "_WRITES", "_PINS_SET", "_PINS_HONOURED", "_FAILOVERS")
    }


@db
def test_with_metrics_off_nothing_is_counted_or_exported(replica_cluster: Cluster):
    off = {**settings.REPLICA_ROUTER, "METRICS": False, "READ_YOUR_WRITES": "time"}
    with override_settings(REPLICA_ROUTER=off, ROOT_URLCONF="testbed.ryw_urls", MIDDLEWARE=PINNING):
        assert get_counters() is None
        before = _every_count()
        author = AuthorFactory()
        replica_cluster.wait_replayed()
        assert {router.db_for_read(Author) for _ in range(10)} == set(REPLICAS)
        with use_primary():
            Author.objects.get(pk=author.pk)
        with transaction.atomic():
            Author.objects.get(pk=author.pk)
        client = Client()
        pk = client.post("/authors/", {"name": "x"}).json()["id"]  # sets a pin
        assert client.get(f"/authors/{pk}/").json()["db"] == "default"  # honours it
        assert _every_count() == before
        assert b"replica_router_" not in generate_latest()


def test_every_metric_and_reason_is_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    families = list(router_metrics.ReplicaRouterCollector(snapshot=lambda: None).describe())
    assert families
    for family in families:
        exposed = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"| `{exposed}` | {family.type} |" in text
    assert all(f"| `{reason}` |" in text for reason in router_metrics.READ_REASONS)
