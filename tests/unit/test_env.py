"""replica_router.env: DATABASES and REPLICA_ROUTER from DATABASE_URL and REPLICA_URLS.

URLs carry passwords, and error messages end up in logs and CI output, so every
error test asserts the password is nowhere in what the user sees.
"""

from __future__ import annotations

import copy
import os

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured

from replica_router.conf import parse_settings
from replica_router.env import TCP_OPTIONS, database_settings

PASSWORD = "s3cr3t-Pa55"


def make_env(**variables: str) -> environ.Env:
    env = environ.Env()
    env.ENVIRON = dict(variables)  # an Env reads this mapping instead of os.environ
    return env


def message_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """Everything a traceback would show: the message and any chained exceptions."""
    parts = []
    exc: BaseException | None = excinfo.value
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(parts)


def test_primary_and_weighted_pooled_replicas():
    env = make_env(
        DATABASE_URL=f"postgres://app:{PASSWORD}@db-primary:5432/app?pool_max_size=20",
        REPLICA_URLS=(
            f"postgres://app:{PASSWORD}@db-r1:5433/app?weight=3&pool_min_size=2"
            f"&pool_max_size=8&pool_timeout=2.5&sslmode=require,"
            f" postgres://app:{PASSWORD}@db-r2/app"
        ),
    )
    databases, router = database_settings(env)

    assert router == {"PRIMARY": "default", "REPLICAS": {"replica_1": 3, "replica_2": 1}}
    assert list(databases) == ["default", "replica_1", "replica_2"]
    assert databases["default"] == {
        "ENGINE": "replica_router.backends.postgresql",
        "NAME": "app",
        "USER": "app",
        "PASSWORD": PASSWORD,
        "HOST": "db-primary",
        "PORT": 5432,
        "OPTIONS": {"pool": {"max_size": 20}, "connect_timeout": 2, **TCP_OPTIONS},
    }
    replica_1 = databases["replica_1"]
    assert replica_1["HOST"] == "db-r1"
    assert replica_1["PORT"] == 5433
    assert replica_1["OPTIONS"] == {
        "sslmode": "require",
        "pool": {"min_size": 2, "max_size": 8, "timeout": 2.5},
        "connect_timeout": 2,
        **TCP_OPTIONS,
    }
    assert replica_1["TEST"] == {"MIRROR": "default"}
    assert databases["replica_2"]["HOST"] == "db-r2"
    assert databases["replica_2"]["OPTIONS"] == {"connect_timeout": 2, **TCP_OPTIONS}
    assert databases["replica_2"]["TEST"] == {"MIRROR": "default"}


def test_failover_engine_and_bounded_waits_by_default():
    env = make_env(
        DATABASE_URL="postgres://app@db/app",
        REPLICA_URLS=(
            "postgres://app@r1/app?pool_max_size=4,"
            "postgres://app@r2/app?connect_timeout=5,"
            "postgis://app@r3/app"
        ),
    )
    databases, _ = database_settings(env)
    assert databases["default"]["ENGINE"] == "replica_router.backends.postgresql"
    # A read waits at most 1 s for a pooled replica connection, not psycopg_pool's 30 s.
    assert databases["replica_1"]["OPTIONS"]["pool"] == {"max_size": 4, "timeout": 1.0}
    assert databases["replica_2"]["OPTIONS"]["connect_timeout"] == 5  # the URL wins
    # A partition ends a connection in about 25 s, not the kernel's hours.
    assert databases["replica_2"]["OPTIONS"]["keepalives_idle"] == 10
    assert databases["replica_2"]["OPTIONS"]["tcp_user_timeout"] == 25_000
    # PostGIS keeps its own backend.
    assert databases["replica_3"]["ENGINE"] == "django.contrib.gis.db.backends.postgis"


def test_result_is_a_valid_router_configuration():
    env = make_env(
        DATABASE_URL="postgres://app@db/app",
        REPLICA_URLS="postgres://app@r1/app?weight=0,postgres://app@r2/app?weight=2",
    )
    _, router = database_settings(env)
    config, problems = parse_settings(router)
    assert problems == []
    assert dict(config.replicas) == {"replica_1": 0, "replica_2": 2}


def test_without_replica_urls_there_are_no_replicas():
    databases, router = database_settings(make_env(DATABASE_URL="postgres://app@db/app"))
    assert list(databases) == ["default"]
    assert router == {"PRIMARY": "default", "REPLICAS": {}}


def test_empty_entries_are_skipped():
    env = make_env(DATABASE_URL="postgres://app@db/app", REPLICA_URLS=" , postgres://a@r1/app, ")
    databases, router = database_settings(env)
    assert list(router["REPLICAS"]) == ["replica_1"]
    assert databases["replica_1"]["HOST"] == "r1"


def test_multi_host_url_keeps_its_commas():
    env = make_env(
        DATABASE_URL="postgres://app@db/app",
        REPLICA_URLS="postgres://app@r1:5432,r2:5433/app,postgres://app@r3/app",
    )
    databases, router = database_settings(env)
    assert list(router["REPLICAS"]) == ["replica_1", "replica_2"]
    assert databases["replica_1"]["HOST"] == "r1,r2"
    assert databases["replica_1"]["PORT"] == "5432,5433"
    assert databases["replica_2"]["HOST"] == "r3"


def test_custom_variable_names_and_real_environment(monkeypatch):
    monkeypatch.setenv("PRIMARY_DB", "postgres://app@db/app")
    monkeypatch.setenv("READ_DBS", "postgres://app@r1/app")
    before = dict(os.environ)
    databases, router = database_settings(
        environ.Env(), primary_var="PRIMARY_DB", replicas_var="READ_DBS"
    )
    assert router["REPLICAS"] == {"replica_1": 1}
    assert dict(os.environ) == before


def test_nothing_is_mutated():
    variables = {
        "DATABASE_URL": "postgres://app@db/app?pool_max_size=4",
        "REPLICA_URLS": "postgres://app@r1/app?weight=2&pool_timeout=1",
    }
    env = make_env(**variables)
    environment = env.ENVIRON
    snapshot = copy.deepcopy(environment)
    first = database_settings(env)
    second = database_settings(env)
    assert environment == snapshot
    assert first == second
    assert first[0]["replica_1"] is not second[0]["replica_1"]


def test_missing_primary_url_names_the_variable():
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_settings(make_env(REPLICA_URLS="postgres://a@r1/app"))


def test_weight_on_the_primary_is_refused():
    env = make_env(DATABASE_URL=f"postgres://app:{PASSWORD}@db/app?weight=2")
    with pytest.raises(ImproperlyConfigured) as excinfo:
        database_settings(env)
    assert "DATABASE_URL" in str(excinfo.value)
    assert PASSWORD not in message_of(excinfo)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("weight=abc", "weight=abc"),
        ("weight=-1", "weight=-1"),
        ("weight=1.5", "weight=1.5"),
        ("weight=5000", "weight=5000"),
        ("pool_min_size=x", "pool_min_size=x"),
        ("pool_max_size=0", "pool_max_size=0"),
        ("pool_timeout=soon", "pool_timeout=soon"),
        ("pool_timeout=-2", "pool_timeout=-2"),
    ],
)
def test_bad_parameter_names_variable_and_replica_but_not_password(query, fragment):
    env = make_env(
        DATABASE_URL=f"postgres://app:{PASSWORD}@db/app",
        REPLICA_URLS=f"postgres://app:{PASSWORD}@r1/app,postgres://app:{PASSWORD}@r2/app?{query}",
    )
    with pytest.raises(ImproperlyConfigured) as excinfo:
        database_settings(env)
    message = str(excinfo.value)
    assert "REPLICA_URLS" in message
    assert "replica 2" in message
    assert fragment in message
    assert PASSWORD not in message_of(excinfo)


@pytest.mark.parametrize(
    "url",
    [
        f"app:{PASSWORD}@r1/app",  # no scheme: django-environ would warn with the password
        f"nosuchdb://app:{PASSWORD}@r1/app",
        f"postgres://app:{PASSWORD}@r1:port/app",  # bad port
        f"postgres://app:{PASSWORD}@[::1/app",  # bad IPv6 host
    ],
)
def test_unparsable_url_never_shows_the_password(url):
    env = make_env(DATABASE_URL="postgres://app@db/app", REPLICA_URLS=url)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        database_settings(env)
    assert "REPLICA_URLS (replica 1)" in str(excinfo.value)
    assert PASSWORD not in message_of(excinfo)


def test_percent_encoded_password_is_hidden_in_both_forms():
    raw, decoded = "p%40ss%2Fw0rd", "p@ss/w0rd"
    env = make_env(DATABASE_URL=f"postgres://app:{raw}@db/app?pool_timeout=never")
    with pytest.raises(ImproperlyConfigured) as excinfo:
        database_settings(env)
    shown = message_of(excinfo)
    assert raw not in shown
    assert decoded not in shown


def test_django_environ_warnings_are_redacted():
    # django-environ warns about a host in an SQLite URL, quoting the whole netloc.
    env = make_env(DATABASE_URL=f"sqlite://app:{PASSWORD}@somehost/db.sqlite3")
    with pytest.warns(UserWarning) as record:
        databases, _ = database_settings(env)
    assert databases["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert record, "expected django-environ's warning to be passed on"
    for warning in record:
        assert PASSWORD not in str(warning.message)
        assert "DATABASE_URL" in str(warning.message)
