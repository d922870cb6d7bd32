"""Settings for the test suite: a real primary and its streaming replicas.

The cluster is named by REPLICA_ROUTER_CLUSTER_DIR, which ``make test`` (through
``python -m replica_router.testing.cluster run``) sets.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from replica_router.testing.cluster import Cluster

_cluster_dir = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
if not _cluster_dir:
    raise ImproperlyConfigured(
        "The tests need a replicated cluster: run 'make test', or "
        "'python -m replica_router.testing.cluster run -- pytest'."
    )
CLUSTER = Cluster(_cluster_dir)


def _alias(node: str, **extra: object) -> dict[str, object]:
    return {
        "ENGINE": "replica_router.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": CLUSTER.port(node),
        "NAME": "app",
        "USER": "postgres",
        # Loopback trust auth ignores it; it is here so that tests can prove a
        # password never shows up in the health table, JSON or view.
        "PASSWORD": "s3cret-pw",
        **extra,
    }


DATABASES = {"default": _alias("primary")}
for _name in CLUSTER.replicas:
    DATABASES[_name] = _alias(_name, TEST={"MIRROR": "default"})
# One replica with persistent connections and one behind Django's native psycopg
# pool, so both connection styles are exercised by every routing test.
DATABASES["replica_1"]["CONN_MAX_AGE"] = 60
DATABASES["replica_2"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 8, "timeout": 1}}

DATABASE_ROUTERS = ["replica_router.ReplicaRouter"]
REPLICA_ROUTER = {
    "PRIMARY": "default",
    "REPLICAS": dict.fromkeys(CLUSTER.replicas, 1),
}

SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "replica_router",
    "tests.testapp",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"
MIDDLEWARE: list[str] = []
