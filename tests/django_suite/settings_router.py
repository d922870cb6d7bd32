"""Django's test suite with the router installed as the README says.

DATABASES and REPLICA_ROUTER come from DATABASE_URL and REPLICA_URLS through
``replica_router.env.database_settings`` (the failover engine on the primary and
on each replica, each replica a test mirror of "default"), and
``replica_router.ReplicaRouter`` is the router. Django's runtests.py sets
INSTALLED_APPS and MIDDLEWARE itself, from its ALWAYS_INSTALLED_APPS and
ALWAYS_MIDDLEWARE; run.py runs a copy of it that adds "replica_router" to the
first and puts PrimaryPinningMiddleware first in the second (see
``run.router_runtests``).

"other" is the same plain database as in settings_plain.py: Django's suite
uses it for its multi-database tests, and it is not part of the router's cluster.
"""

from __future__ import annotations

import environ

from replica_router.env import database_settings
from tests.django_suite.settings_plain import (
    DEFAULT_AUTO_FIELD,
    OTHER,
    PASSWORD_HASHERS,
    SECRET_KEY,
    TEST_RUNNER,
    USE_TZ,
)

__all__ = [
    "DATABASES",
    "DATABASE_ROUTERS",
    "DEFAULT_AUTO_FIELD",
    "PASSWORD_HASHERS",
    "REPLICA_ROUTER",
    "SECRET_KEY",
    "TEST_RUNNER",
    "USE_TZ",
]

_cluster, REPLICA_ROUTER = database_settings(environ.Env())
# The suite's own aliases first, in the plain run's order: a few of its tests
# take "the next PostgreSQL alias after default" to be "other"
# (backends.postgresql.tests.Tests.test_nodb_cursor).
DATABASES = {"default": _cluster.pop("default"), "other": OTHER, **_cluster}
DATABASE_ROUTERS = ["replica_router.ReplicaRouter"]
