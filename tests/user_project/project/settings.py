"""Settings as the README gives them; DATABASE_URL and REPLICA_URLS name the cluster."""

import environ

from replica_router.env import database_settings

DATABASES, REPLICA_ROUTER = database_settings(environ.Env())
DATABASE_ROUTERS = ["replica_router.ReplicaRouter"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "replica_router",
    "notes",
]
MIDDLEWARE = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "project.urls"
SECRET_KEY = "a-user-project-for-tests-only"
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
