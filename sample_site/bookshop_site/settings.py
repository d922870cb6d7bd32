"""Settings of the bookshop sample site, read from environment variables only.

==========================  ==================================================
``DATABASE_URL``            the primary, e.g. ``postgres://app:pw@db1/shop``
                            ``?pool_min_size=2&pool_max_size=12``
``REPLICA_URLS``            comma-separated replica URLs, each with an optional
                            ``weight=N`` and the same pool parameters
``SECRET_KEY``              required whenever ``DATABASE_URL`` is set
``DEBUG``                   ``1``/``true`` for development (default off)
``ALLOWED_HOSTS``           comma-separated (default ``127.0.0.1,localhost``)
==========================  ==================================================

With ``DEBUG`` on and django-debug-toolbar installed (the ``demo`` dependency
group), pages served to 127.0.0.1 show the toolbar, with the router's
"Replica routing" panel.

When ``DATABASE_URL`` is not set, both URLs come from the local cluster that
``make demo`` / ``make serve`` start (see ``bookshop_site/local_cluster.py``):
a primary and two replicas weighted 2:1, with Django's psycopg pool on each.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import environ

from bookshop_site.local_cluster import cluster_dir, cluster_urls
from replica_router.env import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
LOCAL_CLUSTER = not os.environ.get("DATABASE_URL")
if LOCAL_CLUSTER:
    # Read the URLs as if they were in the environment, without changing
    # os.environ (which every subprocess of the site would inherit).
    env.ENVIRON = {**os.environ, **cluster_urls(cluster_dir())}

DEBUG = env.bool("DEBUG", default=False)
# A fixed key is acceptable only for the throwaway local cluster; a site given
# a real DATABASE_URL must be given a real key too.
SECRET_KEY = env.str(
    "SECRET_KEY", default="django-insecure-bookshop-local-demo-only" if LOCAL_CLUSTER else ""
)
if not SECRET_KEY:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("Set SECRET_KEY: DATABASE_URL is set, so this is not the demo.")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

# -- databases and the router --------------------------------------------------

DATABASES, REPLICA_ROUTER = database_settings(env)
for _alias_settings in DATABASES.values():
    # psycopg_pool hands out idle connections without looking at them; after a
    # server restarts, every idle connection to it is dead. With health checks
    # the pool tests each one on checkout (one round trip) and replaces it.
    _alias_settings.setdefault("CONN_HEALTH_CHECKS", True)

DATABASE_ROUTERS = ["replica_router.ReplicaRouter"]
REPLICA_ROUTER.update(
    {
        # A session must never be read from a replica that has not seen the
        # login that wrote it.
        "PRIMARY_ONLY": ["sessions"],
        "READ_YOUR_WRITES": "lsn",
        "PIN_SECONDS": 5.0,
        "CHECK_INTERVAL": 1.0,
        "MAX_LAG_SECONDS": 5.0,
        "RECOVERY_CHECKS": 2,
        "FALLBACK": "primary",
        # The gunicorn workers take turns probing: one monitor connection per
        # node for the host, however many workers. With REDIS_URL set, the
        # workers of every host share one prober through the cache.
        "HEALTH_SHARING": "cache" if env.str("REDIS_URL", default="") else "host",
    }
)
if env.str("REDIS_URL", default=""):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env.str("REDIS_URL"),
            "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        }
    }

# -- Django ----------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "replica_router",
    "bookshop",
]

MIDDLEWARE = [
    # First, so that it sees every write of the request, the session's included.
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bookshop_site.urls"
WSGI_APPLICATION = "bookshop_site.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Messages ride in a cookie: showing "review saved" must not be a database write.
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"
LOGIN_REDIRECT_URL = "account"
LOGOUT_REDIRECT_URL = "book-list"
LOGIN_URL = "login"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"

# -- development: django-debug-toolbar ---------------------------------------------

if DEBUG and importlib.util.find_spec("debug_toolbar") is not None:
    from debug_toolbar.settings import PANELS_DEFAULTS

    # staticfiles serves the toolbar's scripts and styles under runserver.
    INSTALLED_APPS += ["django.contrib.staticfiles", "debug_toolbar"]
    # Above the pinning middleware, so that the router's panel sees the pin
    # cookie the response sets, and the pinning middleware's own query.
    MIDDLEWARE.insert(0, "debug_toolbar.middleware.DebugToolbarMiddleware")
    INTERNAL_IPS = ["127.0.0.1"]
    DEBUG_TOOLBAR_PANELS = [
        *PANELS_DEFAULTS,
        # Where each query ran (primary or replica) and why.
        "replica_router.contrib.debug_toolbar.ReplicaRoutingPanel",
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # State changes of the replicas (INFO) end up in the server's log.
    "loggers": {"replica_router": {"handlers": ["console"], "level": "INFO"}},
}
