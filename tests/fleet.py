"""A fleet of real gunicorn workers sharing (or not) the health monitor's work (issue 15).

:class:`Fleet` starts one gunicorn master (a "host") with N sync workers
serving ``tests/fleet_site`` on a free loopback port; several fleets on one
Redis stand for several hosts. Every worker runs the router's health monitor
(``HEALTH_SHARING`` as given). The measures:

* :func:`monitor_connections`: ``pg_stat_activity`` rows with
  ``application_name = 'replica_router monitor'`` on each node;
* :func:`settle_connections`: wait until each node has the expected count, then
  sample it for a few intervals;
* :func:`measure_out_of_rotation`: after a fault, the time until every worker
  has the replica out of rotation (from each worker's own record of its
  transition, on this host's clock);
* :func:`measure_takeover`: SIGKILL the worker that probes, and the time until
  another one holds the lease, with light read load meanwhile;
* :func:`measure_death_during_takeover`: the same, with a replica killed a
  moment after the prober: where the reads went, and when each worker took
  the replica out;
* :func:`measure_store_outage`: stop Redis under light load, the connections
  while it is down, and after it returns.

Every process started here is stopped in a ``finally`` (its whole process
group), so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from replica_router.health.probe import APPLICATION_NAME
from replica_router.testing.cluster import PRIMARY, Cluster
from replica_router.testing.processes import children, free_port, process_alive
from replica_router.testing.redis_server import HOST, RedisServer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "fleet_site" / "gunicorn.conf.py"
#: The states in which a replica is out of rotation.
OUT = {"down", "lagging", "ejected"}


class Fleet:
    """One gunicorn master with ``workers`` sync workers; a context manager.

    ``settings`` become ``REPLICA_ROUTER_*`` environment variables read by
    ``tests/fleet_site/settings.py`` (``HEALTH_SHARING="host"`` becomes
    ``REPLICA_ROUTER_HEALTH_SHARING=host``).
    """

    def __init__(self, *, workers: int, database: str, name: str = "fleet", **settings: Any):
        self.workers = workers
        self.name = name
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.fleet_site.settings",
            "REPLICA_ROUTER_DATABASE_NAME": database,
            **{f"REPLICA_ROUTER_{key}": str(value) for key, value in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        # gunicorn's and the workers' output (the router logs at INFO there);
        # kept in $REPLICA_ROUTER_FLEET_LOGS if set, removed at stop otherwise.
        self.keep_log = bool(os.environ.get("REPLICA_ROUTER_FLEET_LOGS"))
        directory = os.environ.get("REPLICA_ROUTER_FLEET_LOGS") or None
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=directory)[1])

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "gunicorn"),
                    *("-c", str(CONFIG)),
                    *("--bind", f"{HOST}:{self.port}"),
                    *("--workers", str(self.workers)),
                    "--chdir",
                    str(ROOT),
                ],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one
            )
        try:
            deadline = time.monotonic() + timeout
            while len(self.pids()) < self.workers or not self._answers():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn {self.name} did not start:\n{self.output()}")
                time.sleep(0.1)
            self.states()  # every worker answers
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            self.get("/state/")
        except (OSError, http.client.HTTPException):
            return False
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Workers the master did not reap (it was SIGKILLed, say) are in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if not self.keep_log:
            self.log.unlink(missing_ok=True)

    def pids(self) -> set[int]:
        """The live workers' pids (the master's children)."""
        if self.process is None:
            return set()
        return {pid for pid in children(self.process.pid) if process_alive(pid)}

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        """GET ``path`` on a new connection (so the kernel picks a worker); its JSON."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise http.client.HTTPException(f"{path}: HTTP {response.status}: {body[:500]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def states(self, tries: int = 400) -> dict[int, dict[str, Any]]:
        """``/state/`` of every live worker, by pid (bounded tries)."""
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(tries):
            state = self.get("/state/")
            seen[state["pid"]] = state
            live = self.pids()
            if live and live <= seen.keys():
                return {pid: seen[pid] for pid in live}
        raise AssertionError(
            f"{self.name}: saw workers {sorted(seen)} of {sorted(self.pids())} in {tries} requests"
        )


def all_states(fleets: Sequence[Fleet]) -> dict[int, dict[str, Any]]:
    states: dict[int, dict[str, Any]] = {}
    for fleet in fleets:
        states.update(fleet.states())
    return states


def worker_count(fleets: Sequence[Fleet]) -> int:
    return sum(fleet.workers for fleet in fleets)


# -- connections ---------------------------------------------------------------


def monitor_connections(cluster: Cluster, dbname: str) -> dict[str, int | None]:
    """Monitor connections to ``dbname`` on each node (None: the node is down)."""
    counts: dict[str, int | None] = {}
    for node in cluster.nodes:
        try:
            with cluster.connect(node, dbname) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = current_database()",
                    [APPLICATION_NAME],
                ).fetchone()
            counts[node] = int(row[0]) if row else 0
        except psycopg.OperationalError:
            counts[node] = None
    return counts


@dataclass
class Settled:
    #: Seconds until every node first had the expected count.
    seconds: float
    #: Counts taken afterwards, spread over two intervals.
    samples: list[dict[str, int | None]]


def settle_connections(
    cluster: Cluster,
    dbname: str,
    expected: int,
    *,
    interval: float,
    samples: int = 5,
    timeout: float = 30.0,
) -> Settled:
    """Wait until every node has ``expected`` monitor connections, then take
    ``samples`` counts spread over ``2 * interval`` (the caller asserts they
    all say ``expected``)."""
    started = time.monotonic()
    deadline = started + timeout
    last: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        last = monitor_connections(cluster, dbname)
        if all(count == expected for count in last.values()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"monitor connections never all {expected}: last {last}")
    seconds = time.monotonic() - started
    taken = []
    for _ in range(samples):
        time.sleep(2 * interval / samples)
        taken.append(monitor_connections(cluster, dbname))
    return Settled(seconds, taken)


def per_node(samples: Iterable[dict[str, int | None]]) -> dict[str, set[int | None]]:
    """Every count seen on each node."""
    seen: dict[str, set[int | None]] = {}
    for sample in samples:
        for node, count in sample.items():
            seen.setdefault(node, set()).add(count)
    return seen


# -- load ----------------------------------------------------------------------


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


# -- measures ------------------------------------------------------------------


@dataclass
class OutOfRotation:
    """How long after a fault each worker took a replica out of rotation."""

    #: Worker pid -> seconds from the fault to its own transition.
    seconds: dict[int, float]

    @property
    def last(self) -> float:
        return max(self.seconds.values())

    @property
    def median(self) -> float:
        return statistics.median(self.seconds.values())


def wait_all(
    fleets: Sequence[Fleet],
    done: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    what: str,
) -> dict[int, dict[str, Any]]:
    """Poll ``/state/`` until the latest state of every live worker satisfies ``done``."""
    latest: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while True:
        for fleet in fleets:
            state = fleet.get("/state/")
            latest[state["pid"]] = state
        live = set().union(*(fleet.pids() for fleet in fleets))
        if live <= latest.keys() and all(done(latest[pid]) for pid in live):
            return {pid: latest[pid] for pid in live}
        if time.monotonic() > deadline:
            pending = sorted(pid for pid in live if pid not in latest or not done(latest[pid]))
            raise AssertionError(f"{what}: workers {pending} not there within {timeout}s")


def measure_out_of_rotation(
    fleets: Sequence[Fleet], alias: str, fault: Callable[[], None], *, timeout: float = 60.0
) -> OutOfRotation:
    """Cause ``fault`` and wait until every worker has ``alias`` out of rotation.

    Each worker records (``/state/`` ``changes``) when it moved ``alias`` to a
    state out of rotation; the figure is that time minus the fault's, both on
    this host's wall clock, so the polling does not add to it.
    """
    states = all_states(fleets)
    assert all(alias in s["rotation"] for s in states.values()), "not in rotation before"
    started = time.time()

    def out(state: dict[str, Any]) -> bool:
        # The monitor swaps the rotation a moment before it signals the
        # change, so a worker can be caught in between: wait for both.
        recorded = any(
            a == alias and new in OUT and at >= started for at, a, _, new in state["changes"]
        )
        return alias not in state["rotation"] and recorded

    fault()
    states = wait_all(fleets, out, timeout=timeout, what=f"{alias} out")
    seconds = {}
    for pid, state in states.items():
        times = [at for at, a, _, new in state["changes"] if a == alias and new in OUT]
        times = [at for at in times if at >= started]
        assert times, f"worker {pid} has {alias} out of rotation but recorded no transition"
        seconds[pid] = min(times) - started
    return OutOfRotation(seconds)


def prober(fleets: Sequence[Fleet]) -> tuple[Fleet, dict[str, Any]]:
    """The fleet and ``/state/`` of the one worker that probes (asserts there is one)."""
    found = [
        (fleet, state)
        for fleet in fleets
        for state in fleet.states().values()
        if state["probing_here"]
    ]
    assert len(found) == 1, f"expected one prober, found {[s['pid'] for _, s in found]}"
    return found[0]


@dataclass
class Takeover:
    killed: int
    new_prober: int
    #: From the SIGKILL to the new holder's lease (its own clock: this host's).
    seconds: float
    #: When the new holder's lease began (wall clock).
    new_prober_since: float
    #: From the SIGKILL until a request saw the new prober answer.
    observed_seconds: float
    reads: int
    failures: list[str]
    #: The reads answered, as :attr:`ReadLoad.log`.
    log: list[tuple[float, int, str, str]] = field(default_factory=list)
    #: When ``meanwhile`` returned (wall clock), if given.
    meanwhile_at: float | None = None


def measure_takeover(
    fleets: Sequence[Fleet],
    *,
    interval: float,
    timeout: float = 30.0,
    meanwhile: Callable[[], None] | None = None,
) -> Takeover:
    """SIGKILL the prober under light read load; wait for another worker to probe.

    Done when some other worker says ``probing_here`` with a fresh snapshot
    (``snapshot_age_seconds`` under 1.5 intervals: a cycle, give or take its
    jitter). ``meanwhile`` (a fault) runs a fifth of an interval after the
    kill, while no process holds the lease.
    """
    fleet, state = prober(fleets)
    victim = state["pid"]
    with ReadLoad(fleets) as load:
        time.sleep(2 * interval)  # reads before the kill too
        with load.lock:  # no read in flight on the victim
            killed_at, killed_mono = time.time(), time.monotonic()
            os.kill(victim, signal.SIGKILL)
        meanwhile_at = None
        if meanwhile is not None:
            time.sleep(interval / 5)
            meanwhile()
            meanwhile_at = time.time()
        deadline = killed_mono + timeout
        found: dict[str, Any] | None = None
        while found is None:
            assert time.monotonic() < deadline, f"no worker took over within {timeout}s"
            for each in fleets:
                s = each.get("/state/")
                age = s["snapshot_age_seconds"]
                if (
                    s["pid"] != victim
                    and s["probing_here"]
                    and age is not None
                    and age < 1.5 * interval
                ):
                    found = s
                    break
        observed = time.monotonic() - killed_mono
        time.sleep(2 * interval)  # and after it
    assert found["lease_since"] is not None
    return Takeover(
        killed=victim,
        new_prober=found["pid"],
        seconds=found["lease_since"] - killed_at,
        new_prober_since=found["lease_since"],
        observed_seconds=observed,
        reads=load.reads,
        failures=load.failures,
        log=load.log,
        meanwhile_at=meanwhile_at,
    )


@dataclass
class DeathDuringTakeover:
    """A replica killed just after the prober: what the fleet did about it."""

    takeover: Takeover
    #: Worker pid -> seconds from the replica's death to its transition (the
    #: workers that were there before; not the one started in the victim's place).
    out_after: dict[int, float]
    #: Every live worker's own transition (wall clock), the new one's included.
    out_at: dict[int, float]
    #: Reads answered after the death: all of them, those the router sent to
    #: the dead replica (served elsewhere), and those it served (none can be).
    reads: int
    sent_there: list[tuple[float, int, str, str]]
    served_there: list[tuple[float, int, str, str]]

    @property
    def last_out(self) -> float:
        return max(self.out_after.values())

    @property
    def took_over(self) -> float:
        """Seconds from the replica's death until the new prober held the lease."""
        assert self.takeover.meanwhile_at is not None
        return self.takeover.new_prober_since - self.takeover.meanwhile_at

    @property
    def sent_after_out(self) -> list[tuple[float, int, str, str]]:
        """Reads sent there by a worker after it had taken it out (a read's
        time is when its view began, before the router chose)."""
        return [
            read
            for read in self.sent_there
            if read[1] in self.out_at and read[0] > self.out_at[read[1]]
        ]


def measure_death_during_takeover(
    fleets: Sequence[Fleet], alias: str, kill: Callable[[str], None], *, interval: float
) -> DeathDuringTakeover:
    """SIGKILL the prober, then ``kill(alias)`` a fifth of an interval later,
    under light read load; wait until every worker has ``alias`` out.

    Right after the death, reads are made until one is sent to ``alias``, so
    that a read meets the dead replica before any new prober could (the light
    load alone may miss it on a slow machine)."""
    before = set().union(*(fleet.pids() for fleet in fleets))
    nudged: list[tuple[float, int, str, str]] = []

    def fault() -> None:
        kill(alias)
        nudged.append((time.time(), 0, "", ""))  # the moment of death, dropped below
        for turn in range(50):
            read = fleets[turn % len(fleets)].get("/read/")
            nudged.append((read["at"], read["pid"], str(read["db"]), str(read["server"])))
            if read["db"] == alias:
                break

    takeover = measure_takeover(fleets, interval=interval, meanwhile=fault)
    takeover.log.extend(nudged[1:])
    takeover.meanwhile_at = died = nudged[0][0]
    states = wait_all(fleets, lambda s: alias not in s["rotation"], timeout=30, what=f"{alias} out")
    out_at = {
        pid: min(times)
        for pid, state in states.items()
        if (times := [at for at, a, _, new in state["changes"] if a == alias and at >= died])
    }
    out_after = {pid: at - died for pid, at in out_at.items() if pid in before}
    after_death = [read for read in takeover.log if read[0] > died]
    return DeathDuringTakeover(
        takeover=takeover,
        out_after=out_after,
        out_at=out_at,
        reads=len(after_death),
        sent_there=[read for read in after_death if read[2] == alias],
        served_there=[read for read in after_death if read[3] == alias],
    )


@dataclass
class StoreOutage:
    #: Monitor connections per node sampled while Redis was down, and after.
    down: list[dict[str, int | None]]
    after: list[dict[str, int | None]]
    #: Seconds from stopping Redis until every node had one connection per
    #: worker, and from starting it until each had one again.
    fallback_seconds: float
    recovery_seconds: float
    workers_in_fallback: int
    reads: int
    failures: list[str]


def measure_store_outage(
    fleets: Sequence[Fleet],
    redis: RedisServer,
    cluster: Cluster,
    dbname: str,
    *,
    interval: float,
    down_for: float | None = None,
) -> StoreOutage:
    """Stop Redis under light load for ``down_for`` seconds (default 5
    intervals, at least), then start it again."""
    workers = worker_count(fleets)
    with ReadLoad(fleets) as load:
        time.sleep(2 * interval)
        stopped = time.monotonic()
        redis.halt()
        try:
            down = settle_connections(cluster, dbname, workers, interval=interval)
            in_fallback = sum(s["fallback"] for s in all_states(fleets).values())
            remaining = (down_for or 5 * interval) - (time.monotonic() - stopped)
            time.sleep(max(0.0, remaining))
        finally:
            if not redis.running:
                redis.start()
        after = settle_connections(cluster, dbname, 1, interval=interval)
    return StoreOutage(
        down=down.samples,
        after=after.samples,
        fallback_seconds=down.seconds,
        recovery_seconds=after.seconds,
        workers_in_fallback=in_fallback,
        reads=load.reads,
        failures=load.failures,
    )


@contextlib.contextmanager
def fleets(*groups: tuple[str, int], database: str, **settings: Any) -> Iterator[list[Fleet]]:
    """Start one :class:`Fleet` per ``(name, workers)``, each with a
    ``HEALTH_DIR`` of its own (unless given) and the same ``settings``; stop
    them all afterwards."""
    started: list[Fleet] = []
    directories = []
    try:
        for name, workers in groups:
            extra = dict(settings)
            if "HEALTH_DIR" not in extra:
                directory = tempfile.mkdtemp(prefix=f"rr-health-{name}-")
                directories.append(directory)
                extra["HEALTH_DIR"] = directory
            fleet = Fleet(workers=workers, database=database, name=name, **extra)
            started.append(fleet)
            fleet.start()
        yield started
    finally:
        for fleet in started:
            fleet.stop()
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def cache_prefix() -> str:
    """A cache key prefix of its own, so two runs on one Redis never share a lease."""
    return f"fleet-{os.getpid()}-{random.randrange(1 << 30)}"
