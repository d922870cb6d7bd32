"""The replicas a process serves from while discovery adds and removes them.

A :class:`Listing` is what discovery has found, in a form a fleet shares: each
discovered replica's alias, address and when it joined, and each removed one
with when it left. Every process applies a listing to itself
(:meth:`Topology.apply`), whether it discovered it or read it from the
fleet's health store:

* a replica that joins becomes a database alias, its settings copied from the
  template alias with its own ``HOST`` and ``PORT``, and is probed; it serves
  once it is found healthy, its share ramping up over ``WARMUP_SECONDS``
  (Vitess's warm-up) so that its cold cache is not handed a full share at once;
* a replica that leaves gets no new read at once; its reads in flight finish.
  After ``DRAIN_SECONDS`` it is retired: its pool is closed, and the failover
  engine closes each thread's connection to it at that thread's next request
  boundary. Once none is left, the alias is removed.

When the routing itself is replaced (the settings change, a test ends), every
discovered replica is retired at once, and its alias goes when the last
connection to it closes (:func:`remove_orphans`): a test that asks for
``databases="__all__"`` afterwards must not find a replica it never set up.

Aliases are added to and removed from ``django.db.connections.settings`` by
replacing that dict, never by changing it in place: a thread iterating it
(``close_old_connections`` at every request) keeps the dict it started with.
``settings.DATABASES`` is left as the settings wrote it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from django.db import connections

from replica_router import cutoff
from replica_router.backends.postgresql import pools
from replica_router.discovery.discoverer import Found
from replica_router.discovery.sources import Member

__all__ = [
    "Joined",
    "Listing",
    "Topology",
    "alias_for",
    "is_retired",
    "remove_orphans",
    "retired_aliases",
]

logger = logging.getLogger("replica_router")

#: The share a replica starts its warm-up with.
WARMUP_START: Final = 0.1
#: Weights are multiplied by this while a replica warms up, so that a tenth
#: of a weight of 1 is still a whole number.
WARMUP_SCALE: Final = 10
#: libpq options that name the node to pick among several: a replica copies
#: its template's settings, and must not refuse to be a standby.
_NODE_OPTIONS: Final = ("target_session_attrs", "load_balance_hosts", "hostaddr")


def alias_for(member: Member, default_port: str) -> str:
    """A discovered replica's database alias: its address and port."""
    port = member.port if member.port is not None else default_port or "5432"
    return f"{member.host}:{port}"


@dataclass(frozen=True, slots=True)
class Joined:
    """A discovered replica, as a fleet shares it."""

    host: str
    port: int | None
    name: str
    #: Wall-clock time it joined; 0.0 for one listed when discovery started,
    #: which serves at full share at once.
    joined_at: float


@dataclass(frozen=True, slots=True)
class Listing:
    """What discovery found, applied by every process of a fleet alike."""

    source: str
    joined: Mapping[str, Joined] = field(default_factory=dict)
    #: Alias -> wall-clock time it left the list.
    removed: Mapping[str, float] = field(default_factory=dict)
    found: Found = Found((), None, None, None)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "joined": {
                alias: [j.host, j.port, j.name, j.joined_at] for alias, j in self.joined.items()
            },
            "removed": dict(self.removed),
            "changed_at": self.found.changed_at,
            "answered_at": self.found.answered_at,
            "error": self.found.error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Listing:
        return cls(
            source=str(data["source"]),
            joined={
                str(alias): Joined(
                    str(host), None if port is None else int(port), str(name), float(at)
                )
                for alias, (host, port, name, at) in data["joined"].items()
            },
            removed={str(alias): float(at) for alias, at in data["removed"].items()},
            found=Found((), data.get("changed_at"), data.get("answered_at"), data.get("error")),
        )

    def follow(
        self, found: Found, *, default_port: str, static: set[tuple[str, str]], now: float
    ) -> Listing:
        """The listing after discovery found ``found`` (the prober's step).

        A member that is a node of the settings already (same host and port)
        is not added again. The first list found joins at full share.
        """
        first = self.found.changed_at is None
        members: dict[str, Member] = {}
        for member in found.members:
            port = str(member.port) if member.port is not None else default_port
            if (member.host, port) not in static:
                members.setdefault(alias_for(member, default_port), member)
        joined = {
            alias: self.joined.get(alias)
            or Joined(member.host, member.port, member.name, 0.0 if first else now)
            for alias, member in members.items()
        }
        removed = {alias: at for alias, at in self.removed.items() if alias not in joined}
        removed.update({alias: now for alias in self.joined if alias not in joined})
        return Listing(self.source, joined, removed, found)


#: Aliases whose connections the failover engine closes at the next request
#: boundary; read on every ``close_if_unusable_or_obsolete``.
_retired: frozenset[str] = frozenset()
#: Retired aliases whose topology is gone, so that none of its turns removes them.
_orphans: frozenset[str] = frozenset()
_lock = threading.Lock()


def is_retired(alias: str) -> bool:
    return alias in _retired


def retired_aliases() -> frozenset[str]:
    return _retired


def _set_retired(aliases: frozenset[str]) -> None:
    global _retired
    _retired = aliases


def remove_orphans() -> None:
    """Remove each alias retired with its routing that has no connection left.

    Run when one of their connections closes, when a pool closing for them
    ends, and when the routing is replaced.
    """
    global _orphans
    if not _orphans:
        return
    busy = pools.closing_aliases()
    with _lock:
        gone = {a for a in _orphans if a not in busy and cutoff.registry.count(a) == 0}
        if not gone:
            return
        _orphans -= gone
        _set_retired(_retired - gone)
        connections.settings = {
            alias: conf for alias, conf in connections.settings.items() if alias not in gone
        }
    for alias in sorted(gone):
        logger.info("replica_router: retired replica %s; its alias is removed", alias)


class Topology:
    """One process's replica set: ``REPLICAS`` plus what a :class:`Listing` adds.

    ``template`` is the alias whose settings a discovered replica copies;
    ``weight`` each one's weight.
    """

    def __init__(
        self,
        *,
        static: Mapping[str, int],
        primary: str,
        template: str,
        weight: int,
        warmup: float,
        drain: float,
        source: str,
    ) -> None:
        self.static = dict(static)
        self.primary = primary
        self.template = template
        self.weight = weight
        self.warmup = warmup
        self.drain = drain
        self.listing = Listing(source)
        #: Aliases this process added to ``connections.settings``.
        self.installed: set[str] = set()

    def default_port(self) -> str:
        return str(connections.settings[self.template].get("PORT") or "5432")

    def static_addresses(self) -> set[tuple[str, str]]:
        addresses = set()
        for alias in (self.primary, *self.static):
            conf = connections.settings.get(alias, {})
            addresses.add((str(conf.get("HOST") or ""), str(conf.get("PORT") or "5432")))
        return addresses

    def weights(self) -> dict[str, int]:
        """Every replica's weight: the settings' first, then the discovered ones."""
        weights = dict(self.static)
        weights.update(dict.fromkeys(self.listing.joined, self.weight))
        return weights

    def source_of(self, alias: str) -> str:
        return self.listing.source if alias in self.listing.joined else "settings"

    def rotation_weights(self, serving: Mapping[str, int], now: float) -> dict[str, int]:
        """``serving``'s weights with each warming replica's share ramped by ``now``."""
        shares = {
            alias: self._share(alias, now) for alias in serving if alias in self.listing.joined
        }
        if all(share >= 1.0 for share in shares.values()):
            return dict(serving)
        return {
            alias: max(1, round(weight * WARMUP_SCALE * shares.get(alias, 1.0)))
            for alias, weight in serving.items()
        }

    def warming(self, now: float) -> bool:
        return any(self._share(alias, now) < 1.0 for alias in self.listing.joined)

    def _share(self, alias: str, now: float) -> float:
        joined_at = self.listing.joined[alias].joined_at
        if self.warmup <= 0 or joined_at <= 0:
            return 1.0
        ramp = max(0.0, now - joined_at) / self.warmup
        return min(1.0, WARMUP_START + (1 - WARMUP_START) * ramp)

    # -- applying a listing ------------------------------------------------

    def apply(self, listing: Listing) -> bool:
        """Take ``listing`` in: add the aliases it adds. True if the replicas changed."""
        changed = set(listing.joined) != set(self.listing.joined)
        if _retired & listing.joined.keys():  # back before its alias was removed
            with _lock:
                _set_retired(_retired - listing.joined.keys())
        for alias in listing.joined.keys() - self.installed:
            self._install(alias, listing.joined[alias])
        for alias in sorted(listing.joined.keys() - self.listing.joined.keys()):
            logger.info("replica_router: discovered replica %s", alias)
        for alias in sorted(self.listing.joined.keys() - listing.joined.keys()):
            logger.info(
                "replica_router: replica %s left the list; it is drained for %gs", alias, self.drain
            )
        self.listing = listing
        return changed

    def retire(self, now: float, *, open_connections: Any, close_pool: Any, closing: Any) -> None:
        """Retire the replicas drained for ``DRAIN_SECONDS``, and remove the
        aliases of retired replicas that have no connection left."""
        due = {
            alias
            for alias, left_at in self.listing.removed.items()
            if alias in self.installed and now - left_at >= self.drain
        }
        if due - _retired:
            with _lock:
                _set_retired(_retired | due)
            for alias in sorted(due):
                close_pool(alias)
        closing_now = set(closing())
        gone = {alias for alias in due if alias not in closing_now and open_connections(alias) == 0}
        if gone:
            self._uninstall(gone)

    def _install(self, alias: str, joined: Joined) -> None:
        template = connections.settings[self.template]
        entry = dict(template)
        entry["HOST"] = joined.host
        if joined.port is not None:
            entry["PORT"] = str(joined.port)
        options = {k: v for k, v in template.get("OPTIONS", {}).items() if k not in _NODE_OPTIONS}
        entry["OPTIONS"] = options
        entry["TEST"] = {**template.get("TEST", {}), "MIRROR": None}
        global _orphans
        with _lock:
            connections.settings = {**connections.settings, alias: entry}
            _orphans -= {alias}
            _set_retired(_retired - {alias})
        self.installed.add(alias)

    def _uninstall(self, aliases: set[str]) -> None:
        connections.settings = {
            alias: conf for alias, conf in connections.settings.items() if alias not in aliases
        }
        self.installed -= aliases
        self.listing = Listing(
            self.listing.source,
            self.listing.joined,
            {a: at for a, at in self.listing.removed.items() if a not in aliases},
            self.listing.found,
        )
        with _lock:
            _set_retired(_retired - aliases)
        for alias in sorted(aliases):
            logger.info("replica_router: retired replica %s; its alias is removed", alias)

    def retire_all(self, *, close_pool: Any) -> None:
        """Retire every discovered replica now (the routing is being replaced).

        Each alias stays in ``connections.settings`` while a connection to it
        is open, so that each thread's is still closed at its next request
        boundary; :func:`remove_orphans` removes it after the last.
        """
        global _orphans
        if not self.installed:
            return
        with _lock:
            _set_retired(_retired | self.installed)
            _orphans |= self.installed
        for alias in sorted(self.installed):
            close_pool(alias, then=remove_orphans)
        self.installed = set()
        remove_orphans()
