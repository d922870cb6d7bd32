"""System checks for the router's settings; registered by the app config.

Run them with ``manage.py check`` (or ``manage.py check --tag replica_router``).
None of them connects to a database, and none raises on malformed settings: a
check that cannot make sense of a value reports it. Each id is documented in
docs/checks.md.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from replica_router.conf import FAILOVER_ENGINE, RouterConfig, parse_settings
from replica_router.conf_values import SETTING_NAME
from replica_router.discovery.checks import check_discovery
from replica_router.health.policy import probe_gap

__all__ = [
    "ALL_CHECKS",
    "TAG",
    "check_databases",
    "check_health_sharing",
    "check_lag_promise",
    "check_primary_only",
    "check_router_installed",
    "check_settings",
    "check_transaction_pooling",
]

TAG: Final = "replica_router"

# PostGIS is left alone: the failover engine is not a GIS backend.
_DJANGO_POSTGRESQL_ENGINES: Final = frozenset({"django.db.backends.postgresql"})

_Check = Callable[..., list[CheckMessage]]

# Engines known to be PostgreSQL without importing them.
_POSTGRESQL_ENGINES: Final = frozenset(
    {
        "django.db.backends.postgresql",
        "django.contrib.gis.db.backends.postgis",
        FAILOVER_ENGINE,
    }
)


def _never_raise(check: _Check) -> _Check:
    """Turn an unexpected exception into an Error: a check must not crash ``manage.py``."""

    @functools.wraps(check)
    def guarded(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
        try:
            return check(app_configs, **kwargs)
        except Exception as exc:
            return [
                Error(
                    f"settings.{SETTING_NAME} could not be checked: {type(exc).__name__}: {exc}",
                    hint="Make REPLICA_ROUTER and DATABASES plain dicts of plain values, "
                    "as docs/settings.md describes.",
                    id="replica_router.E008",
                )
            ]

    return guarded


def _config() -> RouterConfig:
    config, _ = parse_settings(getattr(settings, SETTING_NAME, {}))
    return config


def _databases() -> dict[str, Mapping[Any, Any]]:
    """DATABASES as alias -> settings dict, skipping whatever is not shaped like one."""
    databases = getattr(settings, "DATABASES", {})
    if not isinstance(databases, Mapping):
        return {}
    return {
        alias: conf
        for alias, conf in databases.items()
        if isinstance(alias, str) and isinstance(conf, Mapping)
    }


def _did_you_mean(value: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(candidates), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


@_never_raise
def check_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E003, E004, E005, E008, E009, E010: the REPLICA_ROUTER dict itself."""
    _, problems = parse_settings(getattr(settings, SETTING_NAME, {}))
    return [Error(p.message, hint=p.hint, id=p.id) for p in problems]


@_never_raise
def check_lag_promise(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004: probes come often enough to keep reads within MAX_LAG_SECONDS."""
    config = _config()
    if not config.health_checks or not config.replicas:
        return []
    gap = probe_gap(config)
    if gap < config.max_lag_seconds:
        return []
    return [
        Warning(
            f"{SETTING_NAME}['CHECK_INTERVAL'] + CHECK_TIMEOUT is {gap:g} s, not less than "
            f"MAX_LAG_SECONDS ({config.max_lag_seconds:g} s): between two probes a replica "
            "can fall further behind than MAX_LAG_SECONDS and still serve reads.",
            hint="Probe more often than the lag you tolerate: keep CHECK_INTERVAL + "
            "CHECK_TIMEOUT a fraction of MAX_LAG_SECONDS (the defaults are 1 s, 0.5 s "
            "and 5 s).",
            id="replica_router.W004",
        )
    ]


#: Caches each process keeps to itself: no use for sharing health.
_PRIVATE_CACHES: Final = frozenset(
    {
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.dummy.DummyCache",
    }
)


@_never_raise
def check_health_sharing(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E011, W006: HEALTH_SHARING "cache" names a cache the processes share."""
    config = _config()
    if config.health_sharing != "cache" or not config.health_checks:
        return []
    caches = getattr(settings, "CACHES", {})
    key = f"{SETTING_NAME}['HEALTH_CACHE']"
    if config.health_cache not in caches:
        return [
            Error(
                f"{key} is {config.health_cache!r}, which is not in settings.CACHES.",
                hint=f"Add it to CACHES (Redis, say), or set {key} to one of: "
                f"{', '.join(map(repr, caches)) or 'nothing yet: CACHES is empty'}.",
                id="replica_router.E011",
            )
        ]
    backend = caches[config.health_cache].get("BACKEND", "")
    if backend in _PRIVATE_CACHES:
        return [
            Warning(
                f"{key} is {config.health_cache!r}, a {backend.rsplit('.', 1)[-1]}: each "
                "process has its own, so every process probes on its own.",
                hint="Use a cache the processes share, such as "
                "django.core.cache.backends.redis.RedisCache; or HEALTH_SHARING 'host' "
                "for the processes of one host.",
                id="replica_router.W006",
            )
        ]
    return []


@_never_raise
def check_databases(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E001, E002, E007, W001, W002, W005, W011: the aliases the router uses,
    against DATABASES."""
    config = _config()
    databases = _databases()
    messages = _missing_aliases(config, databases)
    for alias in [config.primary, *config.replicas]:
        conf = databases.get(alias)
        if conf is not None:
            messages += _alias_problems(alias, conf, config.primary)
    return messages


def _missing_aliases(
    config: RouterConfig, databases: Mapping[str, Mapping[Any, Any]]
) -> list[CheckMessage]:
    """E001 and E002: PRIMARY and REPLICAS name aliases that DATABASES has."""
    messages: list[CheckMessage] = []
    primary = config.primary
    if primary not in databases:
        messages.append(
            Error(
                f"{SETTING_NAME}['PRIMARY'] is {primary!r}, which is not in DATABASES.",
                hint=f"Set {SETTING_NAME}['PRIMARY'] to the alias of the primary in DATABASES."
                + _did_you_mean(primary, databases),
                id="replica_router.E001",
            )
        )
    unused_aliases = [a for a in databases if a != primary and a not in config.replicas]
    for alias in config.replicas:
        if alias not in databases:
            messages.append(
                Error(
                    f"{SETTING_NAME}['REPLICAS'] names {alias!r}, which is not in DATABASES.",
                    hint=f"Add it to DATABASES or remove it from {SETTING_NAME}['REPLICAS']."
                    + _did_you_mean(alias, unused_aliases),
                    id="replica_router.E002",
                )
            )
    return messages


def _alias_problems(alias: str, conf: Mapping[Any, Any], primary: str) -> list[CheckMessage]:
    """E007, W001, W002, W005, W011: one alias's settings."""
    messages: list[CheckMessage] = []
    options = conf.get("OPTIONS")
    pool = options.get("pool") if isinstance(options, Mapping) else None
    conn_max_age = conf.get("CONN_MAX_AGE", 0)
    if pool and conn_max_age != 0:
        messages.append(
            Error(
                f"DATABASES[{alias!r}] enables OPTIONS['pool'] with CONN_MAX_AGE "
                f"{conn_max_age!r}; Django refuses to pool persistent connections.",
                hint=f"Set DATABASES[{alias!r}]['CONN_MAX_AGE'] to 0 (the pool keeps the "
                "connections open), or remove OPTIONS['pool'].",
                id="replica_router.E007",
            )
        )
    engine = conf.get("ENGINE")
    if alias == primary and engine in _DJANGO_POSTGRESQL_ENGINES:
        messages.append(
            Warning(
                f"The primary {alias!r} uses {engine!r}; the router cannot tell when "
                "Django's test runner sets up the test database, so tests' reads go "
                "to replica aliases they do not list.",
                hint=f"Set DATABASES[{alias!r}]['ENGINE'] to {FAILOVER_ENGINE!r}; "
                "replica_router.env.database_settings() does so.",
                id="replica_router.W011",
            )
        )
    if alias != primary and engine in _DJANGO_POSTGRESQL_ENGINES:
        messages.append(
            Warning(
                f"The replica {alias!r} uses {engine!r}; a read routed to it while it "
                "is down fails instead of being served by another node.",
                hint=f"Set DATABASES[{alias!r}]['ENGINE'] to "
                f"{FAILOVER_ENGINE!r} (Django's backend plus read failover); "
                "replica_router.env.database_settings() does so.",
                id="replica_router.W005",
            )
        )
    if _is_postgresql(engine) is False:
        role = "primary" if alias == primary else "replica"
        messages.append(
            Warning(
                f"The {role} {alias!r} uses the engine {engine!r}, which is not PostgreSQL; "
                "replication lag checks and read-your-writes are unavailable for it.",
                hint="Use django.db.backends.postgresql (or a backend built on it), "
                f"or take {alias!r} out of {SETTING_NAME}.",
                id="replica_router.W001",
            )
        )
    if alias != primary:
        messages += _mirror_problem(alias, conf, primary)
    return messages


def _mirror_problem(alias: str, conf: Mapping[Any, Any], primary: str) -> list[CheckMessage]:
    """W002: a replica's test database mirrors the primary's."""
    test = conf.get("TEST")
    mirror = test.get("MIRROR") if isinstance(test, Mapping) else None
    if mirror == primary:
        return []
    return [
        Warning(
            f"The replica {alias!r} has TEST['MIRROR'] {mirror!r}, not the "
            f"primary {primary!r}; tests would create a separate, empty test "
            "database for it instead of reading the primary's.",
            hint=f"Set DATABASES[{alias!r}]['TEST'] = {{'MIRROR': {primary!r}}}.",
            id="replica_router.W002",
        )
    ]


def _is_postgresql(engine: object) -> bool | None:
    """Whether ENGINE is a PostgreSQL backend; None if that cannot be told."""
    if not isinstance(engine, str) or not engine:
        return False
    if engine in _POSTGRESQL_ENGINES:
        return True
    try:
        # A third-party backend that subclasses Django's keeps vendor "postgresql".
        wrapper = importlib.import_module(f"{engine}.base").DatabaseWrapper
    except Exception:
        return None  # Django reports an engine it cannot import.
    return getattr(wrapper, "vendor", None) == "postgresql"


@_never_raise
def check_router_installed(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E006: ReplicaRouter (or a subclass) is in DATABASE_ROUTERS."""
    from replica_router.router import ReplicaRouter

    routers = getattr(settings, "DATABASE_ROUTERS", [])
    if isinstance(routers, str) or not isinstance(routers, list | tuple):
        routers = []
    for entry in routers:
        router: object = entry
        if isinstance(entry, str):
            try:
                router = import_string(entry)
            except Exception:
                continue  # Django reports a path it cannot import.
        if (isinstance(router, type) and issubclass(router, ReplicaRouter)) or isinstance(
            router, ReplicaRouter
        ):
            return []
    return [
        Error(
            f"DATABASE_ROUTERS does not include replica_router.ReplicaRouter "
            f"(it is {routers!r}), so every query goes to the default database.",
            hint="Add 'replica_router.ReplicaRouter' to DATABASE_ROUTERS, or remove "
            "'replica_router' from INSTALLED_APPS.",
            id="replica_router.E006",
        )
    ]


@_never_raise
def check_primary_only(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W003: every PRIMARY_ONLY entry names an installed app or model."""
    config = _config()
    app_configs_by_label = {ac.label.lower(): ac for ac in apps.get_app_configs()}
    app_labels_by_name = {ac.name.lower(): ac.label for ac in apps.get_app_configs()}
    model_labels = {m._meta.label_lower for m in apps.get_models(include_auto_created=True)}
    messages: list[CheckMessage] = []
    for entry in sorted(config.primary_only):
        if entry in app_configs_by_label or entry in model_labels:
            continue
        if entry in app_labels_by_name:
            hint = f"Use the app label {app_labels_by_name[entry]!r}, not the app's module path."
        else:
            hint = (
                "Use an app label such as 'sessions' or a model label such as "
                "'billing.Invoice' from INSTALLED_APPS, or remove the entry."
                + _did_you_mean(entry, [*app_configs_by_label, *model_labels])
            )
        messages.append(
            Warning(
                f"{SETTING_NAME}['PRIMARY_ONLY'] names {entry!r}, which is no installed app "
                "or model, so it routes nothing to the primary.",
                hint=hint,
                id="replica_router.W003",
            )
        )
    return messages


@_never_raise
def check_transaction_pooling(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W007, W008, W009: settings that break behind a transaction pooler, on the
    aliases ``TRANSACTION_POOLING`` declares to be behind one.

    Nothing in DATABASES tells a PgBouncer from a server, so only declared
    aliases are looked at.
    """
    config = _config()
    routed = [config.primary, *config.replicas]
    declared = config.transaction_pooling
    pooled = routed if declared is True else [a for a in routed if declared and a in declared]
    databases = _databases()
    messages: list[CheckMessage] = []
    for alias in pooled:
        conf = databases.get(alias)
        if conf is not None:
            messages += _pooling_problems(alias, conf)
    return messages


def _pooling_problems(alias: str, conf: Mapping[Any, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    options = conf.get("OPTIONS")
    options = options if isinstance(options, Mapping) else {}
    if conf.get("DISABLE_SERVER_SIDE_CURSORS") is not True:
        messages.append(
            Warning(
                f"DATABASES[{alias!r}] is behind a transaction pooler but does not set "
                "DISABLE_SERVER_SIDE_CURSORS: QuerySet.iterator() declares a cursor in one "
                "server session and may fetch from another, where it does not exist.",
                hint=f"Set DATABASES[{alias!r}]['DISABLE_SERVER_SIDE_CURSORS'] = True.",
                id="replica_router.W007",
            )
        )
    if options.get("server_side_binding") is True and options.get("prepare_threshold") is not None:
        messages.append(
            Warning(
                f"DATABASES[{alias!r}] is behind a transaction pooler with server-side "
                f"binding and prepare_threshold {options['prepare_threshold']!r}: psycopg "
                "prepares statements in one server session and runs them in another "
                '("prepared statement "_pg3_0" does not exist").',
                hint="Remove OPTIONS['prepare_threshold'] (Django then prepares nothing), "
                "unless the pooler keeps prepared statements itself (PgBouncer 1.21+ "
                "with max_prepared_statements): then silence this warning.",
                id="replica_router.W008",
            )
        )
    if options.get("assume_role"):
        messages.append(
            Warning(
                f"DATABASES[{alias!r}] is behind a transaction pooler and sets "
                f"OPTIONS['assume_role'] {options['assume_role']!r}: the SET ROLE that "
                "Django runs when it connects stays on one server session, which other "
                "clients then get, while this connection's later transactions may run "
                "in sessions without it.",
                hint="Connect as that role instead (USER), or give it a PgBouncer "
                "database of its own (a user= in PgBouncer's [databases]).",
                id="replica_router.W009",
            )
        )
    return messages


ALL_CHECKS: Final[tuple[_Check, ...]] = (
    check_settings,
    _never_raise(check_discovery),
    check_health_sharing,
    check_lag_promise,
    check_databases,
    check_transaction_pooling,
    check_router_installed,
    check_primary_only,
)
