"""The connection registry behind the cut-off, on real sockets (socket pairs
standing in for a client's connection to a server)."""

from __future__ import annotations

import os
import socket
import threading
import weakref
from collections.abc import Iterator

import psycopg
import pytest

from replica_router.cutoff import ConnectionRegistry


class PGconn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @property
    def socket(self) -> int:
        if self.sock.fileno() < 0:
            raise psycopg.OperationalError("the connection is closed")
        return self.sock.fileno()


class Connection:
    """What the registry reads of a psycopg connection: ``closed`` and ``pgconn.socket``."""

    def __init__(self) -> None:
        self.client, self.server = socket.socketpair()
        self.pgconn = PGconn(self.client)

    @property
    def closed(self) -> bool:
        return self.client.fileno() < 0

    def close(self) -> None:
        self.client.close()

    def is_cut(self) -> bool:
        """A read on a cut socket returns end of file at once, instead of waiting."""
        self.client.settimeout(0)
        try:
            return self.client.recv(1) == b""
        except BlockingIOError:
            return False


@pytest.fixture
def made() -> Iterator[list[Connection]]:
    connections: list[Connection] = []
    yield connections
    for connection in connections:
        connection.close()
        connection.server.close()


def connection(made: list[Connection]) -> Connection:
    made.append(Connection())
    return made[-1]


def test_a_cut_shuts_down_the_aliases_connections_and_no_other(made):
    registry = ConnectionRegistry()
    first, second, other = connection(made), connection(made), connection(made)
    registry.register("replica_1", first)
    registry.register("replica_1", second)
    registry.register("replica_2", other)
    assert registry.count("replica_1") == 2
    assert registry.cut("replica_1") == 2
    assert first.is_cut() and second.is_cut()
    assert not other.is_cut()
    assert registry.count("replica_1") == 0 and registry.count("replica_2") == 1


def test_a_connection_registered_twice_is_cut_once(made):
    registry = ConnectionRegistry()
    pooled = connection(made)
    registry.register("replica_1", pooled)
    registry.register("replica_1", pooled)  # checked out of the pool again
    assert registry.cut("replica_1") == 1


def test_a_closed_connection_is_not_cut(made):
    registry = ConnectionRegistry()
    closed = connection(made)
    registry.register("replica_1", closed)
    closed.close()
    assert registry.cut("replica_1") == 0


def test_a_descriptor_reused_since_registration_is_left_alone(made):
    """The connection's descriptor was closed behind its back and handed to
    another socket: the registered identity no longer matches, so the new
    socket is not shut down."""
    registry = ConnectionRegistry()
    victim = connection(made)
    registry.register("replica_1", victim)
    fd = victim.client.fileno()
    stranger = connection(made)
    os.dup2(stranger.client.fileno(), fd)  # fd now names the stranger's socket
    assert registry.cut("replica_1") == 0
    assert not stranger.is_cut()


def test_a_connection_dropped_is_forgotten():
    registry = ConnectionRegistry()
    dropped = Connection()
    registry.register("replica_1", dropped)
    dropped.close()
    dropped.server.close()
    gone = weakref.ref(dropped)
    del dropped
    assert gone() is None  # the registry holds it weakly: it did not keep it alive


def test_forget_drops_every_registration(made):
    registry = ConnectionRegistry()
    inherited = connection(made)
    registry.register("replica_1", inherited)
    registry.forget()
    assert registry.cut("replica_1") == 0
    assert not inherited.is_cut()


def test_connect_registers_what_it_made(made):
    registry = ConnectionRegistry()
    made_here = registry.connect("replica_1", lambda: connection(made))
    assert registry.cut("replica_1") == 1
    assert made_here.is_cut()


def test_connect_raises_what_connecting_raised():
    registry = ConnectionRegistry()

    def refuse() -> Connection:
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(psycopg.OperationalError, match="refused"):
        registry.connect("replica_1", refuse)


def test_a_cut_abandons_a_connection_attempt_and_closes_what_it_makes(made):
    """A server that hangs mid-handshake: the caller gets an error when the
    alias is cut, not when the attempt gives up; the attempt's late
    connection is closed, not leaked."""
    registry = ConnectionRegistry()
    handshake, late = threading.Event(), []

    def hanging_connect() -> Connection:
        handshake.wait(30)
        late.append(connection(made))
        return late[0]

    outcome: dict[str, BaseException] = {}

    def connect() -> None:
        try:
            registry.connect("replica_1", hanging_connect)
        except psycopg.OperationalError as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=connect)
    caller.start()
    while registry.cut("replica_1") == 0:  # until the attempt is under way
        pass
    caller.join(30)
    assert not caller.is_alive()
    assert "found down while connecting" in str(outcome["error"])
    handshake.set()
    for thread in threading.enumerate():
        if thread.name == "replica-router-connect-replica_1":
            thread.join(30)
    assert late and late[0].closed
    assert registry.count("replica_1") == 0
