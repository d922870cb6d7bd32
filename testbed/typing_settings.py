"""Settings for mypy's Django plugin: the test apps, and no cluster needed to type-check."""

from __future__ import annotations

SECRET_KEY = "type-checking-only"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "replica_router",
    "testbed.testapp",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"}}
