"""One prober per cluster, many readers: where processes share the health monitor's work.

With ``HEALTH_SHARING`` at ``"host"`` or ``"cache"``, the processes of a site
take turns holding a **lease**. The holder probes the nodes and publishes what
it found; every other process reads that and probes nothing, so the databases
see one monitor connection per node however many processes there are. A
process that finds a replica dead on its own (a refused connection, a broken
read) **reports** it, and every process takes that replica out of rotation at
its next look, without waiting for a probe.

The lease is a record with an expiry, renewed by its holder several times per
``CHECK_INTERVAL``. A holder that dies or stops (SIGKILL, SIGSTOP) stops
renewing it; when it expires another process claims it. No lock is held while
the record is read and written, so a stopped process can never block the
others; two processes that claim an expired lease at the same instant may both
probe for one cycle, and the one that does not hold the record then stands
down at its next renewal.

Two stores keep the records:

:class:`FileStore` (``"host"``)
    small JSON files in a directory, replaced atomically (``os.replace``):
    for the processes of one host, with nothing to run.
:class:`CacheStore` (``"cache"``)
    a Django cache (``HEALTH_CACHE``), for processes on many hosts; Redis
    (``django.core.cache.backends.redis.RedisCache``) is the natural choice.

Every store call runs on a thread of its own with a deadline
(:class:`Guarded`), so a store that hangs cannot stall the monitor: the call
fails with :class:`StoreUnavailable`, and the process probes for itself.

The records' times are wall-clock times, which the hosts of a fleet share; each
store reads them from its ``clock`` (``time.time`` unless a test passes its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from replica_router.health.probe import ProcessExiting

__all__ = [
    "CacheStore",
    "FileStore",
    "Guarded",
    "Holder",
    "Store",
    "StoreUnavailable",
    "cluster_key",
    "store_for",
]

#: How long a failure report keeps a replica out of rotation unless a newer
#: snapshot says otherwise; by then the prober has probed it again.
REPORT_SECONDS: Final = 30.0

_T = TypeVar("_T")

#: A wall clock: seconds since the epoch, like ``time.time``.
Clock = Callable[[], float]


class StoreUnavailable(Exception):
    """The shared store could not be read or written in time."""


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that may hold the lease: its host name and pid."""

    host: str
    pid: int

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid())

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid}


class Store(Protocol):
    """Where the lease, the published snapshot and the failure reports live."""

    def claim(self, me: Holder, ttl: float) -> tuple[bool, dict[str, Any] | None]:
        """Take the lease if it is free or has expired, or renew it if ``me``
        holds it. Returns whether ``me`` holds it now, and the lease record
        (``holder``, ``since``, ``expires``: wall-clock times) as it stands."""

    def lease(self) -> dict[str, Any] | None:
        """The lease record as it stands, without claiming it."""

    def publish(self, document: Mapping[str, Any]) -> None:
        """Publish the prober's snapshot document."""

    def read(self) -> dict[str, Any] | None:
        """The last published document, or None."""

    def report(self, alias: str, reason: str) -> None:
        """Record that ``alias`` failed in some process, now."""

    def reports(self, aliases: list[str]) -> dict[str, tuple[float, str]]:
        """Alias -> (wall-clock time, reason) of the recent failure reports."""


def cluster_key(primary: Mapping[str, Any], replicas: Mapping[str, Mapping[str, Any]]) -> str:
    """A short name for one cluster, from the addresses of its nodes.

    Processes of the same site share it; two sites on one host or one Redis
    (or a test database next to the real one) do not.
    """
    parts = [
        f"{alias}={settings.get('HOST', '')}:{settings.get('PORT', '')}/{settings.get('NAME', '')}"
        for alias, settings in sorted({"": primary, **replicas}.items())
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _lease_record(me: Holder, ttl: float, since: float | None, now: float) -> dict[str, Any]:
    return {"holder": me.as_dict(), "since": since or now, "expires": now + ttl}


def _holds(record: Mapping[str, Any] | None, me: Holder) -> bool:
    return record is not None and record.get("holder") == me.as_dict()


def _expired(record: Mapping[str, Any] | None, now: float) -> bool:
    return record is None or float(record.get("expires", 0)) <= now


class FileStore:
    """Records as JSON files in ``directory``, for the processes of one host."""

    def __init__(self, directory: str | os.PathLike[str], *, clock: Clock = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(name).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # torn by a crash mid-write elsewhere: as if absent
        return data if isinstance(data, dict) else None

    def _save(self, name: str, data: Mapping[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written aside and renamed over, so a reader sees the old file or the
        # new one, never half of one.
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(data, file)
            os.replace(temp, self._path(name))
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def claim(self, me: Holder, ttl: float) -> tuple[bool, dict[str, Any] | None]:
        now = self.clock()
        record = self._load("lease")
        if _holds(record, me) or _expired(record, now):
            since = record.get("since") if _holds(record, me) and record else None
            self._save("lease", _lease_record(me, ttl, since, now))
            record = self._load("lease")  # another claimant may have written last
        return _holds(record, me), record

    def lease(self) -> dict[str, Any] | None:
        record = self._load("lease")
        return None if _expired(record, self.clock()) else record

    def publish(self, document: Mapping[str, Any]) -> None:
        self._save("snapshot", document)

    def read(self) -> dict[str, Any] | None:
        return self._load("snapshot")

    def report(self, alias: str, reason: str) -> None:
        reports = self._load("reports") or {}
        reports[alias] = [self.clock(), reason]
        self._save("reports", reports)

    def reports(self, aliases: list[str]) -> dict[str, tuple[float, str]]:
        found = self._load("reports") or {}
        return _recent({alias: found[alias] for alias in aliases if alias in found}, self.clock())


class CacheStore:
    """Records in a Django cache, for processes on many hosts."""

    def __init__(self, alias: str, key: str, *, clock: Clock = time.time) -> None:
        self.alias = alias
        self.prefix = f"replica_router:health:{key}:"
        self.clock = clock

    @property
    def _cache(self) -> Any:
        from django.core.cache import caches

        return caches[self.alias]

    def claim(self, me: Holder, ttl: float) -> tuple[bool, dict[str, Any] | None]:
        cache, key, now = self._cache, self.prefix + "lease", self.clock()
        # The cache expires the record by itself; add() writes only if there is
        # none (SET NX on Redis), so of two claimants exactly one gets it.
        timeout = max(1, round(ttl + 0.49))
        if cache.add(key, _lease_record(me, ttl, None, now), timeout=timeout):
            return True, cache.get(key)
        record = cache.get(key)
        # The cache keeps records for whole seconds; the record's own expiry
        # is what counts, so a shorter lease than a second is honoured.
        if _holds(record, me) or _expired(record, now):
            since = record.get("since") if _holds(record, me) and record else None
            cache.set(key, _lease_record(me, ttl, since, now), timeout=timeout)
            record = cache.get(key)  # another claimant may have written last
        return _holds(record, me), record

    def lease(self) -> dict[str, Any] | None:
        record = self._cache.get(self.prefix + "lease")
        # As in claim(): the record's own expiry counts, not the cache's whole seconds.
        if not isinstance(record, dict) or _expired(record, self.clock()):
            return None
        return record

    def publish(self, document: Mapping[str, Any]) -> None:
        self._cache.set(self.prefix + "snapshot", dict(document), timeout=300)

    def read(self) -> dict[str, Any] | None:
        document = self._cache.get(self.prefix + "snapshot")
        return document if isinstance(document, dict) else None

    def report(self, alias: str, reason: str) -> None:
        self._cache.set(
            self.prefix + "report:" + alias, [self.clock(), reason], timeout=REPORT_SECONDS
        )

    def reports(self, aliases: list[str]) -> dict[str, tuple[float, str]]:
        found = self._cache.get_many([self.prefix + "report:" + alias for alias in aliases])
        return _recent({key.rsplit(":", 1)[1]: value for key, value in found.items()}, self.clock())


def _recent(raw: Mapping[str, Any], now: float) -> dict[str, tuple[float, str]]:
    oldest = now - REPORT_SECONDS
    reports = {}
    for alias, value in raw.items():
        try:
            at, reason = float(value[0]), str(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if at >= oldest:
            reports[alias] = (at, reason)
    return reports


class Guarded:
    """Runs a store's calls on one thread of its own, each within ``deadline``.

    A call that raises, or does not return in time, raises
    :class:`StoreUnavailable`. While a call that timed out still hangs, the
    next calls fail at once rather than pile up threads.
    """

    def __init__(self, store: Store, *, deadline: float) -> None:
        self.store = store
        self.deadline = deadline
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None

    def call(self, method: Callable[..., _T], *args: Any) -> _T:
        if self._pending is not None and not self._pending.done():
            raise StoreUnavailable("an earlier call to the store has not returned")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="replica-router-store"
            )
        try:
            future = self._executor.submit(method, *args)
        except RuntimeError:
            # The interpreter is exiting (a worker told to stop): no more turns.
            raise ProcessExiting from None
        self._pending = future
        try:
            return future.result(self.deadline)
        except FutureTimeout:
            raise StoreUnavailable(f"no answer within {self.deadline:g}s") from None
        except Exception as exc:
            raise StoreUnavailable(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def after_fork(self) -> None:
        """In a forked child: the parent's thread, and the call it ran, did not
        come along. A new thread starts on the next call."""
        self._executor, self._pending = None, None


def default_directory(key: str) -> str:
    """Where ``"host"`` mode keeps its files when ``HEALTH_DIR`` is not set."""
    return os.path.join(tempfile.gettempdir(), f"replica-router-health-{key}")


def store_for(
    mode: str, *, key: str, cache: str, directory: str | None, clock: Clock = time.time
) -> Store | None:
    """The store for a ``HEALTH_SHARING`` mode, or None for ``"process"``."""
    if mode == "host":
        return FileStore(directory or default_directory(key), clock=clock)
    if mode == "cache":
        return CacheStore(cache, key, clock=clock)
    return None
