"""Cutting this process's connections to a replica that stopped answering.

A hung server (a stopped VM, a network partition, a SIGSTOPped postmaster)
sends no error and no RST: a read waiting on it, or a probe, waits as long as
the hang lasts, up to the operating system's TCP timeouts. When the health
monitor finds a replica down, the connections this process opened to it are
shut down at the socket, so that each read waiting on one gets an error at once
and the failover engine runs it again elsewhere.

The engine and the monitor register each connection they open, with the alias
it serves, so the cut-off touches exactly those (and the engine's connection
attempts still under way, see :meth:`ConnectionRegistry.connect`): nothing is looked up by
address, and Unix-socket hosts, multi-host ``HOST`` values and ``hostaddr``
work like any TCP host. Another alias on the same server or PgBouncer keeps
its connections.

A connection's socket is shut down through a duplicate of its descriptor,
whose identity is checked against the one registered: a descriptor closed and
reused meanwhile by something else is never touched.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import psycopg

__all__ = ["ConnectionRegistry", "registry"]


class _PGconn(Protocol):
    @property
    def socket(self) -> int: ...


class Connection(Protocol):
    """What the registry needs of a psycopg connection."""

    @property
    def closed(self) -> bool: ...

    @property
    def pgconn(self) -> _PGconn: ...


class _Socket(NamedTuple):
    fd: int
    device: int
    inode: int


C = TypeVar("C", bound=Connection)


class _Attempt(Generic[C]):
    """A connection being made in a thread of its own, which a cut abandons."""

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.connection: C | None = None
        self.error: BaseException | None = None
        self.abandoned = False


class ConnectionRegistry:
    """Each alias's open connections, weakly held; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_alias: dict[str, weakref.WeakKeyDictionary[Any, _Socket]] = {}
        self._attempts: dict[str, set[_Attempt[Any]]] = {}

    def connect(self, alias: str, connect: Callable[[], C]) -> C:
        """``connect()``, registered, unless ``alias`` is cut first.

        A server that hangs after accepting the TCP connection (its kernel
        completes the handshake) leaves a connection attempt waiting for the
        connect timeout, 2 s at least, and psycopg shows no socket until it
        returns. So the attempt runs in a thread of its own, and the caller
        waits for it or for a cut of ``alias``, whichever comes first: then it
        gets ``OperationalError``, and the attempt's connection, if it is made
        after all, is closed.
        """
        attempt: _Attempt[C] = _Attempt()
        with self._lock:
            self._attempts.setdefault(alias, set()).add(attempt)
        threading.Thread(
            target=self._attempt,
            args=(alias, attempt, connect),
            name=f"replica-router-connect-{alias}",
            daemon=True,
        ).start()
        attempt.finished.wait()
        if attempt.abandoned:
            raise psycopg.OperationalError(f"{alias} was found down while connecting")
        if attempt.error is not None:
            raise attempt.error
        assert attempt.connection is not None
        return attempt.connection

    def _attempt(self, alias: str, attempt: _Attempt[C], connect: Callable[[], C]) -> None:
        try:
            connection = connect()
        except BaseException as exc:
            connection, attempt.error = None, exc
        with self._lock:
            self._attempts.get(alias, set()).discard(attempt)
            abandoned = attempt.abandoned
            if not abandoned and connection is not None:
                self._add(alias, connection)
        if abandoned and connection is not None:
            connection.close()  # type: ignore[attr-defined]
        attempt.connection = connection
        attempt.finished.set()

    def register(self, alias: str, connection: Connection) -> None:
        """Note that ``connection`` serves ``alias``; registering it again is cheap."""
        connections = self._by_alias.get(alias)
        if connections is not None and connection in connections:
            return
        with self._lock:
            self._add(alias, connection)

    def _add(self, alias: str, connection: Connection) -> None:
        try:
            fd = connection.pgconn.socket
            stat = os.fstat(fd)
        except Exception:  # closed already, or no socket: nothing to cut
            return
        entry = _Socket(fd, stat.st_dev, stat.st_ino)
        self._by_alias.setdefault(alias, weakref.WeakKeyDictionary())[connection] = entry

    def cut(self, alias: str) -> int:
        """Shut down the socket of every open connection of ``alias``; returns how many."""
        with self._lock:
            connections = self._by_alias.pop(alias, None)
            entries = [] if connections is None else list(connections.items())
            attempts = self._attempts.pop(alias, set())
            for attempt in attempts:
                attempt.abandoned = True
                attempt.finished.set()
        return len(attempts) + sum(_shut_down(connection, entry) for connection, entry in entries)

    def count(self, alias: str) -> int:
        """How many registered connections of ``alias`` are still open."""
        with self._lock:
            connections = list(self._by_alias.get(alias, {}))
        return sum(not connection.closed for connection in connections)

    def forget(self) -> None:
        """Forget every connection: in a forked child, the sockets are the parent's.

        Runs in the child's fork hook: the lock is replaced, not taken, since
        a thread of the parent may have held it at the fork.
        """
        self._lock = threading.Lock()
        self._by_alias = {}
        self._attempts = {}


def _shut_down(connection: Connection, entry: _Socket) -> bool:
    if connection.closed:
        return False
    try:
        duplicate = os.dup(entry.fd)
    except OSError:
        return False
    try:
        stat = os.fstat(duplicate)
        if (stat.st_dev, stat.st_ino) != (entry.device, entry.inode) or connection.closed:
            return False  # closed, and its descriptor reused, since it was registered
        with socket.socket(fileno=os.dup(duplicate)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        os.close(duplicate)


#: The process's registry: the failover engine and the health monitor register here.
registry = ConnectionRegistry()
