"""Django's test suite on the cluster's primary, with Django's own PostgreSQL backend.

The baseline of the comparison: no replicas, no router. DATABASE_URL is the
primary's URL, as ``python -m replica_router.testing.cluster run`` exports it.
The rest follows the settings Django's suite ships (tests/test_sqlite.py).
Django's runtests.py replaces INSTALLED_APPS and MIDDLEWARE with its own.
"""

from __future__ import annotations

from typing import Any

import environ

_env = environ.Env()


def plain_alias(**extra: Any) -> dict[str, Any]:
    """DATABASE_URL as django-environ parses it: ENGINE django.db.backends.postgresql."""
    config: dict[str, Any] = _env.db_url("DATABASE_URL")
    return {**config, **extra}


#: Django's suite needs a second alias, "other". It is a database of its own on
#: the primary's server (test database test_<NAME>_other), on Django's plain
#: backend, outside the router's cluster; settings_router.py uses the same.
OTHER = plain_alias(NAME=f"{plain_alias()['NAME']}_other")

DATABASES = {"default": plain_alias(), "other": OTHER}

SECRET_KEY = "django_tests_secret_key"
# A fast hasher, as in Django's test settings.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

# DiscoverRunner, with a result class that also writes each test's outcome to a
# JSON file for run.py to compare (tests/django_suite/recording.py).
TEST_RUNNER = "tests.django_suite.recording.RecordingRunner"
