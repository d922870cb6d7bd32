"""The system checks of ``DISCOVERY`` that need more than its own dict (E013)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from replica_router.conf import FAILOVER_ENGINE, parse_settings
from replica_router.conf_values import SETTING_NAME, setting_key

__all__ = ["check_discovery"]


def check_discovery(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E013: what discovery needs of the other settings."""
    config, _ = parse_settings(getattr(settings, SETTING_NAME, {}))
    discovery = config.discovery
    if discovery is None:
        return []
    key = f"{setting_key('DISCOVERY')}"
    if not config.health_checks:
        return [
            Error(
                f"{key} is set, but HEALTH_CHECKS is False.",
                hint="The health monitor's thread follows discovery, and probes each "
                "replica it finds before it serves: set HEALTH_CHECKS to True.",
                id="replica_router.E013",
            )
        ]
    template = discovery.template or config.primary
    databases = getattr(settings, "DATABASES", {})
    conf = databases.get(template) if isinstance(databases, Mapping) else None
    if not isinstance(conf, Mapping):
        return [
            Error(
                f"{key}['TEMPLATE'] names {template!r}, which is not in DATABASES.",
                hint="Name the alias whose settings each discovered replica copies "
                "(its HOST and PORT aside), or remove TEMPLATE to copy the primary's.",
                id="replica_router.E013",
            )
        ]
    if conf.get("ENGINE") != FAILOVER_ENGINE:
        return [
            Error(
                f"{key} copies the settings of {template!r}, whose ENGINE is "
                f"{conf.get('ENGINE')!r}, not the failover engine.",
                hint=f"Set ENGINE to {FAILOVER_ENGINE!r} on {template!r}: it closes each "
                "thread's connections to a removed replica, so that the alias can go.",
                id="replica_router.E013",
            )
        ]
    return []
