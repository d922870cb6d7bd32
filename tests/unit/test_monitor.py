"""The health monitor without a server: its one published value, and forks.

Connecting and measuring are replaced by fakes (:class:`FakeNodes`), so a
cycle runs the monitor's own code, the probe threads and the kept connections
included, against nodes whose answers the test sets.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from replica_router.balancer import Balancer
from replica_router.conf import RouterConfig, parse_settings
from replica_router.health import probe
from replica_router.health.model import Probe, State
from replica_router.health.monitor import Monitor, Published, live_monitors

PRIMARY_PROBE = Probe(ok=True, in_recovery=False, current_lsn=1000)
CAUGHT_UP = Probe(ok=True, in_recovery=True, receive_lsn=1000, replay_lsn=1000, streaming=True)


def config_for(**settings: Any) -> RouterConfig:
    config, problems = parse_settings(
        {"REPLICAS": ["replica_1", "replica_2"], "CHECK_INTERVAL": 60, **settings}
    )
    assert problems == []
    return config


class FakeConnection:
    """What the kept connections need of a psycopg connection. Closing it sends
    ``X`` on its socket, as libpq's Terminate message would."""

    def __init__(self, alias: str, fd: int = -1) -> None:
        self.alias = alias
        self.closed = False
        self._fd = fd

    @property
    def pgconn(self) -> FakeConnection:
        return self

    @property
    def socket(self) -> int:
        if self._fd < 0:
            raise psycopg.OperationalError("the connection is closed")
        return self._fd

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._fd >= 0:
            try:
                os.write(self._fd, b"X")
            finally:
                os.close(self._fd)


class FakeNodes:
    """Each alias's answer to a probe; an alias in ``down`` breaks its
    connections and refuses new ones."""

    def __init__(self) -> None:
        self.probes = {"default": PRIMARY_PROBE, "replica_1": CAUGHT_UP, "replica_2": CAUGHT_UP}
        self.down: set[str] = set()
        #: alias -> the descriptor its next connection gets (else none)
        self.sockets: dict[str, int] = {}

    def params_for(self, alias: str) -> dict[str, Any]:
        return {"alias": alias}

    def connect(self, params: dict[str, Any], timeout: float) -> FakeConnection:
        alias = params["alias"]
        if alias in self.down:
            raise psycopg.OperationalError("connection refused")
        return FakeConnection(alias, self.sockets.pop(alias, -1))

    def measure(self, conn: FakeConnection, started: float, timeout: float) -> Probe:
        if conn.alias in self.down:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self.probes[conn.alias]


@pytest.fixture
def nodes(monkeypatch) -> FakeNodes:
    fake = FakeNodes()
    monkeypatch.setattr(probe, "_connect", fake.connect)
    monkeypatch.setattr(probe, "_measure", fake.measure)
    return fake


@pytest.fixture
def monitor(nodes: FakeNodes) -> Iterator[Monitor]:
    config = config_for()
    made = Monitor(
        config=config, balancer=Balancer(weights=config.replicas), params_for=nodes.params_for
    )
    yield made
    made.stop()


def weights(monitor: Monitor) -> dict[str, int]:
    assert monitor.balancer is not None
    return dict(monitor.balancer.weights)


def test_before_the_first_cycle_nothing_is_judged_and_the_weights_stay(monitor):
    assert {node.state for node in monitor.snapshot.nodes} == {State.UNKNOWN}
    assert monitor.down == frozenset() and monitor.freshness == {}
    assert Published(snapshot=monitor.snapshot).rotation({"replica_1": 1}) is None
    assert weights(monitor) == {"replica_1": 1, "replica_2": 1}


def test_a_cycle_publishes_the_snapshot_the_down_set_the_freshness_and_the_rotation(monitor, nodes):
    snapshot = monitor.run_cycle()
    assert snapshot is monitor.snapshot and snapshot.overall == "ok"
    assert monitor.down == frozenset()
    assert set(monitor.freshness) == {"replica_1", "replica_2"}
    assert monitor.replay_positions == {"replica_1": 1000, "replica_2": 1000}

    nodes.down.add("replica_2")
    snapshot = monitor.run_cycle()
    assert snapshot.node("replica_2").state is State.DOWN
    # One value, applied at once: every view of it agrees.
    assert monitor.down == {"replica_2"}
    assert set(monitor.freshness) == {"replica_1"}
    assert weights(monitor) == {"replica_1": 1}
    assert monitor.cycles == 2


def test_a_failure_the_application_reports_is_published_at_once(monitor):
    monitor.run_cycle()
    monitor.report_failure("replica_1", "connection refused")
    assert monitor.snapshot.node("replica_1").state is State.DOWN
    assert monitor.down == {"replica_1"}
    assert weights(monitor) == {"replica_2": 1}
    assert "replica_1" not in monitor.freshness


def test_published_replay_positions_only_move_forward(monitor):
    monitor.note_replay_position("replica_1", 2000)
    monitor.run_cycle()  # the cycle measured 1000: older than what is known
    assert monitor.replay_positions["replica_1"] == 2000


def test_every_monitor_of_the_process_is_reached_by_the_fork_hook(monitor):
    assert monitor in live_monitors()


def test_a_forked_child_leaves_the_parents_probe_sessions_alone(monitor, nodes):
    """The child shares the kept connections' sockets with the parent: closing
    them there must not send the server a Terminate for the parent's session."""
    parent_end, server_end = socket.socketpair()
    nodes.sockets["default"] = os.dup(parent_end.fileno())
    monitor.run_cycle()
    pid = os.fork()
    if pid == 0:  # the child leaves with os._exit: pytest's teardown is the parent's
        status = 1
        try:
            monitor.stop()  # closes every connection this process holds
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    server_end.setblocking(False)
    with pytest.raises(BlockingIOError):
        server_end.recv(1)  # nothing came from the child
    monitor.stop()
    assert server_end.recv(1) == b"X"  # the parent's own close does end its session
    parent_end.close()
    server_end.close()


def test_a_forked_child_starts_a_monitor_thread_of_its_own(nodes):
    config = config_for(CHECK_INTERVAL=0.05)
    monitor = Monitor(config=config, params_for=nodes.params_for)
    monitor.start(wait=True)
    try:
        assert monitor.running
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            report = b"?"
            try:
                before = monitor.running
                cycles = monitor.cycles
                monitor.start(wait=True)  # waits for the child's own first cycle
                report = b"%d%d%d" % (before, monitor.running, monitor.cycles > cycles)
            finally:
                os.write(write, report)
                os._exit(0)
        os.waitpid(pid, 0)
        # Not running after the fork; running, with a cycle of its own, after start().
        assert os.read(read, 3) == b"011"
        assert monitor.running  # the parent's thread runs on
    finally:
        monitor.stop()


def test_jitter_only_shortens_a_wait(monkeypatch):
    """A longer wait would break the detection bound, CHECK_INTERVAL + CHECK_TIMEOUT."""
    from replica_router.health import monitor as monitor_module

    monkeypatch.setattr(monitor_module.random, "uniform", lambda low, high: high)
    assert monitor_module.jittered(1.0) == 1.0
    monkeypatch.setattr(monitor_module.random, "uniform", lambda low, high: low)
    assert monitor_module.jittered(1.0) == pytest.approx(0.9)
