"""The monotonic-reads scenario of issue 14, shared by the test and the benchmark.

Two replicas in rotation, one current and one applying WAL
:data:`DELAY_SECONDS` late, both well under ``MAX_LAG_SECONDS``; a counter row
that a thread of its own bumps on the primary about every
:data:`BUMP_INTERVAL`; and pages (or ``causal()`` blocks) that read the counter
:data:`~testbed.monotonic_urls.READS_PER_REQUEST` times, each read routed as
usual. A group of reads *went back* when a later read returned a smaller value
than an earlier one: a user saw the page's data move backwards in time.

Used by ``tests/integration/test_consistency.py`` and
``bench/bench_monotonic.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from django.test import Client, override_settings

from replica_router import causal
from replica_router.runtime import get_balancer, get_monitor
from replica_router.signals import replica_state_changed
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.monotonic_urls import READS_PER_REQUEST
from testbed.polling import wait_for
from testbed.testapp.models import Counter

#: The replica that applies WAL late, and how late.
DELAYED = "replica_1"
DELAY_SECONDS = 1.5
#: How often the counter is bumped on the primary.
BUMP_INTERVAL = 0.01
#: The pinning middleware first, as docs/installation.md says.
MIDDLEWARE = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
#: The monitor judges lag as seconds plus one probe gap (CHECK_INTERVAL +
#: CHECK_TIMEOUT, 1.5 s by default) against MAX_LAG_SECONDS: 1.5 s of delay
#: plus 1.5 s is well under 10, so the delayed replica stays in rotation.
MAX_LAG_SECONDS = 10.0

Read = tuple[int, str]  # (counter value, alias that served it)


def configured(**router_settings: Any) -> override_settings:
    """The scenario's settings, with ``router_settings`` added to REPLICA_ROUTER."""
    return override_settings(
        ROOT_URLCONF="testbed.monotonic_urls",
        MIDDLEWARE=MIDDLEWARE,
        REPLICA_ROUTER={
            **settings.REPLICA_ROUTER,
            "MAX_LAG_SECONDS": MAX_LAG_SECONDS,
            **router_settings,
        },
    )


def went_back(values: Sequence[int]) -> bool:
    """Whether a later value is smaller than an earlier one."""
    highest = None
    for value in values:
        if highest is not None and value < highest:
            return True
        highest = value if highest is None else max(highest, value)
    return False


class Bumper:
    """Bumps the counter on the primary every ``interval`` seconds, on a
    connection and in a thread of its own, while the ``with`` block runs."""

    def __init__(self, *, conninfo: str, pk: int, interval: float = BUMP_INTERVAL) -> None:
        self.conninfo = conninfo
        self.pk = pk
        self.interval = interval
        self.bumps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counter-bumper", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        table = Counter._meta.db_table
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                while not self._stop.wait(self.interval):
                    conn.execute(f"UPDATE {table} SET value = value + 1 WHERE id = %s", (self.pk,))
                    self.bumps += 1
        except BaseException as exc:  # re-raised in the thread that runs the scenario
            self._error = exc

    def __enter__(self) -> Bumper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error


def _value_on(cluster: Cluster, name: str, dbname: str, pk: int) -> int:
    with cluster.connect(name, dbname) as conn:
        row = conn.execute(
            f"SELECT value FROM {Counter._meta.db_table} WHERE id = %s", (pk,)
        ).fetchone()
    return -1 if row is None else int(row[0])


@contextmanager
def lagging_counter(
    cluster: Cluster, dbname: str, delay: Callable[[str, float], None]
) -> Iterator[int]:
    """Create the counter, delay :data:`DELAYED`, bump the counter; yield its pk.

    ``delay`` is the ``delay_replica`` fixture or ``Cluster.delay``; undoing the
    delay is the caller's job. Yields once the delayed replica has applied a
    bump, that is, once it runs :data:`DELAY_SECONDS` behind a moving counter.
    """
    pk = Counter.objects.create().pk
    cluster.wait_replayed()
    delay(DELAYED, DELAY_SECONDS)
    with Bumper(conninfo=cluster.conninfo(PRIMARY, dbname), pk=pk):
        wait_for(lambda: _value_on(cluster, DELAYED, dbname, pk) > 0)
        yield pk


def rotation() -> dict[str, bool]:
    """Replica alias -> whether the monitor has it in rotation (and the balancer
    gives it a weight) right now."""
    monitor = get_monitor()
    assert monitor is not None, "the scenario needs the health monitor"
    weights = get_balancer().weights
    return {
        node.alias: node.in_rotation and weights.get(node.alias, 0) > 0
        for node in monitor.snapshot.replicas
    }


@dataclass
class Outcome:
    """What one run of the scenario saw."""

    #: The reads of each request (or causal() block), in order.
    groups: list[list[Read]]
    #: ``rotation()`` just before the first group and just after the last.
    rotation_before: dict[str, bool]
    rotation_after: dict[str, bool]
    #: (alias, old state, new state) of every change the monitor signalled meanwhile.
    state_changes: list[tuple[str, str, str]] = field(default_factory=list)
    #: The monitor's last figure for the delayed replica's lag, in seconds.
    delayed_lag_seconds: float | None = None

    @property
    def went_back(self) -> int:
        """How many groups went back at least once."""
        return sum(went_back([value for value, _ in group]) for group in self.groups)

    @property
    def served(self) -> Tally[str]:
        return Tally(alias for group in self.groups for _, alias in group)

    @property
    def replica_share(self) -> float:
        served = self.served
        total = sum(served.values())
        primary = settings.REPLICA_ROUTER.get("PRIMARY", "default")
        return (total - served[primary]) / total if total else 0.0

    @property
    def replicas_stayed_in_rotation(self) -> bool:
        return (
            all(self.rotation_before.values())
            and len(self.rotation_before) == 2
            and self.rotation_after == self.rotation_before
            and not self.state_changes
        )


def measure(pk: int, run: Callable[[], list[list[Read]]]) -> Outcome:
    """Wait until both replicas are in rotation, then ``run()`` and record what
    the monitor did meanwhile. Call it under :func:`configured`."""

    def ready() -> bool:
        Counter.objects.get(pk=pk)  # the first read starts the settings' monitor
        return all(rotation().values())

    wait_for(ready)
    before = rotation()
    changes: list[tuple[str, str, str]] = []

    def note(*, alias: str, old_state: str, new_state: str, **kwargs: object) -> None:
        changes.append((alias, old_state, new_state))

    replica_state_changed.connect(note)
    try:
        groups = run()
    finally:
        replica_state_changed.disconnect(note)
    monitor = get_monitor()
    assert monitor is not None
    return Outcome(
        groups=groups,
        rotation_before=before,
        rotation_after=rotation(),
        state_changes=changes,
        delayed_lag_seconds=monitor.snapshot.node(DELAYED).lag_seconds,
    )


def _page(client: Client, pk: int, *, write: bool = False) -> list[Read]:
    """One request of the counter page (a POST writes first): its reads."""
    response = client.post(f"/counter/{pk}/") if write else client.get(f"/counter/{pk}/")
    assert response.status_code == 200, response
    return [(value, alias) for value, alias in response.json()["reads"]]


def through_requests(pk: int, count: int) -> Callable[[], list[list[Read]]]:
    """``count`` requests of the counter page through Django's test Client."""

    def run() -> list[list[Read]]:
        client = Client()
        return [_page(client, pk) for _ in range(count)]

    return run


def through_pinned_requests(pk: int, count: int) -> Callable[[], list[list[Read]]]:
    """A client that writes once (and so carries a pin cookie), then makes
    ``count`` requests of the counter page; the write's request comes first."""

    def run() -> list[list[Read]]:
        client = Client()
        groups = [_page(client, pk, write=True)]
        assert client.cookies.get("replica_router"), "the write set no pin cookie"
        # Once the late replica has the write too, both replicas may serve the
        # client, so its requests could alternate between them.
        time.sleep(DELAY_SECONDS + 0.5)
        return groups + [_page(client, pk) for _ in range(count)]

    return run


def in_causal_blocks(pk: int, count: int) -> Callable[[], list[list[Read]]]:
    """``count`` ``with causal():`` blocks of the same reads, in a job's thread."""

    def job() -> list[list[Read]]:
        try:
            groups = []
            for _ in range(count):
                with causal():
                    group = []
                    for _ in range(READS_PER_REQUEST):
                        counter = Counter.objects.get(pk=pk)
                        group.append((counter.value, counter._state.db))
                groups.append(group)
            return groups
        finally:
            connections.close_all()

    def run() -> list[list[Read]]:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(job).result()

    return run
