"""A Celery worker process for the prefork test in tests/integration/test_celery.py.

Started as ``celery -A testbed.celery_worker worker --pool prefork``; the test
passes, in the environment, the app's name, the Redis URL and the name of the
test database (pytest-django made it, and the worker must use it, not ``app``).
The replicas stay in rotation however far behind they are, as in the test.
"""

from __future__ import annotations

import os

from django.conf import settings

from testbed.settings import DATABASES, REPLICA_ROUTER

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.settings")
for _alias in DATABASES.values():
    _alias["NAME"] = os.environ["CELERY_TEST_DATABASE"]
REPLICA_ROUTER.update(MAX_LAG_SECONDS=3600.0, MAX_LAG_BYTES=2**40, CHECK_INTERVAL=0.2)

import django  # noqa: E402

django.setup()

from replica_router.contrib.celery import install  # noqa: E402
from testbed.celery_app import make_app  # noqa: E402

app = make_app(os.environ["CELERY_TEST_APP"], os.environ["CELERY_TEST_BROKER"])
install(app)
assert settings.DATABASES["default"]["NAME"] == os.environ["CELERY_TEST_DATABASE"]
