"""The monitor of a process in a fleet, on fake clocks and fake nodes.

The store is a real :class:`FileStore`; the lease, the document and the
reports carry times from a wall clock the test moves, and the monitor's own
schedule runs on a monotonic clock the test moves too. Turns are taken by hand.
The fleet of real gunicorn workers is in tests/integration/test_fleet.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from replica_router.balancer import Balancer
from replica_router.health.fleet import SharedMonitor
from replica_router.health.model import State
from replica_router.health.sharing import FileStore, Holder
from tests.unit.test_monitor import FakeNodes, config_for, nodes  # noqa: F401

OTHER = Holder("web-9", 909)


@pytest.fixture
def store(tmp_path, wall) -> FileStore:
    return FileStore(tmp_path / "health", clock=wall)


@pytest.fixture
def fleet(nodes, store, wall, mono) -> Iterator[list[SharedMonitor]]:  # noqa: F811
    """Make monitors that share ``store``; stopped at the end."""
    made: list[SharedMonitor] = []

    def make() -> SharedMonitor:
        config = config_for()
        monitor = SharedMonitor(
            config=config,
            store=store,
            mode="host",
            balancer=Balancer(weights=config.replicas),
            params_for=nodes.params_for,
            clock=wall,
            monotonic=mono,
        )
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.stop()


def weights(monitor: SharedMonitor) -> dict[str, int]:
    assert monitor.balancer is not None
    return dict(monitor.balancer.weights)


def test_the_first_snapshot_already_says_who_probes(fleet):
    monitor = fleet()
    sharing = monitor.snapshot.sharing
    assert sharing is not None and sharing.mode == "host" and not sharing.probing_here
    assert weights(monitor) == {"replica_1": 1, "replica_2": 1}


def test_the_holder_probes_and_publishes_on_the_wall_clock(fleet, store, wall, mono, nodes):  # noqa: F811
    nodes.down.add("replica_2")
    holder = fleet()
    holder._turn()
    assert holder.snapshot.sharing is not None and holder.snapshot.sharing.probing_here
    document = store.read()
    assert document is not None
    assert document["published_at"] == wall.now
    assert document["holder"] == Holder.me().as_dict()
    assert {row["alias"]: row["state"] for row in document["nodes"]} == {
        "default": "healthy",
        "replica_1": "healthy",
        "replica_2": "down",
    }
    # The replica's lag was measured at the start of the cycle (monotonic),
    # passed on as the same instant on the wall clock.
    lag, at, in_rotation = document["freshness"]["replica_1"]
    assert (lag, at, in_rotation) == (0.0, wall.now, True)
    assert weights(holder) == {"replica_1": 1}
    # The next cycle is due one interval later, not before.
    cycles = holder.cycles
    mono.advance(holder.config.check_interval - 1)
    holder._turn()
    assert holder.cycles == cycles
    mono.advance(1)
    holder._turn()
    assert holder.cycles == cycles + 1


def test_a_reader_routes_by_the_holders_document_through_the_same_publish(
    fleet,
    store,
    wall,
    mono,
    nodes,  # noqa: F811
):
    nodes.down.add("replica_2")
    holder = fleet()
    holder._turn()
    published_at = wall.now
    # The holder stops renewing; another process takes the lease.
    wall.advance(holder.lease_seconds + 1)
    mono.advance(holder.lease_seconds + 1)
    assert store.claim(OTHER, 60)[0]

    reader = fleet()
    reader._turn()
    assert not reader.snapshot.sharing.probing_here
    assert reader.snapshot.sharing.prober_pid == OTHER.pid
    assert [(n.alias, n.state) for n in reader.snapshot.nodes] == [
        (n.alias, n.state) for n in holder.snapshot.nodes
    ]
    assert reader.down == holder.down == {"replica_2"}
    assert weights(reader) == weights(holder) == {"replica_1": 1}
    assert reader.replay_positions == holder.replay_positions
    # Freshness crosses processes on the wall clock: back on this monotonic
    # clock, it is the instant the holder measured it.
    assert set(reader.freshness) == {"replica_1"}
    freshness = reader.freshness["replica_1"]
    assert freshness.measured_at == pytest.approx(holder.freshness["replica_1"].measured_at)
    assert reader.snapshot.sharing.published_at == published_at


def test_a_reported_failure_holds_until_a_newer_document(fleet, store, wall, mono):
    holder = fleet()
    holder._turn()
    wall.advance(holder.lease_seconds + 1)
    assert store.claim(OTHER, 60)[0]
    reader = fleet()
    reader._turn()
    assert weights(reader) == {"replica_1": 1, "replica_2": 1}

    wall.advance(1)
    reader.report_failure("replica_1", "connection refused")
    assert reader.snapshot.node("replica_1").state is State.DOWN
    assert reader.down == {"replica_1"} and weights(reader) == {"replica_2": 1}
    reader._turn()  # sends the report to the store, and the old document keeps it out
    assert list(store.reports(["replica_1"])) == ["replica_1"]
    assert weights(reader) == {"replica_2": 1}

    # The prober publishes after the report: its word counts again.
    wall.advance(1)
    store.publish({**store.read(), "published_at": wall.now})
    reader._turn()
    assert reader.snapshot.node("replica_1").state is State.HEALTHY
    assert weights(reader) == {"replica_1": 1, "replica_2": 1}


def test_a_forked_child_of_the_holder_does_not_hold_the_lease(fleet, store):
    holder = fleet()
    holder._turn()
    assert holder.snapshot.sharing.probing_here
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child leaves with os._exit: pytest's teardown is the parent's
        report = b"?"
        try:
            holder._turn()
            sharing = holder.snapshot.sharing
            report = b"%d%d" % (sharing.probing_here, sharing.prober_pid == os.getppid())
        finally:
            os.write(write, report)
            os._exit(0)
    os.waitpid(pid, 0)
    # It reads the parent's document; the parent still probes.
    assert os.read(read, 2) == b"01"
    assert store.lease()["holder"] == Holder.me().as_dict()
