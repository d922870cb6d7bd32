"""Gunicorn hosts serving the fleet site: :class:`Fleet` starts one, :func:`fleets` several.

A :class:`Fleet` is one gunicorn master (a "host") with N sync workers serving
``testbed/fleet_site`` on a free loopback port; several fleets on one Redis
stand for several hosts. :func:`all_states` and :func:`wait_all` read every
worker's ``/state/``.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from replica_router.testing.processes import children, free_port, process_alive
from replica_router.testing.redis_server import HOST

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "testbed" / "fleet_site" / "gunicorn.conf.py"


class Fleet:
    """One gunicorn master with ``workers`` sync workers; a context manager.

    ``settings`` become ``REPLICA_ROUTER_*`` environment variables read by
    ``testbed/fleet_site/settings.py`` (``HEALTH_SHARING="host"`` becomes
    ``REPLICA_ROUTER_HEALTH_SHARING=host``).
    """

    def __init__(self, *, workers: int, database: str, name: str = "fleet", **settings: Any):
        self.workers = workers
        self.name = name
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "testbed.fleet_site.settings",
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

    def states(self, timeout: float = 60.0) -> dict[int, dict[str, Any]]:
        """``/state/`` of every live worker, by pid.

        Bounded by time, not by a count of requests: a worker the master has
        just forked answers only once it has imported Django, and on a loaded
        machine the workers already up can take hundreds of requests first.
        """
        seen: dict[int, dict[str, Any]] = {}
        requests = 0
        deadline = time.monotonic() + timeout
        while True:
            state = self.get("/state/")
            requests += 1
            seen[state["pid"]] = state
            live = self.pids()
            if live and live <= seen.keys():
                return {pid: seen[pid] for pid in live}
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: saw workers {sorted(seen)} of {sorted(live)} "
                    f"in {requests} requests ({timeout:.0f} s)"
                )
            time.sleep(0.02)  # leave the CPU to the workers still starting


def all_states(fleets: Sequence[Fleet]) -> dict[int, dict[str, Any]]:
    states: dict[int, dict[str, Any]] = {}
    for fleet in fleets:
        states.update(fleet.states())
    return states


def worker_count(fleets: Sequence[Fleet]) -> int:
    return sum(fleet.workers for fleet in fleets)


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
