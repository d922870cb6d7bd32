"""Settings for the test suite and the benchmarks (bench/ sets them as DJANGO_SETTINGS_MODULE too).

``tests/integration`` runs against a real primary and its streaming replicas,
named by REPLICA_ROUTER_CLUSTER_DIR, which ``make test`` (through ``python -m
replica_router.testing.cluster run``) sets. ``tests/unit`` needs no server: without
that variable the aliases point at a port where nothing listens, and a unit test
that tried to connect would fail.

With REPLICA_ROUTER_TEST_PGBOUNCER=1 every alias goes through the PgBouncer
(transaction pooling) in front of its node instead, set up as docs/pgbouncer.md
advises: ``make test`` runs the tests marked ``pgbouncer`` a second time that
way, on a cluster brought up with ``--pgbouncer``. Faults (kill, pause, freeze)
still act on the nodes, behind PgBouncer.
"""

from __future__ import annotations

import os

from replica_router.testing.cluster import Cluster

_cluster_dir = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
CLUSTER = Cluster(_cluster_dir) if _cluster_dir else None
REPLICA_NAMES = CLUSTER.replicas if CLUSTER is not None else ["replica_1", "replica_2"]
VIA_PGBOUNCER = os.environ.get("REPLICA_ROUTER_TEST_PGBOUNCER") == "1"
# Ports 9 (discard), 19 and 29 on loopback: nothing of ours listens there. One
# per node, as a real site has.
_NO_SERVER_PORTS = {"primary": 9, "replica_1": 19, "replica_2": 29}


def _port(node: str) -> int:
    if CLUSTER is None:
        return _NO_SERVER_PORTS[node]
    return CLUSTER.pgbouncer_port(node) if VIA_PGBOUNCER else CLUSTER.port(node)


def _alias(node: str, **extra: object) -> dict[str, object]:
    if VIA_PGBOUNCER:
        # iterator()'s server-side cursor would be declared in one server
        # session and fetched from in another (check W007, Django's own advice).
        extra.setdefault("DISABLE_SERVER_SIDE_CURSORS", True)
    return {
        "ENGINE": "replica_router.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": _port(node),
        "NAME": "app",
        "USER": "postgres",
        # Loopback trust auth ignores it; it is here so that tests can prove a
        # password never shows up in the health table, JSON or view.
        "PASSWORD": "s3cret-pw",
        **extra,
    }


DATABASES = {"default": _alias("primary")}
for _name in REPLICA_NAMES:
    DATABASES[_name] = _alias(_name, TEST={"MIRROR": "default"})
# One replica with persistent connections and one behind Django's native psycopg
# pool, so both connection styles are exercised by every routing test.
DATABASES["replica_1"]["CONN_MAX_AGE"] = 60
DATABASES["replica_2"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 8, "timeout": 1}}

DATABASE_ROUTERS = ["replica_router.ReplicaRouter"]
REPLICA_ROUTER = {
    "PRIMARY": "default",
    "REPLICAS": dict.fromkeys(REPLICA_NAMES, 1),
    "TRANSACTION_POOLING": VIA_PGBOUNCER,
}

SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "replica_router",
    "testbed.testapp",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "testbed.urls"
MIDDLEWARE: list[str] = []
STATIC_URL = "static/"
