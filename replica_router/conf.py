"""Read ``settings.REPLICA_ROUTER`` through one place and turn it into a typed config.

Every key and its default lives in :data:`DEFAULTS`. Adding a setting is one line
there plus one field on :class:`RouterConfig` (the field is the key lower-cased);
its value is validated from the type of its default, or from :data:`CHOICES` for
a string with a fixed set of values, unless it needs a parser of its own in
``_PARSERS``. The parsers, and the problem each reports, are in
:mod:`replica_router.conf_values`.

:func:`parse_settings` never raises: it returns the best config it can build plus
a list of problems, so that the system checks can report every problem at once.
:func:`get_config` raises :class:`~replica_router.exceptions.ReplicaRouterConfigError`
if there is any problem, and caches its result; :mod:`replica_router.runtime` clears
the cache when ``override_settings`` (or anything else that sends
``setting_changed``) changes ``REPLICA_ROUTER`` or ``DATABASES``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Final, Literal

from django.conf import settings

from replica_router.conf_values import (
    SETTING_NAME,
    ConfigProblem,
    Invalid,
    Parser,
    bad_value,
    is_alias,
    one_of,
    parse_alias,
    parse_bool,
    parse_cache_alias,
    parse_cookie_name,
    parse_directory,
    parse_metrics,
    parse_positive_float,
    parse_positive_int,
    parse_primary_only,
    parse_transaction_pooling,
    prometheus_installed,
    setting_key,
    show,
)
from replica_router.discovery.config import DiscoveryConfig, parse_discovery
from replica_router.exceptions import ReplicaRouterConfigError

__all__ = [
    "CHOICES",
    "CONNECT_TIMEOUT",
    "DEFAULTS",
    "FAILOVER_ENGINE",
    "MAX_WEIGHT",
    "ConfigProblem",
    "RouterConfig",
    "get_config",
    "parse_settings",
    "prometheus_installed",
]

DEFAULTS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "PRIMARY": "default",
        "REPLICAS": MappingProxyType({}),
        "PRIMARY_ONLY": (),
        "HEALTH_CHECKS": True,
        "MAX_LAG_SECONDS": 5.0,
        "MAX_LAG_BYTES": 16 * 1024 * 1024,
        "CHECK_INTERVAL": 1.0,
        "CHECK_TIMEOUT": 0.5,
        "RECOVERY_CHECKS": 2,
        "HEALTH_SHARING": "process",
        "HEALTH_CACHE": "default",
        "HEALTH_DIR": None,
        "FALLBACK": "primary",
        "READ_YOUR_WRITES": "lsn",
        "MONOTONIC_READS": True,
        "PIN_SECONDS": 5.0,
        "COOKIE_NAME": "replica_router",
        "METRICS": "auto",
        "TRANSACTION_POOLING": (),
        "DISCOVERY": None,
    }
)

CHOICES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "FALLBACK": ("primary", "least_lagged", "error"),
        "READ_YOUR_WRITES": ("lsn", "time", "off"),
        "HEALTH_SHARING": ("process", "host", "cache"),
    }
)

#: The largest weight a replica may have. Weights are shares, so small numbers
#: say everything; the cap keeps one period of the schedule small.
MAX_WEIGHT: Final = 1000

#: The ENGINE of our backend: Django's PostgreSQL backend plus read failover.
FAILOVER_ENGINE: Final = "replica_router.backends.postgresql"

#: libpq's connect_timeout (its minimum is 2 s) where we choose it: a dead host
#: then costs a connection attempt this long, not the system's TCP timeout.
CONNECT_TIMEOUT: Final = 2

# Settings whose change invalidates the cached config (and the router's state).
WATCHED_SETTINGS: Final = frozenset({SETTING_NAME, "DATABASES"})

Fallback = Literal["primary", "least_lagged", "error"]
ReadYourWrites = Literal["lsn", "time", "off"]
HealthSharing = Literal["process", "host", "cache"]


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """The validated contents of ``settings.REPLICA_ROUTER``, defaults filled in."""

    primary: str
    #: Replica alias -> weight, in the order the settings list them.
    replicas: Mapping[str, int]
    #: Lower-cased app labels ("sessions") and model labels ("billing.invoice").
    primary_only: frozenset[str]
    health_checks: bool
    max_lag_seconds: float
    max_lag_bytes: int
    check_interval: float
    check_timeout: float
    recovery_checks: int
    #: Who probes: each process ("process"), one per host ("host"), one per
    #: cluster through a Django cache ("cache").
    health_sharing: HealthSharing
    health_cache: str
    health_dir: str | None
    fallback: Fallback
    read_your_writes: ReadYourWrites
    #: A request's (or causal block's) reads come from one node, never going back.
    monotonic_reads: bool
    pin_seconds: float
    cookie_name: str
    #: Whether to count for Prometheus; ``"auto"`` is resolved to whether
    #: prometheus-client is installed.
    metrics: bool
    #: The aliases behind a transaction-pooling PgBouncer (or another such
    #: pooler), as the settings declare; True for every alias the router uses.
    #: Only the system checks read it.
    transaction_pooling: bool | frozenset[str]
    #: Where replicas are found while the site runs; None: REPLICAS only.
    discovery: DiscoveryConfig | None


_PARSERS: Final[Mapping[str, Parser]] = MappingProxyType(
    {
        "PRIMARY": parse_alias,
        "HEALTH_CACHE": parse_cache_alias,
        "HEALTH_DIR": parse_directory,
        "PRIMARY_ONLY": parse_primary_only,
        "COOKIE_NAME": parse_cookie_name,
        "METRICS": parse_metrics,
        "TRANSACTION_POOLING": parse_transaction_pooling,
        "DISCOVERY": parse_discovery,
    }
)


def _parser_for(name: str) -> Parser:
    if name in _PARSERS:
        return _PARSERS[name]
    if name in CHOICES:
        return one_of(CHOICES[name])
    default = DEFAULTS[name]
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, float):
        return parse_positive_float
    if isinstance(default, int):
        return parse_positive_int
    raise AssertionError(f"No parser for {name}: add one to _PARSERS.")  # pragma: no cover


def _replica_items(
    value: object, problems: list[ConfigProblem]
) -> list[tuple[object, object]] | None:
    """REPLICAS as (alias, weight) pairs: a dict's items, or a list's aliases with
    weight 1 (each listed once). None, with the problem noted, for anything else."""
    name = "REPLICAS"
    if isinstance(value, Mapping):
        return list(value.items())
    if not isinstance(value, list | tuple):
        hint = (
            f"Wrap a single alias in a list: [{value!r}]."
            if isinstance(value, str)
            else "For example {'replica_1': 2, 'replica_2': 1} or ['replica_1', 'replica_2']."
        )
        problems.append(
            bad_value(
                name, value, "a dict of alias to weight, or a list of aliases", DEFAULTS[name], hint
            ).problem
        )
        return None
    items: list[tuple[object, object]] = []
    seen: set[str] = set()
    for alias in value:
        if isinstance(alias, str) and alias in seen:
            problems.append(
                ConfigProblem(
                    "replica_router.E005",
                    f"{setting_key(name)} lists {alias!r} more than once.",
                    "List each alias once. To give a replica a bigger share of reads, "
                    f"use a dict of weights, e.g. {{{alias!r}: 2}}.",
                )
            )
            continue
        if isinstance(alias, str):
            seen.add(alias)
        items.append((alias, 1))
    return items


def _replica_problem(
    alias: object, weight: object, primary: str, value: object
) -> ConfigProblem | None:
    """What is wrong with one REPLICAS entry, or None."""
    name = "REPLICAS"
    if not is_alias(alias):
        return bad_value(
            name,
            value,
            "a dict of alias to weight, or a list of aliases",
            DEFAULTS[name],
            hint=f"Each alias must be a non-empty str; {show(alias)} is not.",
        ).problem
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        return ConfigProblem(
            "replica_router.E004",
            f"{setting_key(name)} gives {alias!r} the weight {show(weight)}; a weight must be "
            f"an int from 0 to {MAX_WEIGHT}.",
            "Use 1 for an equal share, a bigger int for a bigger share, and 0 to drain a replica.",
        )
    if alias == primary:
        return ConfigProblem(
            "replica_router.E003",
            f"{setting_key(name)} lists the primary {alias!r} as a replica.",
            f"Remove {alias!r} from {setting_key(name)}: reads already go to the primary "
            "when no replica can serve them (see FALLBACK).",
        )
    return None


def _parse_replicas(value: object, primary: str, problems: list[ConfigProblem]) -> dict[str, int]:
    """Parse REPLICAS leniently: keep every valid entry, report every invalid one."""
    replicas: dict[str, int] = {}
    for alias, weight in _replica_items(value, problems) or []:
        problem = _replica_problem(alias, weight, primary, value)
        if problem is not None:
            problems.append(problem)
            continue
        assert isinstance(alias, str) and isinstance(weight, int)
        replicas[alias] = weight
    return replicas


def parse_settings(raw: object) -> tuple[RouterConfig, list[ConfigProblem]]:
    """Parse a ``REPLICA_ROUTER`` value without raising.

    Returns the config, with the default in place of each invalid value, and the
    problems found, in the order of the keys.
    """
    problems: list[ConfigProblem] = []
    if not isinstance(raw, Mapping):
        problems.append(
            ConfigProblem(
                "replica_router.E008",
                f"settings.{SETTING_NAME} must be a dict, not {type(raw).__name__} {show(raw)}.",
                f"Write {SETTING_NAME} = {{'REPLICAS': {{'replica_1': 1}}}}; "
                "see docs/settings.md for every key.",
            )
        )
        raw = {}
    assert isinstance(raw, Mapping)

    for key in raw:
        if key not in DEFAULTS:
            close = (
                difflib.get_close_matches(key.upper(), list(DEFAULTS), n=1)
                if isinstance(key, str)
                else []
            )
            suggestion = f"Did you mean {close[0]!r}? " if close else ""
            problems.append(
                ConfigProblem(
                    "replica_router.E008",
                    f"settings.{SETTING_NAME} has an unknown key {show(key)}.",
                    f"{suggestion}The valid keys are {', '.join(DEFAULTS)}.",
                )
            )

    values: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        if name == "REPLICAS":
            continue  # needs PRIMARY; parsed below.
        parse = _parser_for(name)
        if name not in raw:
            values[name.lower()] = parse(name, default, default)
            continue
        try:
            values[name.lower()] = parse(name, raw[name], default)
        except Invalid as invalid:
            problems.append(invalid.problem)
            values[name.lower()] = parse(name, default, default)

    replicas = _parse_replicas(raw.get("REPLICAS", {}), values["primary"], problems)
    values["replicas"] = MappingProxyType(replicas)
    return RouterConfig(**values), problems


def _check_complete() -> None:
    # A setting added to DEFAULTS without a RouterConfig field (or the reverse)
    # would fail on first use; fail at import instead.
    names = {f.name for f in fields(RouterConfig)}
    if names != {key.lower() for key in DEFAULTS}:  # pragma: no cover
        raise AssertionError(f"RouterConfig fields {sorted(names)} do not match DEFAULTS.")


_check_complete()


@functools.cache
def get_config() -> RouterConfig:
    """Return the validated ``settings.REPLICA_ROUTER``, cached until settings change.

    Raises :class:`~replica_router.exceptions.ReplicaRouterConfigError` (an
    ``ImproperlyConfigured``) listing every problem; ``manage.py check`` reports
    the same problems with hints.
    """
    config, problems = parse_settings(getattr(settings, SETTING_NAME, {}))
    if problems:
        details = "\n".join(f"- {p.message} {p.hint} ({p.id})" for p in problems)
        raise ReplicaRouterConfigError(f"settings.{SETTING_NAME} is invalid:\n{details}")
    return config


def engine_flag(alias: str, name: str) -> bool:
    """A class attribute of ``alias``'s engine, such as the failover engine's
    ``notes_writes``; False for another engine or a misconfigured alias."""
    from django.db.utils import load_backend

    try:
        wrapper_class = load_backend(settings.DATABASES[alias]["ENGINE"]).DatabaseWrapper
    except Exception:  # misconfigured: the system checks say so
        return False
    return bool(getattr(wrapper_class, name, False))
