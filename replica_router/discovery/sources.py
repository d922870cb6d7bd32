"""Where a list of replicas comes from: DNS records, Patroni, or a callable of the site's.

A source answers with :class:`Answer`: the replicas it lists, each a
:class:`Member` (an address and a port), and how long the answer may be kept
(a DNS record's TTL). It raises :class:`DiscoveryFailed` when it cannot answer;
what to do then (keep the last list) is :mod:`~replica_router.discovery.discoverer`'s.
"""

from __future__ import annotations

import importlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import psycopg.conninfo

from replica_router.discovery.config import DiscoveryConfig

__all__ = [
    "Answer",
    "CallableSource",
    "DiscoveryFailed",
    "DnsSource",
    "Member",
    "PatroniSource",
    "Source",
    "source_for",
]


class DiscoveryFailed(Exception):
    """The source could not say which replicas there are."""


class Member(NamedTuple):
    """One replica a source lists."""

    #: What libpq connects to: an address, or a name it resolves itself.
    host: str
    #: None: the template's port.
    port: int | None
    #: The name the source gave it (an SRV target), for display.
    name: str


class Answer(NamedTuple):
    members: tuple[Member, ...]
    #: Seconds the answer may be kept (a DNS TTL); None if the source says nothing.
    ttl: float | None


class Source(Protocol):
    #: "dns", "patroni" or "callable", for display.
    kind: str

    def resolve(self) -> Answer: ...


class DnsSource:
    """SRV records (each names a target and a port), or A/AAAA records (addresses).

    An SRV target is resolved to its addresses by the same servers, so that
    libpq, which asks the system's resolver, needs no record of its own.
    """

    kind = "dns"

    def __init__(
        self,
        name: str,
        *,
        record: str = "SRV",
        port: int | None = None,
        nameservers: Iterable[tuple[str, int]] = (),
        timeout: float = 2.0,
    ) -> None:
        import dns.nameserver
        import dns.resolver

        self.name = name
        self.record = record
        self.port = port
        servers = list(nameservers)
        self._resolver = dns.resolver.Resolver(configure=not servers)
        if servers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in servers
            ]
        self._resolver.lifetime = timeout

    def resolve(self) -> Answer:
        import dns.exception

        try:
            if self.record != "SRV":
                addresses, ttl = self._addresses(self.name, (self.record,))
                return Answer(tuple(Member(a, self.port, self.name) for a in addresses), ttl)
            answer = self._resolver.resolve(self.name, "SRV")
            ttls = [float(answer.rrset.ttl)] if answer.rrset is not None else []
            members: list[Member] = []
            for record in sorted(answer, key=lambda r: (r.priority, -r.weight, str(r.target))):
                target = record.target.to_text().rstrip(".")
                # AAAA only for a target with no A record: some servers
                # refuse, rather than answer empty, the family a name lacks.
                addresses, ttl = self._addresses(target, ("A",))
                if not addresses:
                    addresses, ttl = self._addresses(target, ("AAAA",))
                if ttl is not None:
                    ttls.append(ttl)
                members.extend(Member(address, int(record.port), target) for address in addresses)
        except dns.exception.DNSException as exc:
            raise DiscoveryFailed(f"{self.record} {self.name}: {exc}") from exc
        return Answer(tuple(dict.fromkeys(members)), min(ttls, default=None))

    def _addresses(self, name: str, records: tuple[str, ...]) -> tuple[list[str], float | None]:
        import dns.resolver

        addresses: list[str] = []
        ttls: list[float] = []
        for record in records:
            try:
                answer = self._resolver.resolve(name, record)
            except dns.resolver.NoAnswer:  # a name with A records only, say
                continue
            if answer.rrset is not None:
                ttls.append(float(answer.rrset.ttl))
            addresses.extend(item.address for item in answer)
        return addresses, min(ttls, default=None)


class PatroniSource:
    """The replicas of a Patroni cluster, from its REST API's ``GET /cluster``.

    Any member answers for the whole cluster, so the URLs are asked in turn
    until one answers. A member is listed while Patroni says it is a running
    replica (``replica``, ``sync_standby`` or ``quorum_standby``) without the
    ``noloadbalance`` tag, Patroni's own way to keep reads off a node. The
    leader is not listed: writes find it through the primary's settings.
    """

    kind = "patroni"
    #: The roles of members that take reads, and the states in which they do.
    READ_ROLES = frozenset({"replica", "sync_standby", "quorum_standby"})
    RUNNING = frozenset({"running", "streaming"})

    def __init__(self, urls: Iterable[str], *, timeout: float = 2.0) -> None:
        self.urls = tuple(urls)
        self.timeout = timeout

    def resolve(self) -> Answer:
        errors = []
        for url in self.urls:
            try:
                with urllib.request.urlopen(f"{url}/cluster", timeout=self.timeout) as response:
                    document = json.load(response)
                return Answer(tuple(self._members(document)), None)
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                errors.append(f"{url}: {_reason(exc)}")
        raise DiscoveryFailed("; ".join(errors) or "no URL to ask")

    def _members(self, document: Any) -> Iterable[Member]:
        members = document["members"]
        if not isinstance(members, list):
            raise ValueError("'members' is not a list")
        for member in members:
            tags = member.get("tags") or {}
            if (
                member.get("role") in self.READ_ROLES
                and member.get("state") in self.RUNNING
                and not tags.get("noloadbalance")
            ):
                yield Member(str(member["host"]), int(member["port"]), str(member["name"]))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, (KeyError, AttributeError, TypeError, ValueError)):
        return f"not a Patroni /cluster document ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


class CallableSource:
    """A function of the site's that returns the replicas.

    Each item is ``"host"``, ``"host:port"``, a ``postgresql://`` URL or a
    libpq conninfo string (only the host and port are used: the rest comes
    from the template), or a ``(host, port)`` pair.
    """

    kind = "callable"

    def __init__(self, target: Callable[[], Any] | str) -> None:
        self._target = target

    def resolve(self) -> Answer:
        try:
            function = _import(self._target) if isinstance(self._target, str) else self._target
            items = list(function())
            members = tuple(dict.fromkeys(_member(item) for item in items))
        except Exception as exc:
            raise DiscoveryFailed(f"{_name(self._target)}: {type(exc).__name__}: {exc}") from exc
        return Answer(members, None)


def _import(path: str) -> Callable[[], Any]:
    module, _, attribute = path.rpartition(".")
    function: Callable[[], Any] = getattr(importlib.import_module(module), attribute)
    return function


def _name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))


def _member(item: object) -> Member:
    if isinstance(item, tuple) and len(item) == 2:
        host, port = item
        return Member(str(host), None if port is None else int(port), str(host))
    if not isinstance(item, str) or not item:
        raise ValueError(f"{item!r} is not a replica: use 'host:port' or a postgresql:// URL")
    if "://" in item or "=" in item:
        try:
            params = psycopg.conninfo.conninfo_to_dict(item)
        except psycopg.Error:
            # Not psycopg's message: it may quote the URL, password and all.
            raise ValueError("a replica URL or conninfo string could not be parsed") from None
        host = str(params.get("host") or "")
        if not host or "," in host:
            raise ValueError("a replica URL must name one host")
        port = params.get("port")
        return Member(host, int(port) if port else None, host)
    host, sep, port = item.rpartition(":")
    if not sep:
        return Member(item, None, item)
    return Member(host, int(port), host)


def source_for(config: DiscoveryConfig) -> Source:
    """The source ``config`` names."""
    if config.source == "dns":
        assert config.name is not None
        return DnsSource(
            config.name,
            record=config.record,
            port=config.port,
            nameservers=config.nameservers,
            timeout=config.timeout_seconds,
        )
    if config.source == "patroni":
        return PatroniSource(config.urls, timeout=config.timeout_seconds)
    assert config.callable is not None
    return CallableSource(config.callable)
