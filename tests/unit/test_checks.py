"""System checks: each id fires on its misconfiguration, none on a good one, none crash.

The checks are called directly under override_settings, so each test shows the
exact configuration a user could write and the message they would get.
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager

import pytest
from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.checks.registry import CheckRegistry
from django.test import override_settings

import replica_router
from replica_router.apps import ReplicaRouterConfig
from replica_router.checks import (
    ALL_CHECKS,
    TAG,
    check_databases,
    check_lag_promise,
    check_primary_only,
    check_router_installed,
    check_settings,
    check_transaction_pooling,
)
from replica_router.discovery.checks import check_discovery
from replica_router.router import ReplicaRouter

GOOD_ROUTER = {"REPLICAS": {"replica_1": 3, "replica_2": 1}}
ROUTERS = ["replica_router.ReplicaRouter"]


class SubRouter(ReplicaRouter):
    pass


def run_all():
    return [message for check in ALL_CHECKS for message in check(None)]


def ids(messages):
    return [m.id for m in messages]


def only(messages, check_id):
    found = [m for m in messages if m.id == check_id]
    assert found, f"{check_id} not in {ids(messages)}"
    return found


@contextmanager
def databases(**changes):
    """Override DATABASES: alias=dict merges into that alias, alias=None drops it."""
    new = copy.deepcopy(settings.DATABASES)
    for alias, change in changes.items():
        if change is None:
            new.pop(alias)
        else:
            new[alias] = {**new.get(alias, {}), **change}
    # Django warns that overriding DATABASES does not reconnect; the checks only
    # read the settings, which is exactly what they see in production.
    with (
        pytest.warns(UserWarning, match="Overriding setting DATABASES"),
        override_settings(DATABASES=new),
    ):
        yield


@pytest.fixture(autouse=True)
def _good_settings():
    with override_settings(REPLICA_ROUTER=GOOD_ROUTER, DATABASE_ROUTERS=ROUTERS):
        yield


def test_good_configuration_passes_every_check():
    assert run_all() == []


def test_good_configuration_with_a_list_and_primary_only_passes():
    with override_settings(
        REPLICA_ROUTER={
            "REPLICAS": ["replica_1", "replica_2"],
            "PRIMARY_ONLY": ["sessions", "testapp.Author"],
            "FALLBACK": "error",
            "MAX_LAG_SECONDS": 2,
        }
    ):
        assert run_all() == []


def test_e001_primary_not_in_databases():
    with override_settings(REPLICA_ROUTER={"PRIMARY": "defualt"}):
        [error] = only(check_databases(None), "replica_router.E001")
    assert "'defualt'" in error.msg
    assert "Did you mean 'default'?" in error.hint
    assert error.level == checks.ERROR


def test_e002_replica_not_in_databases():
    with override_settings(
        REPLICA_ROUTER={"REPLICAS": {"replica_1": 1, "replica_2": 1, "replica_9": 1}}
    ):
        [error] = only(check_databases(None), "replica_router.E002")
    assert "'replica_9'" in error.msg
    assert "Add it to DATABASES" in error.hint
    # Every similar alias is already in use: nothing to suggest.
    assert "Did you mean" not in error.hint


def test_e002_suggests_an_unused_alias():
    with override_settings(REPLICA_ROUTER={"REPLICAS": {"replica_1": 1, "replica-2": 1}}):
        [error] = only(check_databases(None), "replica_router.E002")
    assert "Did you mean 'replica_2'?" in error.hint


def test_e003_primary_listed_as_replica():
    with override_settings(REPLICA_ROUTER={"REPLICAS": ["default", "replica_1"]}):
        [error] = only(check_settings(None), "replica_router.E003")
    assert "'default'" in error.msg


@pytest.mark.parametrize("weight", [-1, True, 1.5, "2", None, 1001])
def test_e004_bad_weight(weight):
    with override_settings(REPLICA_ROUTER={"REPLICAS": {"replica_1": weight, "replica_2": 1}}):
        [error] = only(check_settings(None), "replica_router.E004")
    assert repr(weight) in error.msg
    assert "'replica_1'" in error.msg


def test_e004_accepts_zero_to_drain():
    with override_settings(REPLICA_ROUTER={"REPLICAS": {"replica_1": 0, "replica_2": 1}}):
        assert run_all() == []


def test_e005_duplicate_alias_in_list():
    with override_settings(REPLICA_ROUTER={"REPLICAS": ["replica_1", "replica_2", "replica_1"]}):
        [error] = only(check_settings(None), "replica_router.E005")
    assert "'replica_1'" in error.msg
    assert "{'replica_1': 2}" in error.hint


class OtherRouter:
    pass


@pytest.mark.parametrize("routers", [[], [f"{__name__}.OtherRouter"], [OtherRouter()]])
def test_e006_router_missing(routers):
    with override_settings(DATABASE_ROUTERS=routers):
        [error] = only(check_router_installed(None), "replica_router.E006")
    assert "'replica_router.ReplicaRouter'" in error.hint


@pytest.mark.parametrize("routers", ["not a list", None, ["no.such.module.Router"]])
def test_e006_garbage_routers_do_not_crash(routers, monkeypatch):
    # override_settings would make Django itself import these and fail, so the
    # setting is replaced without the setting_changed signal.
    monkeypatch.setattr(settings, "DATABASE_ROUTERS", routers)
    assert ids(check_router_installed(None)) == ["replica_router.E006"]


@pytest.mark.parametrize(
    "routers",
    [
        ["replica_router.router.ReplicaRouter"],
        [f"{__name__}.OtherRouter", f"{__name__}.SubRouter"],
        [ReplicaRouter()],
    ],
)
def test_e006_accepts_paths_subclasses_and_instances(routers):
    with override_settings(DATABASE_ROUTERS=routers):
        assert check_router_installed(None) == []


@pytest.mark.parametrize("conn_max_age", [60, None])
def test_e007_pool_with_persistent_connections(conn_max_age):
    with databases(replica_2={"OPTIONS": {"pool": True}, "CONN_MAX_AGE": conn_max_age}):
        [error] = only(check_databases(None), "replica_router.E007")
    assert "'replica_2'" in error.msg
    assert repr(conn_max_age) in error.msg


def test_e007_pool_alone_is_fine():
    with databases(replica_2={"OPTIONS": {"pool": {"max_size": 4}}, "CONN_MAX_AGE": 0}):
        assert check_databases(None) == []


def test_e008_not_a_dict():
    with override_settings(REPLICA_ROUTER=["replica_1"]):
        [error] = only(check_settings(None), "replica_router.E008")
    assert "must be a dict" in error.msg
    assert "list" in error.msg


def test_e008_unknown_key_suggests_the_closest():
    with override_settings(REPLICA_ROUTER={"REPLICA": {"replica_1": 1}}):
        [error] = only(check_settings(None), "replica_router.E008")
    assert "'REPLICA'" in error.msg
    assert "Did you mean 'REPLICAS'?" in error.hint


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_LAG_SECONDS", -1),
        ("MAX_LAG_BYTES", 0),
        ("CHECK_INTERVAL", "1s"),
        ("CHECK_TIMEOUT", float("nan")),
        ("RECOVERY_CHECKS", 0),
        ("PIN_SECONDS", True),
        ("FALLBACK", "sometimes"),
        ("READ_YOUR_WRITES", "always"),
        ("PRIMARY", 3),
        ("PRIMARY_ONLY", "sessions"),
        ("COOKIE_NAME", ""),
        ("TRANSACTION_POOLING", "replica_1"),
        ("TRANSACTION_POOLING", ["replica_1", None]),
    ],
)
def test_e009_bad_value(key, value):
    with override_settings(REPLICA_ROUTER={**GOOD_ROUTER, key: value}):
        [error] = only(check_settings(None), "replica_router.E009")
    assert key in error.msg
    assert repr(value) in error.msg
    assert error.hint


def test_w001_engine_not_postgresql():
    with databases(replica_1={"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}):
        [warning] = only(check_databases(None), "replica_router.W001")
    assert "'replica_1'" in warning.msg
    assert "sqlite3" in warning.msg
    assert warning.level == checks.WARNING


def test_w001_postgresql_subclass_backend_is_fine():
    with databases(replica_1={"ENGINE": "django.contrib.gis.db.backends.postgis"}):
        assert ids(check_databases(None)) == []


def test_w002_replica_without_test_mirror():
    with databases(replica_2={"TEST": {}}):
        [warning] = only(check_databases(None), "replica_router.W002")
    assert "'replica_2'" in warning.msg
    assert "{'MIRROR': 'default'}" in warning.hint


def test_w003_primary_only_names_nothing_installed():
    with override_settings(
        REPLICA_ROUTER={
            **GOOD_ROUTER,
            "PRIMARY_ONLY": ["sessions", "testapp.Author", "billing.Invoice", "testap"],
        }
    ):
        warnings = only(check_primary_only(None), "replica_router.W003")
    assert {re.search(r"names '([^']+)'", w.msg)[1] for w in warnings} == {
        "billing.invoice",
        "testap",
    }
    [typo] = [w for w in warnings if "'testap'" in w.msg]
    assert "Did you mean 'testapp'?" in typo.hint


def test_w003_hints_the_label_for_an_app_module_path():
    with override_settings(
        REPLICA_ROUTER={**GOOD_ROUTER, "PRIMARY_ONLY": ["django.contrib.sessions"]}
    ):
        [warning] = only(check_primary_only(None), "replica_router.W003")
    assert "'sessions'" in warning.hint


class _Hostile:
    def __repr__(self):
        raise RuntimeError("no repr")

    def __eq__(self, other):
        raise RuntimeError("no eq")

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    "router_settings",
    [
        None,
        "x",
        _Hostile(),
        {1: 2},
        {"REPLICAS": _Hostile()},
        {"REPLICAS": {"replica_1": _Hostile()}},
        {"REPLICAS": [["nested"], None, 3]},
        {"PRIMARY_ONLY": [None, 3, ["x"]]},
        {"FALLBACK": _Hostile()},
        {"PRIMARY": ["default"]},
    ],
)
def test_checks_never_raise_on_garbage_router_settings(router_settings):
    with override_settings(REPLICA_ROUTER=router_settings):
        messages = run_all()
    assert messages
    assert all(m.id.startswith("replica_router.") for m in messages)


@pytest.mark.parametrize(
    "changes",
    [
        {"replica_1": {"OPTIONS": "garbage", "TEST": "garbage", "ENGINE": None}},
        {"replica_1": {"OPTIONS": {"pool": True}, "CONN_MAX_AGE": "forever"}},
        {"replica_1": {"ENGINE": "no.such.backend"}},
    ],
)
def test_checks_never_raise_on_garbage_databases(changes):
    with databases(**changes):
        messages = run_all()
    assert all(m.id.startswith("replica_router.") for m in messages)


def test_checks_never_raise_when_databases_is_not_a_dict():
    with (
        pytest.warns(UserWarning, match="Overriding setting DATABASES"),
        override_settings(DATABASES=["default"]),
    ):
        messages = run_all()
    assert "replica_router.E001" in ids(messages)


def test_app_config_registers_every_check(monkeypatch):
    registry = CheckRegistry()
    monkeypatch.setattr(checks, "register", registry.register)
    ReplicaRouterConfig("replica_router", replica_router).ready()
    assert set(registry.registered_checks) == set(ALL_CHECKS)
    assert all(TAG in check.tags for check in registry.registered_checks)
    # Registered checks run through Django's machinery and see the settings.
    with override_settings(DATABASE_ROUTERS=[]):
        assert ids(registry.run_checks(tags=[TAG])) == ["replica_router.E006"]


def test_test_apps_are_what_w003_expects():
    # Guards the tests above: they rely on these apps being installed.
    assert apps.is_installed("django.contrib.sessions")
    assert apps.is_installed("testbed.testapp")


def test_w004_probes_rarer_than_the_lag_promise():
    with override_settings(
        REPLICA_ROUTER={**GOOD_ROUTER, "CHECK_INTERVAL": 10, "MAX_LAG_SECONDS": 5}
    ):
        [warning] = only(check_lag_promise(None), "replica_router.W004")
    assert "CHECK_INTERVAL" in warning.msg and "10.5 s" in warning.msg
    assert warning.hint
    with override_settings(
        REPLICA_ROUTER={
            **GOOD_ROUTER,
            "CHECK_INTERVAL": 10,
            "MAX_LAG_SECONDS": 5,
            "HEALTH_CHECKS": False,
        }
    ):
        assert check_lag_promise(None) == []


def test_w005_replica_without_the_failover_engine():
    with databases(replica_1={"ENGINE": "django.db.backends.postgresql"}):
        [warning] = only(check_databases(None), "replica_router.W005")
    assert "'replica_1'" in warning.msg
    assert "replica_router.backends.postgresql" in warning.hint


def test_w011_primary_without_the_engine():
    with databases(default={"ENGINE": "django.db.backends.postgresql"}):
        [warning] = only(check_databases(None), "replica_router.W011")
    assert "'default'" in warning.msg and "test" in warning.msg
    assert "replica_router.backends.postgresql" in warning.hint
    assert "replica_router.W011" not in ids(check_databases(None))


# -- DISCOVERY's needs of the other settings (E013) ----------------------------------

DISCOVERY = {"SOURCE": "dns", "NAME": "_pg._tcp.db.internal"}


def discovering(**extra):
    return override_settings(REPLICA_ROUTER={**GOOD_ROUTER, "DISCOVERY": DISCOVERY, **extra})


def test_e013_passes_a_discovery_that_copies_the_failover_primary():
    with discovering():
        assert check_discovery(None) == []
    assert check_discovery(None) == []


def test_e013_discovery_without_health_checks():
    with discovering(HEALTH_CHECKS=False):
        [error] = only(check_discovery(None), "replica_router.E013")
    assert "HEALTH_CHECKS" in error.msg and "True" in error.hint


def test_e013_template_not_in_databases():
    with override_settings(
        REPLICA_ROUTER={**GOOD_ROUTER, "DISCOVERY": {**DISCOVERY, "TEMPLATE": "replcia_1"}}
    ):
        [error] = only(check_discovery(None), "replica_router.E013")
    assert "'replcia_1'" in error.msg and "TEMPLATE" in error.hint


def test_e013_template_without_the_failover_engine():
    with discovering(), databases(default={"ENGINE": "django.db.backends.postgresql"}):
        [error] = only(check_discovery(None), "replica_router.E013")
    assert "'default'" in error.msg
    assert "replica_router.backends.postgresql" in error.hint


def test_aliases_may_share_an_address():
    # One PgBouncer address in front of several nodes, or libpq's default
    # localhost:5432 for all: the cut-off shuts only a replica's own connections.
    shared = {"HOST": "", "PORT": ""}
    with override_settings(REPLICA_ROUTER=GOOD_ROUTER):
        apart = check_databases(None)
        with databases(default=shared, replica_1=shared, replica_2=shared):
            assert check_databases(None) == apart


# -- behind a transaction pooler (TRANSACTION_POOLING) -------------------------------

SAFE_BEHIND_POOLER = {"DISABLE_SERVER_SIDE_CURSORS": True}


def pooling(declared):
    return override_settings(REPLICA_ROUTER={**GOOD_ROUTER, "TRANSACTION_POOLING": declared})


def test_w007_a_pooled_alias_keeps_server_side_cursors():
    with pooling(["replica_1"]), databases(replica_2=SAFE_BEHIND_POOLER):
        [warning] = only(check_transaction_pooling(None), "replica_router.W007")
    assert "'replica_1'" in warning.msg
    assert "DISABLE_SERVER_SIDE_CURSORS" in warning.hint


def test_w007_true_declares_every_alias_the_router_uses():
    with pooling(True), databases(replica_1=SAFE_BEHIND_POOLER):
        warnings = only(check_transaction_pooling(None), "replica_router.W007")
    assert sorted(w.msg.split("'")[1] for w in warnings) == ["default", "replica_2"]


def test_w008_a_pooled_alias_prepares_statements():
    options = {"server_side_binding": True, "prepare_threshold": 5}
    with pooling(["replica_1"]), databases(replica_1={**SAFE_BEHIND_POOLER, "OPTIONS": options}):
        [warning] = only(check_transaction_pooling(None), "replica_router.W008")
    assert "prepare_threshold 5" in warning.msg
    assert "max_prepared_statements" in warning.hint


@pytest.mark.parametrize(
    "options",
    [
        {"server_side_binding": True},  # Django passes prepare_threshold=None: nothing prepared
        {"server_side_binding": True, "prepare_threshold": None},
        {"prepare_threshold": 0},  # client-side binding (the default) never prepares
    ],
)
def test_w008_not_without_prepared_statements(options):
    with (
        pooling(True),
        databases(
            default={**SAFE_BEHIND_POOLER, "OPTIONS": options},
            replica_1={**SAFE_BEHIND_POOLER, "OPTIONS": options},
            replica_2={**SAFE_BEHIND_POOLER, "OPTIONS": options},
        ),
    ):
        assert check_transaction_pooling(None) == []


def test_w009_a_pooled_alias_assumes_a_role():
    options = {"assume_role": "reporting"}
    with pooling(["replica_2"]), databases(replica_2={**SAFE_BEHIND_POOLER, "OPTIONS": options}):
        [warning] = only(check_transaction_pooling(None), "replica_router.W009")
    assert "'reporting'" in warning.msg


def test_nothing_is_said_of_an_alias_not_declared_pooled():
    options = {"server_side_binding": True, "prepare_threshold": 5, "assume_role": "r"}
    with (
        pooling(["replica_2"]),
        databases(replica_1={"OPTIONS": options}, replica_2=SAFE_BEHIND_POOLER),
    ):
        assert check_transaction_pooling(None) == []
