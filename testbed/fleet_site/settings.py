"""Settings for the gunicorn workers that the fleet harness, ``testbed/fleet``, starts (issue 15).

The test settings, plus what the harness passes in the environment:

* ``REPLICA_ROUTER_DATABASE_NAME``: the database every alias uses, so that
  workers started by a test use pytest-django's test database (``test_app``)
  and outside pytest the cluster's ``app``;
* ``REPLICA_ROUTER_HEALTH_SHARING``, ``REPLICA_ROUTER_CHECK_INTERVAL``,
  ``REPLICA_ROUTER_CHECK_TIMEOUT``, ``REPLICA_ROUTER_MAX_LAG_SECONDS``,
  ``REPLICA_ROUTER_HEALTH_DIR``: the matching ``REPLICA_ROUTER`` keys;
* ``REPLICA_ROUTER_REDIS_URL`` (and ``REPLICA_ROUTER_CACHE_PREFIX``): the
  default cache is Redis there, for ``HEALTH_SHARING = "cache"``.

Workers never migrate: the harness (or pytest-django) has done it.
"""

from __future__ import annotations

import os

from testbed.settings import *  # noqa: F403
from testbed.settings import DATABASES, REPLICA_ROUTER

_env = os.environ.get

for _alias in DATABASES.values():
    _alias["NAME"] = _env("REPLICA_ROUTER_DATABASE_NAME", "app")

REPLICA_ROUTER = {
    **REPLICA_ROUTER,
    "HEALTH_SHARING": _env("REPLICA_ROUTER_HEALTH_SHARING", "process"),
    "CHECK_INTERVAL": float(_env("REPLICA_ROUTER_CHECK_INTERVAL", "1.0")),
    "CHECK_TIMEOUT": float(_env("REPLICA_ROUTER_CHECK_TIMEOUT", "0.5")),
    "MAX_LAG_SECONDS": float(_env("REPLICA_ROUTER_MAX_LAG_SECONDS", "5.0")),
    "HEALTH_DIR": _env("REPLICA_ROUTER_HEALTH_DIR") or None,
}

if _env("REPLICA_ROUTER_REDIS_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _env("REPLICA_ROUTER_REDIS_URL"),
            "KEY_PREFIX": _env("REPLICA_ROUTER_CACHE_PREFIX", ""),
        }
    }

ROOT_URLCONF = "testbed.fleet_site.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

# The monitor's transitions and the lease's hand-overs, in the gunicorn log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"replica_router": {"handlers": ["stderr"], "level": "INFO"}},
}
