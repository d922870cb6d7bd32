"""Replica discovery: replicas that come and go while the site runs.

With ``REPLICA_ROUTER["DISCOVERY"]`` set, the process that probes (each
process, or the one prober of a fleet under ``HEALTH_SHARING``) asks the
source for the replica list as part of its health turns, and every process
follows the list it finds or reads: :class:`Discovery` ties the asking
(:mod:`.discoverer`) to the replica set (:mod:`.topology`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from replica_router import cutoff
from replica_router.backends.postgresql import pools
from replica_router.discovery.config import DiscoveryConfig
from replica_router.discovery.discoverer import Discoverer, Found
from replica_router.discovery.sources import Source, source_for
from replica_router.discovery.topology import Listing, Topology
from replica_router.health.model import Discovered

__all__ = ["Discovery"]


class Discovery:
    """One process's discovery: the asking (as the prober) and the following."""

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        primary: str,
        static: Mapping[str, int],
        source: Source | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self.discoverer = Discoverer(
            source or source_for(config),
            refresh=config.refresh_seconds,
            jitter=config.jitter_seconds,
            monotonic=monotonic,
            clock=clock,
            rng=rng,
        )
        self.topology = Topology(
            static=static,
            primary=primary,
            template=config.template or primary,
            weight=config.weight,
            warmup=config.warmup_seconds,
            drain=config.drain_seconds,
            source=self.discoverer.source.kind,
        )
        self._asking: threading.Thread | None = None
        #: Called from the asking thread when an answer changed the list (the
        #: monitor takes its next turn at once).
        self.on_change: Callable[[], None] | None = None
        #: The answer last applied to the topology.
        self._applied: Found | None = None

    def discover(self) -> bool:
        """As the prober: have the source asked if it is due; True if the
        replicas changed.

        The asking runs in a thread of its own: a DNS server that does not
        answer must not delay the health probes. Only the first ask is waited
        for (up to ``TIMEOUT_SECONDS``), since until it answers there is no
        discovered replica to route to.
        """
        asking = self._asking
        if (asking is None or not asking.is_alive()) and self.discoverer.due():
            asking = self._asking = threading.Thread(
                target=self._ask, name="replica-router-discovery", daemon=True
            )
            asking.start()
            if self._applied is None:
                asking.join(self.config.timeout_seconds + 0.5)
        found = self.discoverer.found
        if found is self._applied:
            return False
        self._applied = found
        listing = self.topology.listing.follow(
            found,
            default_port=self.topology.default_port(),
            static=self.topology.static_addresses(),
            now=self._clock(),
        )
        return self.topology.apply(listing)

    def _ask(self) -> None:
        if self.discoverer.refresh() and self.on_change is not None:
            self.on_change()

    def after_fork(self) -> None:
        """In a forked child: the parent's asking thread did not come along."""
        self._asking = None

    def adopt(self, data: Mapping[str, Any]) -> bool:
        """Follow the listing the fleet's prober published; True if the replicas changed."""
        return self.topology.apply(Listing.from_json(data))

    def shared(self) -> dict[str, Any]:
        """The listing, for the fleet's document."""
        return self.topology.listing.as_json()

    def state(self) -> Discovered:
        """For the snapshot: the source, the list's size and history."""
        listing = self.topology.listing
        found = listing.found
        return Discovered(
            source=listing.source,
            replicas=len(listing.joined),
            changed_at=found.changed_at,
            answered_at=found.answered_at,
            error=found.error,
        )

    def rotation_weights(self, serving: Mapping[str, int]) -> dict[str, int]:
        return self.topology.rotation_weights(serving, self._clock())

    def retire(self) -> None:
        """Retire what has drained; remove the aliases left with no connection."""
        self.topology.retire(
            self._clock(),
            open_connections=cutoff.registry.count,
            close_pool=pools.close_pool_soon,
            closing=pools.closing_aliases,
        )

    def stop(self) -> None:
        """The routing is being replaced: retire every discovered replica now."""
        self.topology.retire_all(close_pool=pools.close_pool_soon)
