"""What the monitor reads from Django's ``DATABASES``: connection keywords,
addresses, and the password that must never reach a message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connections

__all__ = ["address", "django_probe_params", "is_postgresql", "scrub"]


def django_probe_params(alias: str) -> dict[str, Any]:
    """psycopg connection keywords for ``alias``, built by Django's own backend.

    Read afresh each cycle, so the test runner's switch to the test database
    is followed. The pool options are dropped: probes never use the pool.
    """
    wrapper = connections.create_connection(alias)
    params: dict[str, Any] = wrapper.get_connection_params()
    for key in ("context", "cursor_factory", "prepare_threshold", "pool"):
        params.pop(key, None)
    return params


def _settings_of(alias: str) -> Mapping[str, Any]:
    try:
        settings_dict: Mapping[str, Any] = connections.settings.get(alias, {})
    except Exception:  # settings not configured: a standalone monitor
        return {}
    return settings_dict


def address(alias: str) -> tuple[str, str]:
    """``(host, port)`` of an alias as its settings give them, for display.

    An empty ``HOST`` stays empty: libpq then uses its Unix-socket directory,
    not ``localhost``. An empty ``PORT`` is libpq's default, 5432.
    """
    settings_dict = _settings_of(alias)
    return str(settings_dict.get("HOST") or ""), str(settings_dict.get("PORT") or "5432")


def is_postgresql(alias: str) -> bool:
    engine = str(_settings_of(alias).get("ENGINE", ""))
    return "postgresql" in engine or "postgis" in engine


def scrub(text: str | None, alias: str) -> str | None:
    """Remove the alias's password from a message, should a driver ever echo it."""
    if not text:
        return text
    password = str(_settings_of(alias).get("PASSWORD") or "")
    return text.replace(password, "********") if password else text
