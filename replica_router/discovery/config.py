"""``REPLICA_ROUTER["DISCOVERY"]``: where replicas are found while the site runs.

``None`` (the default) keeps the replica list to ``REPLICAS``. A dict names a
source and how to follow it; :func:`parse_discovery` reads it into a
:class:`DiscoveryConfig`, reporting the first problem as a system check error
(``replica_router.E012``) with a hint.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from replica_router.conf_values import (
    ConfigProblem,
    Invalid,
    parse_positive_float,
    parse_positive_int,
    setting_key,
    show,
)

__all__ = [
    "DISCOVERY_DEFAULTS",
    "SOURCES",
    "DiscoveryConfig",
    "dnspython_installed",
    "parse_discovery",
]

#: The sources a replica list can come from.
SOURCES: Final = ("dns", "patroni", "callable")
RECORDS: Final = ("SRV", "A", "AAAA")

DISCOVERY_DEFAULTS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "SOURCE": None,
        "NAME": None,
        "RECORD": "SRV",
        "NAMESERVERS": (),
        "PORT": None,
        "CALLABLE": None,
        "URLS": (),
        "TEMPLATE": None,
        "WEIGHT": 1,
        "REFRESH_SECONDS": 60.0,
        "JITTER_SECONDS": 10.0,
        "TIMEOUT_SECONDS": 2.0,
        "WARMUP_SECONDS": 30.0,
        "DRAIN_SECONDS": 120.0,
    }
)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """The validated ``DISCOVERY`` dict."""

    source: str
    #: The DNS name to resolve (``source == "dns"``).
    name: str | None
    record: str
    #: ``(address, port)`` of each DNS server to ask; empty for the system's.
    nameservers: tuple[tuple[str, int], ...]
    #: The port of replicas found by A/AAAA records; None for the template's.
    port: int | None
    #: What returns the replicas (``source == "callable"``): a callable or its dotted path.
    callable: Callable[[], Any] | str | None
    #: Patroni REST API base URLs (``source == "patroni"``), asked in turn.
    urls: tuple[str, ...]
    #: The alias whose settings a discovered replica copies (None: the primary).
    template: str | None
    weight: int
    refresh_seconds: float
    jitter_seconds: float
    timeout_seconds: float
    warmup_seconds: float
    drain_seconds: float


def dnspython_installed() -> bool:
    """Whether dnspython (the ``dns`` extra) can be imported."""
    try:
        return importlib.util.find_spec("dns.resolver") is not None
    except (ImportError, ValueError):
        return False


def _key(name: str) -> str:
    return f"{setting_key('DISCOVERY')}[{name!r}]"


def _problem(message: str, hint: str) -> Invalid:
    return Invalid(ConfigProblem("replica_router.E012", message, hint))


def _nameserver(value: object) -> tuple[str, int]:
    """``"10.0.0.2"``, ``"127.0.0.1:5353"``, ``"[::1]:53"`` or ``"::1"`` as (address, port)."""
    if not isinstance(value, str) or not value:
        raise ValueError
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:  # IPv4 without a port, or a bare IPv6 address
        host, port = value, "53"
    number = int(port)
    if not host or not 0 < number < 65536:
        raise ValueError
    return host, number


def _urls(value: object, *, required: bool) -> tuple[str, ...]:
    """Patroni REST API base URLs: ``http(s)://host:port``, without credentials."""
    urls = () if value is None else value
    if isinstance(urls, str) or not isinstance(urls, (list, tuple)):
        urls = [urls]
    parsed = tuple(urls)
    good = all(
        isinstance(url, str)
        and url.startswith(("http://", "https://"))
        and "@" not in url.split("/", 3)[2]
        and url.split("/", 3)[2]
        for url in parsed
    )
    if not good or (required and not parsed):
        raise _problem(
            f"{_key('URLS')} must be a list of http:// or https:// URLs of Patroni's REST "
            "API, with no user or password in them.",
            "For example ['http://10.0.0.1:8008', 'http://10.0.0.2:8008']: any member "
            "answers GET /cluster for the whole cluster, without authentication.",
        )
    return tuple(url.rstrip("/") for url in parsed)


def _seconds(name: str, raw: Mapping[str, Any], *, zero_ok: bool = False) -> float:
    value = raw.get(name, DISCOVERY_DEFAULTS[name])
    if zero_ok and value == 0 and not isinstance(value, bool):
        return 0.0
    try:
        return parse_positive_float(name, value, DISCOVERY_DEFAULTS[name])
    except Invalid:
        expected = "a number of seconds >= 0" if zero_ok else "a positive number of seconds"
        raise _problem(
            f"{_key(name)} must be {expected}, not {show(value)}.",
            f"Remove it to use the default {DISCOVERY_DEFAULTS[name]!r}.",
        ) from None


def parse_discovery(name: str, value: object, default: object) -> DiscoveryConfig | None:
    """The parser of ``DISCOVERY`` (see :mod:`replica_router.conf_values`)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _problem(
            f"{setting_key(name)} must be None or a dict, not {show(value)}.",
            "For example {'SOURCE': 'dns', 'NAME': '_postgresql._tcp.replicas.example.com'}.",
        )
    unknown = [key for key in value if key not in DISCOVERY_DEFAULTS]
    if unknown:
        raise _problem(
            f"{setting_key(name)} has an unknown key {show(unknown[0])}.",
            f"The valid keys are {', '.join(DISCOVERY_DEFAULTS)}.",
        )
    source = value.get("SOURCE")
    if source not in SOURCES:
        raise _problem(
            f"{_key('SOURCE')} must be one of {', '.join(map(repr, SOURCES))}, not {show(source)}.",
            "Use 'dns' for DNS SRV or A records, 'patroni' for a Patroni cluster's "
            "REST API, 'callable' for a function of yours that returns the replicas.",
        )
    dns_name = value.get("NAME")
    if source == "dns":
        if not isinstance(dns_name, str) or not dns_name:
            raise _problem(
                f"{_key('NAME')} must be the DNS name to resolve, not {show(dns_name)}.",
                "For example '_postgresql._tcp.replicas.example.com' for SRV records.",
            )
        if not dnspython_installed():
            raise _problem(
                f"{_key('SOURCE')} is 'dns', but dnspython is not installed.",
                "Install the dns extra: pip install 'django-replica-router[dns]'.",
            )
    record = value.get("RECORD", DISCOVERY_DEFAULTS["RECORD"])
    if record not in RECORDS:
        raise _problem(
            f"{_key('RECORD')} must be one of {', '.join(map(repr, RECORDS))}, not {show(record)}.",
            "SRV records carry each replica's port; A and AAAA use PORT, or the template's.",
        )
    raw_servers = value.get("NAMESERVERS", ())
    try:
        if isinstance(raw_servers, str):
            raise ValueError
        nameservers = tuple(_nameserver(server) for server in raw_servers)
    except (TypeError, ValueError):
        raise _problem(
            f"{_key('NAMESERVERS')} must be a list of 'address' or 'address:port' strings, "
            f"not {show(raw_servers)}.",
            "For example ['10.0.0.2', '127.0.0.1:5353'], or remove it to ask the system's.",
        ) from None
    port = value.get("PORT")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise _problem(
            f"{_key('PORT')} must be a port number or None, not {show(port)}.",
            "Remove it to use the template's PORT.",
        )
    found_by = value.get("CALLABLE")
    if source == "callable" and not (callable(found_by) or isinstance(found_by, str) and found_by):
        raise _problem(
            f"{_key('CALLABLE')} must be a callable or its dotted path, not {show(found_by)}.",
            "For example 'myproject.db.replica_urls', a function that returns a list of "
            "'host:port' strings or postgresql:// URLs.",
        )
    urls = _urls(value.get("URLS", ()), required=source == "patroni")
    template = value.get("TEMPLATE")
    if template is not None and (not isinstance(template, str) or not template):
        raise _problem(
            f"{_key('TEMPLATE')} must be a database alias or None, not {show(template)}.",
            "Name the alias whose settings each discovered replica copies, or remove it "
            "to copy the primary's.",
        )
    weight = value.get("WEIGHT", DISCOVERY_DEFAULTS["WEIGHT"])
    try:
        weight = parse_positive_int("WEIGHT", weight, 1)
    except Invalid:
        raise _problem(
            f"{_key('WEIGHT')} must be a positive int, not {show(weight)}.",
            "Every discovered replica gets this weight; remove it for 1.",
        ) from None
    return DiscoveryConfig(
        source=str(source),
        name=dns_name if isinstance(dns_name, str) else None,
        record=str(record),
        nameservers=nameservers,
        port=port,
        callable=found_by,
        urls=urls,
        template=template,
        weight=weight,
        refresh_seconds=_seconds("REFRESH_SECONDS", value),
        jitter_seconds=_seconds("JITTER_SECONDS", value, zero_ok=True),
        timeout_seconds=_seconds("TIMEOUT_SECONDS", value),
        warmup_seconds=_seconds("WARMUP_SECONDS", value, zero_ok=True),
        drain_seconds=_seconds("DRAIN_SECONDS", value, zero_ok=True),
    )
