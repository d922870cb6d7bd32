"""The prober's published snapshots, read from the fleet's shared store: its probe cycles.

The worker that holds the lease publishes a document after each of its probe
cycles, and ``taken_at`` (when that cycle's snapshot was taken) tells one cycle
from the next. :class:`PublishedCycles` reads the store every few milliseconds
in a thread of its own and keeps each document once, so that a test counts the
prober's cycles instead of timing them. A document it misses (its thread not
scheduled for a whole interval) only leaves a cycle out of the count.

The store is read as the workers write it: ``"host"``, the files in the fleet's
``HEALTH_DIR``; ``"cache"``, the Redis at ``REDIS_URL`` under ``CACHE_PREFIX``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from django.core.cache.backends.redis import RedisCache

from replica_router.health.sharing import FileStore
from testbed.fleet.hosts import Fleet

Reader = Callable[[], dict[str, Any] | None]


@dataclass(frozen=True)
class Cycle:
    """One probe cycle of a prober, as its published document says."""

    #: When the cycle's snapshot was taken (wall clock, at the end of the cycle).
    taken_at: float
    #: The pid of the worker that probed.
    holder: int
    #: Alias -> whether that cycle left it in rotation.
    in_rotation: dict[str, bool]


def _cycle(document: dict[str, Any]) -> Cycle:
    return Cycle(
        taken_at=datetime.fromisoformat(str(document["taken_at"])).timestamp(),
        holder=int(document["holder"]["pid"]),
        in_rotation={str(row["alias"]): bool(row["in_rotation"]) for row in document["nodes"]},
    )


class _CacheDocuments:
    """The published document in a fleet's Redis (``HEALTH_SHARING = "cache"``)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.cache = RedisCache(url, {"KEY_PREFIX": prefix})
        self.client = redis.Redis.from_url(url)
        self.key: str | None = None

    def __call__(self) -> dict[str, Any] | None:
        if self.key is None:
            # The key holds a digest of the cluster's addresses: found, not rebuilt.
            head = self.cache.make_key("")
            pattern = f"{head}replica_router:health:*:snapshot"
            found = sorted(key.decode() for key in self.client.scan_iter(match=pattern))
            if not found:
                return None
            self.key = found[0][len(head) :]
        document = self.cache.get(self.key)
        return document if isinstance(document, dict) else None

    def close(self) -> None:
        self.client.close()


def _readers(fleets: Sequence[Fleet]) -> list[Reader]:
    """One reader per store: each "host" fleet has its own, "cache" fleets share one."""
    readers: dict[tuple[str, str, str], Reader] = {}
    for fleet in fleets:
        env = fleet.env
        mode = env.get("REPLICA_ROUTER_HEALTH_SHARING", "process")
        if mode == "host":
            directory = env["REPLICA_ROUTER_HEALTH_DIR"]
            readers.setdefault((mode, directory, ""), FileStore(directory).read)
        elif mode == "cache":
            url = env["REPLICA_ROUTER_REDIS_URL"]
            prefix = env.get("REPLICA_ROUTER_CACHE_PREFIX", "")
            if (mode, url, prefix) not in readers:
                readers[(mode, url, prefix)] = _CacheDocuments(url, prefix)
        else:
            raise ValueError(f"{fleet.name}: HEALTH_SHARING {mode!r} publishes no snapshot")
    return list(readers.values())


class PublishedCycles:
    """Every probe cycle the fleets' probers publish while it runs; a context manager.

    Reads the store when entered, every ``every`` seconds in a thread, and once
    more on exit, so the last document published is always among :attr:`seen`.
    """

    def __init__(self, fleets: Sequence[Fleet], *, every: float = 0.01) -> None:
        self.every = every
        self._readers = _readers(fleets)
        self._cycles: dict[tuple[int, float], Cycle] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        for read in self._readers:
            try:
                document = read()
                cycle = None if document is None else _cycle(document)
            except Exception:  # a store read mid-write, or Redis stopped: next time
                continue
            if cycle is not None:
                with self._lock:
                    self._cycles.setdefault((cycle.holder, cycle.taken_at), cycle)

    @property
    def seen(self) -> list[Cycle]:
        """The cycles seen so far, in the order they were taken."""
        with self._lock:
            return sorted(self._cycles.values(), key=lambda cycle: cycle.taken_at)

    def wait_for(self, done: Callable[[list[Cycle]], bool], *, timeout: float, what: str) -> None:
        """Poll until ``done(seen)``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not published within {timeout}s")
            self.poll()
            time.sleep(self.every)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def __enter__(self) -> PublishedCycles:
        self.poll()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.poll()
        for read in self._readers:
            if isinstance(read, _CacheDocuments):
                read.close()
