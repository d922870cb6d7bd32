"""Build DATABASES and REPLICA_ROUTER from environment variables with django-environ.

Needs the ``env`` extra (``pip install django-replica-router[env]``)::

    import environ
    from replica_router.env import database_settings

    DATABASES, REPLICA_ROUTER = database_settings(environ.Env())

with, for example::

    DATABASE_URL=postgres://app:secret@db-primary:5432/app?pool_max_size=20
    REPLICA_URLS=postgres://app:secret@db-r1/app?weight=3,postgres://app:secret@db-r2/app

Error messages name the variable and the replica, never the URL: it usually
holds a password.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from replica_router.conf import CONNECT_TIMEOUT, FAILOVER_ENGINE, MAX_WEIGHT
from replica_router.exceptions import ReplicaRouterConfigError

if TYPE_CHECKING:
    import environ  # type: ignore[import-untyped]  # django-environ ships no types

__all__ = ["database_settings"]

PRIMARY_ALIAS = "default"
#: How long a read waits for a pooled replica connection before failing over,
#: instead of psycopg_pool's 30 s.
REPLICA_POOL_TIMEOUT = 1.0
#: libpq's TCP settings for a network partition, in which the peer's kernel
#: goes silent: keepalives end an idle connection after about 25 s (10 s idle,
#: then 3 probes 5 s apart), and ``tcp_user_timeout`` one whose sent data goes
#: unacknowledged for 25 s, instead of the operating system's defaults (2 hours
#: and about 15 minutes). Neither sees a hung server whose kernel still answers
#: (a SIGSTOPped postmaster): the cut-off handles that.
TCP_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}


def _harden(config: dict[str, Any], *, replica: bool) -> None:
    """Defaults that keep failures short: the failover engine and bounded waits."""
    if config.get("ENGINE") != "django.db.backends.postgresql":
        return  # PostGIS and others keep their own backend
    config["ENGINE"] = FAILOVER_ENGINE
    options = config.setdefault("OPTIONS", {})
    options.setdefault("connect_timeout", CONNECT_TIMEOUT)
    for key, value in TCP_OPTIONS.items():
        options.setdefault(key, value)
    pool = options.get("pool")
    if replica and isinstance(pool, dict):
        pool.setdefault("timeout", REPLICA_POOL_TIMEOUT)


# A comma starts a new URL only if a scheme follows it: a multi-host PostgreSQL
# URL (postgres://u:p@h1:5432,h2:5432/db) keeps its commas.
_URL_SEPARATOR = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _to_int(value: object) -> int:
    # django-environ has already turned digit-only strings into ints.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError


def _to_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError
    result = float(value)  # ValueError for a non-number
    if not (result > 0 and math.isfinite(result)):
        raise ValueError
    return result


# URL query parameter -> (key in OPTIONS["pool"], converter).
_POOL_PARAMS: dict[str, tuple[str, Callable[[object], int | float]]] = {
    "pool_min_size": ("min_size", _to_int),
    "pool_max_size": ("max_size", _to_int),
    "pool_timeout": ("timeout", _to_float),
}


def _redact(text: str, url: str) -> str:
    """Remove the URL's password (raw and decoded) from a message."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")}:
        if secret:
            text = text.replace(secret, "********")
    return text


def _parse_url(url: str, where: str) -> dict[str, Any]:
    """django-environ's parse of one URL; errors and warnings never show the password."""
    from environ import Env

    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in Env.DB_SCHEMES:
        raise ReplicaRouterConfigError(
            f"{where} is not a database URL: its scheme is {scheme!r}, expected one of "
            f"{', '.join(sorted(Env.DB_SCHEMES))} (for example postgres://user:password@host/db)."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config: dict[str, Any] = Env.db_url_config(url)
        except Exception as exc:
            detail = _redact(f"{type(exc).__name__}: {exc}", url)
            raise ReplicaRouterConfigError(f"{where} could not be parsed ({detail}).") from None
    for warning in caught:
        warnings.warn(
            f"{where}: {_redact(str(warning.message), url)}", warning.category, stacklevel=3
        )
    return config


def _take_params(config: dict[str, Any], where: str, *, replica: bool) -> int:
    """Move our query parameters out of OPTIONS; return the weight (1 if absent)."""
    options: dict[str, Any] = dict(config.get("OPTIONS", {}))
    weight = 1
    if "weight" in options:
        raw = options.pop("weight")
        if not replica:
            raise ReplicaRouterConfigError(
                f"{where} has a weight parameter; only replica URLs take one."
            )
        try:
            weight = _to_int(raw)
            if weight > MAX_WEIGHT:
                raise ValueError
        except ValueError:
            raise ReplicaRouterConfigError(
                f"{where} has weight={raw!s}; a weight must be an int from 0 to {MAX_WEIGHT}."
            ) from None
    pool: dict[str, int | float] = {}
    for param, (key, convert) in _POOL_PARAMS.items():
        if param not in options:
            continue
        raw = options.pop(param)
        try:
            value = convert(raw)
            if isinstance(value, int) and value < (0 if key == "min_size" else 1):
                raise ValueError
        except ValueError:
            expected = "a positive number of seconds" if key == "timeout" else "an int"
            raise ReplicaRouterConfigError(
                f"{where} has {param}={raw!s}; it must be {expected}."
            ) from None
        pool[key] = value
    if pool:
        existing = options.get("pool")
        options["pool"] = {**(existing if isinstance(existing, dict) else {}), **pool}
    if options or "OPTIONS" in config:
        config["OPTIONS"] = options
    return weight


def database_settings(
    env: environ.Env,
    *,
    primary_var: str = "DATABASE_URL",
    replicas_var: str = "REPLICA_URLS",
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Return ``(DATABASES, REPLICA_ROUTER)`` read from two environment variables.

    ``primary_var`` holds the primary's URL (alias ``"default"``); ``replicas_var``
    holds comma-separated replica URLs (aliases ``"replica_1"``, ``"replica_2"``,
    ...; optional). Besides django-environ's own parameters, a URL may carry
    ``pool_min_size``, ``pool_max_size`` and ``pool_timeout``, which become
    ``OPTIONS["pool"]``, and a replica URL may carry ``weight`` (default 1). Each
    replica gets ``TEST = {"MIRROR": "default"}``.

    PostgreSQL aliases get the failover engine ``replica_router.backends.postgresql``,
    ``OPTIONS["connect_timeout"] = 2`` unless the URL sets one, and a pooled
    replica a pool ``timeout`` of 1 s unless the URL sets ``pool_timeout``: a
    read must not wait 30 s for a replica that is gone.

    Nothing global is changed. Raises
    :class:`~replica_router.exceptions.ReplicaRouterConfigError` for a missing
    primary URL or a bad value, naming the variable and the replica but never
    showing the URL, which may hold a password.
    """
    primary_url = env.str(primary_var, default="")
    if not primary_url:
        raise ReplicaRouterConfigError(
            f"Set the {primary_var} environment variable to the primary database's URL."
        )
    primary = _parse_url(primary_url, primary_var)
    _take_params(primary, primary_var, replica=False)
    _harden(primary, replica=False)
    databases: dict[str, dict[str, Any]] = {PRIMARY_ALIAS: primary}

    replicas: dict[str, int] = {}
    raw_replicas = env.str(replicas_var, default="")
    urls = [url.strip() for url in _URL_SEPARATOR.split(raw_replicas)]
    for index, url in enumerate((u for u in urls if u), start=1):
        where = f"{replicas_var} (replica {index})"
        config = _parse_url(url, where)
        weight = _take_params(config, where, replica=True)
        _harden(config, replica=True)
        config["TEST"] = {**config.get("TEST", {}), "MIRROR": PRIMARY_ALIAS}
        alias = f"replica_{index}"
        databases[alias] = config
        replicas[alias] = weight

    return databases, {"PRIMARY": PRIMARY_ALIAS, "REPLICAS": replicas}
