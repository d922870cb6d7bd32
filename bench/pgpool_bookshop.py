"""The sample site with pgpool-II as its only database: no router, no middleware
of ours, Django's own PostgreSQL backend. bench_pgpool.py serves it with
``DJANGO_SETTINGS_MODULE=pgpool_bookshop`` and ``DATABASE_URL`` naming pgpool.
"""

from __future__ import annotations

from bookshop_site.settings import *  # noqa: F403 - the site as it is, then without us
from bookshop_site.settings import DATABASES, MIDDLEWARE

DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
DATABASE_ROUTERS: list[str] = []
MIDDLEWARE = [name for name in MIDDLEWARE if not name.startswith("replica_router.")]
