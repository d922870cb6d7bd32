"""What runs beside a step of the tour: client traffic, a watcher of one node's
state, and more gunicorn workers of the site.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from demo_site import GUNICORN_CONF, SITE_DIR
from replica_router.testing.processes import free_port
from tour_client import Browser, Site, TourError


class Watcher:
    """Polls one node's state in a thread, to tell what happened to it and when."""

    def __init__(self, site: Site, alias: str) -> None:
        self.site, self.alias = site, alias
        self._events: list[tuple[float, str]] = []
        self._states: list[tuple[float, str, bool]] = []
        self._last: tuple[str, bool] = ("unknown", False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        node = self.site.node(self.alias)  # the state before anything happens
        self._last = (node["state"], node["in_rotation"])
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def mark(self, text: str) -> float:
        """Note an event of the tour's own; return its time."""
        now = time.monotonic()
        with self._lock:
            self._events.append((now, text))
        return now

    def _poll(self) -> None:
        last = self._last
        while not self._stop.is_set():
            node = self.site.node(self.alias)
            now = time.monotonic()
            current = (node["state"], node["in_rotation"])
            with self._lock:
                if current != last:
                    self._events.append(
                        (now, f"{self.alias} {last[0]} -> {node['state']}: {node['reason']}")
                    )
                self._states.append((now, *current))
            last = current
            self._stop.wait(0.1)

    def wait_steady(self, *, in_rotation: bool, seconds: float, timeout: float) -> None:
        """Wait until the node has been (out of) rotation for ``seconds`` in a row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                states = list(self._states)
            now = time.monotonic()
            since = None
            for at, _, rotating in reversed(states):
                if rotating != in_rotation:
                    break
                since = at
            if since is not None and now - since >= seconds:
                return
            time.sleep(0.1)
        raise TourError(f"{self.alias} was not steadily in rotation within {timeout:g}s")

    def timeline(self, *, since: float) -> list[tuple[float, str]]:
        with self._lock:
            return sorted((at - since, text) for at, text in self._events)


class MoreWorkers:
    """A second gunicorn master with more workers of the same site, on a free
    port: more processes on this host, sharing the demo's lease."""

    def __init__(self, env: dict[str, str], *, workers: int) -> None:
        self.env, self.workers = env, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MoreWorkers:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.process = subprocess.Popen(
            [
                str(gunicorn),
                *("--config", str(GUNICORN_CONF)),
                *("--bind", f"127.0.0.1:{self.port}"),
                *("--workers", str(self.workers), "--threads", "2"),
            ],
            cwd=SITE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group, stopped as one
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/replicas/status.json", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise TourError(f"the extra gunicorn did not answer on {self.url}") from None
                time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


class Traffic:
    """Clients that GET pages nonstop in threads, counting failures."""

    def __init__(self, url: str, paths: list[str], *, clients: int) -> None:
        self.url, self.paths = url, paths
        self.clients = clients
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.count = self.failed = 0
        self.slowest = 0.0
        self.errors: list[str] = []
        self.started = self.elapsed = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.elapsed = time.monotonic() - self.started

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        browser = Browser(self.url)
        while not self._stop.is_set():
            path = rng.choice(self.paths)
            started = time.monotonic()
            error = None
            try:
                reply = browser.get(path)
                if reply.status != 200:
                    error = f"GET {path}: HTTP {reply.status}"
            except OSError as exc:
                error = f"GET {path}: {exc}"
            with self._lock:
                self.count += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                if error:
                    self.failed += 1
                    self.errors.append(error)
