"""Load while a measure runs: reads through the fleets, commits on the primary."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.fleet.hosts import Fleet


@dataclass
class ReadLoad:
    """One thread reading ``/read/`` on the fleets in turn, ``rate`` a second.

    ``lock`` is held for each request: a caller that kills a worker while
    holding it kills no request in flight (the client's connection would be
    reset, which says nothing about the router).
    """

    fleets: Sequence[Fleet]
    rate: float = 20.0
    reads: int = 0
    failures: list[str] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)
    #: Every read answered: (wall-clock time, worker pid, alias chosen, server that answered).
    log: list[tuple[float, int, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        turn = 0
        while not self._stop.wait(1 / self.rate):
            fleet = self.fleets[turn % len(self.fleets)]
            turn += 1
            with self.lock:
                try:
                    read = fleet.get("/read/")
                    db = str(read["db"])
                    self.served[db] = self.served.get(db, 0) + 1
                    self.log.append((read["at"], read["pid"], db, str(read["server"])))
                except Exception as exc:
                    self.failures.append(f"{fleet.name}: {exc!r}")
                self.reads += 1

    def __enter__(self) -> ReadLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


class Writer:
    """Commits a small transaction on the primary every ``every`` seconds, so
    that a paused replica falls behind in time."""

    def __init__(self, cluster: Cluster, dbname: str, every: float = 0.1) -> None:
        self.conninfo = cluster.conninfo(PRIMARY, dbname)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.wait(self.every):
                conn.execute("INSERT INTO testapp_author (name) VALUES ('fleet writer')")

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def seed(cluster: Cluster, dbname: str) -> None:
    """One author to read, replayed on every replica."""
    with cluster.connect(PRIMARY, dbname) as conn:
        conn.execute("INSERT INTO testapp_author (name) VALUES ('fleet')")
    cluster.wait_replayed()
