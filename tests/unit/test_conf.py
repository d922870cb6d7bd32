"""settings.REPLICA_ROUTER becomes a typed config; bad values fail loudly, not silently."""

from __future__ import annotations

import dataclasses

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from replica_router.conf import DEFAULTS, RouterConfig, get_config, parse_settings


@override_settings(REPLICA_ROUTER={})
def test_defaults_for_an_empty_setting():
    config = get_config()
    assert config.primary == "default"
    assert dict(config.replicas) == {}
    assert config.primary_only == frozenset()
    assert config.max_lag_seconds == 5.0
    assert config.max_lag_bytes == 16 * 1024 * 1024
    assert config.check_interval == 1.0
    assert config.check_timeout == 0.5
    assert config.recovery_checks == 2
    assert config.fallback == "primary"
    assert config.read_your_writes == "lsn"
    assert config.pin_seconds == 5.0
    assert config.cookie_name == "replica_router"


def test_every_default_has_a_typed_field():
    assert {f.name for f in dataclasses.fields(RouterConfig)} == {k.lower() for k in DEFAULTS}


def test_replicas_dict_keeps_order_and_weights():
    with override_settings(REPLICA_ROUTER={"REPLICAS": {"replica_2": 1, "replica_1": 3}}):
        assert list(get_config().replicas.items()) == [("replica_2", 1), ("replica_1", 3)]


@pytest.mark.parametrize("replicas", [["replica_1", "replica_2"], ("replica_1", "replica_2")])
def test_replicas_list_means_weight_one_each(replicas):
    with override_settings(REPLICA_ROUTER={"REPLICAS": replicas}):
        assert dict(get_config().replicas) == {"replica_1": 1, "replica_2": 1}


def test_primary_only_is_lowercased():
    with override_settings(REPLICA_ROUTER={"PRIMARY_ONLY": ["sessions", "billing.Invoice"]}):
        assert get_config().primary_only == frozenset({"sessions", "billing.invoice"})


@override_settings(REPLICA_ROUTER={"PRIMARY": "outer"})
def test_config_is_cached_and_refreshed_by_override_settings():
    first = get_config()
    assert get_config() is first
    with override_settings(REPLICA_ROUTER={"PRIMARY": "inner"}):
        assert get_config().primary == "inner"
    # Leaving the override restores the old value, not a stale cached one.
    assert get_config().primary == "outer"


def test_config_refreshes_when_databases_change():
    first = get_config()
    with (
        pytest.warns(UserWarning, match="Overriding setting DATABASES"),
        override_settings(DATABASES={"default": {}}),
    ):
        assert get_config() is not first


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_config().primary = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        get_config().replicas["x"] = 1  # type: ignore[index]


def test_numbers_accept_ints_for_floats():
    with override_settings(REPLICA_ROUTER={"MAX_LAG_SECONDS": 2, "CHECK_TIMEOUT": 0.25}):
        config = get_config()
    assert config.max_lag_seconds == 2.0
    assert isinstance(config.max_lag_seconds, float)
    assert config.check_timeout == 0.25


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not a dict", "must be a dict"),
        ({"REPLICA": ["replica_1"]}, "unknown key 'REPLICA'"),
        ({"REPLICAS": "replica_1"}, "Wrap a single alias in a list"),
        ({"REPLICAS": {"replica_1": -1}}, "weight -1"),
        ({"REPLICAS": {"replica_1": True}}, "weight True"),
        ({"REPLICAS": ["replica_1", "replica_1"]}, "more than once"),
        ({"REPLICAS": ["default"]}, "the primary 'default'"),
        ({"PRIMARY": ""}, "PRIMARY"),
        ({"MAX_LAG_SECONDS": 0}, "MAX_LAG_SECONDS"),
        ({"MAX_LAG_BYTES": 1.5}, "MAX_LAG_BYTES"),
        ({"RECOVERY_CHECKS": False}, "RECOVERY_CHECKS"),
        ({"FALLBACK": "replica"}, "'least_lagged'"),
        ({"READ_YOUR_WRITES": True}, "READ_YOUR_WRITES"),
        ({"PRIMARY_ONLY": "sessions"}, "PRIMARY_ONLY"),
        ({"COOKIE_NAME": "has space"}, "COOKIE_NAME"),
    ],
)
def test_invalid_settings_raise_improperly_configured(raw, fragment):
    with override_settings(REPLICA_ROUTER=raw), pytest.raises(ImproperlyConfigured) as info:
        get_config()
    assert fragment in str(info.value)


def test_every_problem_is_reported_at_once():
    _, problems = parse_settings({"REPLICAS": {"r1": -1, "r2": "x"}, "FALLBACK": "nope", "TYPO": 1})
    assert [p.id for p in problems] == [
        "replica_router.E008",
        "replica_router.E009",
        "replica_router.E004",
        "replica_router.E004",
    ]


def test_parse_keeps_valid_entries_beside_invalid_ones():
    config, problems = parse_settings({"REPLICAS": {"good": 2, "bad": -1}})
    assert dict(config.replicas) == {"good": 2}
    assert len(problems) == 1


def test_unknown_key_suggests_the_closest():
    _, problems = parse_settings({"MAX_LAG_SECOND": 1})
    assert "Did you mean 'MAX_LAG_SECONDS'?" in problems[0].hint


def test_parse_never_raises_on_garbage():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr")

    for raw in [None, 3, Hostile(), {"REPLICAS": Hostile()}, {1: 2}, {"REPLICAS": [None, 3]}]:
        _, problems = parse_settings(raw)
        assert problems
