"""Django settings, a router and views for the in-process parts of bench_pgpool.py.

The testbed's settings (the test app and its models), with two ways to the same
cluster: the router over ``default``, ``replica_1`` and ``replica_2``
(weights 3:1), and pgpool-II as one alias, ``pgpool``, pooled like ours, or
``pgpool_per_request`` with a new connection per request. ``ThroughPgpool``
sends every query to one of the pgpool aliases, as a site with a single
``DATABASES`` entry would; the router is not consulted then.
"""

from __future__ import annotations

import os
from typing import Any

from django.db import models
from django.db.models.expressions import RawSQL
from django.http import HttpRequest, JsonResponse
from django.urls import path

from testbed.settings import *  # noqa: F403 - the test app, its models, SECRET_KEY...
from testbed.settings import CLUSTER

assert CLUSTER is not None, "run it with make bench, which starts the local cluster"

WEIGHTS = {"replica_1": 3, "replica_2": 1}
#: What the sample site runs with: probes each second, 0.5 s to answer.
ROUTER_HEALTH = {
    "CHECK_INTERVAL": 1.0,
    "CHECK_TIMEOUT": 0.5,
    "MAX_LAG_SECONDS": 5.0,
    "MAX_LAG_BYTES": 16 * 1024 * 1024,
    "RECOVERY_CHECKS": 2,
    "FALLBACK": "primary",
}
# The same pool on every alias, ours and pgpool's, with the timeouts that
# replica_router.env gives a site: 1 s for a replica's pool (the router then
# reads elsewhere), psycopg_pool's 30 s for the only way to the data.
POOL = {"min_size": 1, "max_size": 8}
# Django's time zone in the start-up packet. Otherwise, on a server whose
# TimeZone is not literally "UTC" (Debian's is "Etc/UTC"), Django's first query
# on each new connection is SELECT set_config('TimeZone', ...): a volatile
# function, which pgpool takes for a write, so that with
# disable_load_balance_on_write = 'always' that session never reads from a
# replica. Every alias gets it, ours too, so that they connect alike.
TIME_ZONE_OPTION = "-c TimeZone=UTC"
PLAIN = "django.db.backends.postgresql"


def _alias(
    port: int, engine: str = "replica_router.backends.postgresql", **extra: Any
) -> dict[str, Any]:
    return {
        "ENGINE": engine,
        "HOST": "127.0.0.1",
        "PORT": port,
        "NAME": "app",
        "USER": "postgres",
        # Django's default. The failover backend runs a read again elsewhere
        # when its connection turns out broken; a health check on checkout
        # would instead wait for the pool to connect anew, up to its timeout.
        "CONN_HEALTH_CHECKS": False,
        "OPTIONS": {
            "connect_timeout": 2,
            "options": TIME_ZONE_OPTION,
            "pool": {**POOL, "timeout": 30},
        },
        **extra,
    }


_pgpool_port = int(os.environ.get("PGPOOL_PORT", "9"))
DATABASES = {
    "default": _alias(CLUSTER.port("primary")),
    **{
        name: _alias(
            CLUSTER.port(name),
            OPTIONS={
                "connect_timeout": 2,
                "options": TIME_ZONE_OPTION,
                "pool": {**POOL, "timeout": 1},
            },
        )
        for name in WEIGHTS
    },
    # Django's own backend: a site with pgpool as its database has no use for
    # ours. Health checks on: when pgpool fails a node over it ends the client
    # sessions, and a pooled one is then replaced on checkout instead of
    # failing the read that gets it.
    "pgpool": _alias(_pgpool_port, PLAIN, CONN_HEALTH_CHECKS=True),
    "pgpool_per_request": _alias(
        _pgpool_port,
        PLAIN,
        CONN_MAX_AGE=0,
        OPTIONS={"connect_timeout": 2, "options": TIME_ZONE_OPTION},
    ),
}
DATABASE_ROUTERS = ["replica_router.ReplicaRouter"]
REPLICA_ROUTER = {
    "PRIMARY": "default",
    "REPLICAS": WEIGHTS,
    "READ_YOUR_WRITES": "lsn",
    "PIN_SECONDS": 5.0,
    **ROUTER_HEALTH,
}
ROOT_URLCONF = "pgpool_site"
MIDDLEWARE = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


class ThroughPgpool:
    """Every query to ``alias``: what a site with pgpool as its only database does."""

    alias = "pgpool"

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str:
        return self.alias

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str:
        return self.alias

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool:
        return True


# -- the read-your-writes views: each read says which node served it ---------------


def node_name(port: int) -> str:
    """The cluster node on ``port``, ``default`` for the primary (as the router names it)."""
    names = {CLUSTER.port(name): name for name in CLUSTER.nodes}
    name = names[port]
    return "default" if name == "primary" else name


def create_author(request: HttpRequest) -> JsonResponse:
    from testbed.testapp.models import Author

    author = Author.objects.create(name=request.POST.get("name", "someone"))
    return JsonResponse({"id": author.pk})


def show_author(request: HttpRequest, pk: int) -> JsonResponse:
    from testbed.testapp.models import Author

    port = (
        Author.objects.filter(pk=pk)
        .annotate(port=RawSQL("inet_server_port()", ()))
        .values_list("port", flat=True)
        .first()
    )
    if port is None:  # a stale read: the node has not replayed the insert
        return JsonResponse({"found": False, "db": None}, status=404)
    return JsonResponse({"found": True, "db": node_name(port)})


urlpatterns = [
    path("authors/", create_author),
    path("authors/<int:pk>/", show_author),
]
