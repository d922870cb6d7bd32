"""Discovery in a fleet: the prober asks, the others follow its document.

Fake nodes and clocks as in test_fleet.py; the store is a real FileStore.
Against a real DNS server and cluster: tests/integration/test_discovery.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from replica_router.balancer import Balancer
from replica_router.discovery import Discovery
from replica_router.discovery.sources import Answer, Member
from replica_router.health.fleet import SharedMonitor
from replica_router.health.sharing import FileStore, Holder
from tests.unit.test_discovery import Scripted
from tests.unit.test_monitor import CAUGHT_UP, config_for, nodes  # noqa: F401

NEW = "10.0.0.9:5432"


@pytest.fixture(autouse=True)
def _own_aliases(monkeypatch):
    # Discovery adds aliases to connections.settings: give it a copy to change.
    monkeypatch.setattr(connections, "settings", dict(connections.settings))


@pytest.fixture
def source() -> Scripted:
    return Scripted(Answer((Member("10.0.0.9", 5432, "r9"),), ttl=None))


@pytest.fixture
def fleet(nodes, tmp_path, wall, mono, source) -> Iterator:  # noqa: F811
    nodes.probes[NEW] = CAUGHT_UP
    store = FileStore(tmp_path / "health", clock=wall)
    made: list[SharedMonitor] = []

    def make(me: Holder | None = None) -> SharedMonitor:
        config = config_for(
            DISCOVERY={"SOURCE": "callable", "CALLABLE": "unused.path", "WARMUP_SECONDS": 0}
        )
        assert config.discovery is not None
        discovery = Discovery(
            config.discovery,
            primary=config.primary,
            static=config.replicas,
            source=source,
            clock=wall,
            monotonic=mono,
        )
        monitor = SharedMonitor(
            config=config,
            store=store,
            mode="host",
            balancer=Balancer(weights=config.replicas),
            params_for=nodes.params_for,
            clock=wall,
            monotonic=mono,
            discovery=discovery,
        )
        if me is not None:  # another process, as far as the lease can tell
            monitor._me = me
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.stop()


def test_only_the_prober_asks_and_every_process_routes_to_what_it_found(fleet, source, mono):
    holder, reader = fleet(), fleet(Holder("web-9", 909))
    holder._turn()
    assert source.asked == 1
    assert NEW in connections.settings
    assert connections.settings[NEW]["HOST"] == "10.0.0.9"
    reader._turn()
    assert source.asked == 1  # the reader follows the holder's document
    assert NEW in reader.config.replicas
    mono.now += 60  # the next probe cycle is due
    holder._turn()
    reader._turn()
    assert dict(reader.balancer.weights) == {"replica_1": 1, "replica_2": 1, NEW: 1}
    assert reader.snapshot.node(NEW).source == "dns"  # the Scripted source's kind
    assert reader.snapshot.discovery is not None and reader.snapshot.discovery.replicas == 1


def test_a_replica_gone_from_the_list_leaves_every_process_and_is_retired_after_the_drain(
    fleet, source, mono, wall
):
    holder, reader = fleet(), fleet(Holder("web-9", 909))
    holder._turn()
    reader._turn()
    source.answers = [Answer((), ttl=None)]  # an empty answer keeps the list
    mono.now += 120
    holder._turn()
    holder.discovery._asking.join()
    holder._turn()
    assert NEW in holder.config.replicas
    source.answers = [Answer((Member("10.0.0.8", 5432, "r8"),), ttl=None)]
    mono.now += 120
    holder._turn()
    holder.discovery._asking.join()
    holder._turn()
    reader._turn()
    assert NEW not in holder.config.replicas and NEW not in reader.config.replicas
    assert NEW not in holder.balancer.rotation and NEW not in reader.balancer.rotation
    assert NEW in connections.settings  # drained first
    wall.now += 120  # DRAIN_SECONDS
    mono.now += 60  # the holder follows discovery in its probe cycles
    holder._turn()
    assert NEW not in connections.settings  # no connection was left to it
