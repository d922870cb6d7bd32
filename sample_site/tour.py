#!/usr/bin/env python
"""The demo's narrated tour: real HTTP traffic against the running bookshop.

``make demo`` runs it once the site is up; run it again against the running
demo with ``python sample_site/demo.py tour``. It drives the site with plain
``urllib`` (cookies kept like a browser's), reads the per-alias read counters
at /replicas/status.json, and breaks the local cluster on purpose:

1. reads spread over the replicas by weight (2:1);
2. read-your-writes: a form POST, then reads on the primary until the
   replicas have replayed the write, then on the replicas again;
3. a replica whose replay is paused leaves rotation and returns on resume;
4. a replica killed under load: no request fails;
5. one prober for the host: three more gunicorn workers join the demo's, the
   nodes still see one monitor connection each, and when the prober hangs
   (SIGSTOP) another process takes over;
6. the final ``manage.py replica_health`` table.

Every wait has a deadline, so the tour ends in about a minute or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

SITE_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SITE_DIR))

from bookshop.demo_account import STAFF_PASSWORD, STAFF_USERNAME  # noqa: E402
from replica_router.health.probe import APPLICATION_NAME  # noqa: E402
from replica_router.testing.processes import children, free_port  # noqa: E402

PRIMARY_ALIAS = "default"
COOKIE = "replica_router"  # REPLICA_ROUTER["COOKIE_NAME"]
#: How late both replicas apply WAL during the read-your-writes step.
APPLY_DELAY = 1.0
GUNICORN_CONF = SITE_DIR / "bookshop_site" / "gunicorn.conf.py"
#: The site's CHECK_INTERVAL: a prober that hangs is replaced within two.
CHECK_INTERVAL = 1.0


class TourError(RuntimeError):
    """The site did not behave as the tour expects."""


# -- an HTTP client that behaves like a browser -----------------------------------


@dataclass
class Response:
    status: int
    headers: Message
    body: str
    elapsed: float

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class _ShowRedirects(urllib.request.HTTPRedirectHandler):
    # Return redirects to the caller, who follows them (to look at each step).
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """Keeps cookies (the session, CSRF and the router's pin cookie) like a browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _ShowRedirects()
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> Response:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        started = time.monotonic()
        try:
            with self._opener.open(self.base_url + path, body, timeout=15) as reply:
                status, headers, raw = reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx, 5xx
            status, headers, raw = error.code, error.headers, error.read()
        return Response(status, headers, raw.decode(), time.monotonic() - started)

    def get(self, path: str) -> Response:
        return self.request(path)

    def post(self, path: str, fields: dict[str, str]) -> Response:
        token = self.cookie("csrftoken")
        if token is None:
            raise TourError(f"no CSRF cookie before POST {path}: GET a page with the form first")
        return self.request(path, {**fields, "csrfmiddlewaretoken": token})

    def cookie(self, name: str) -> str | None:
        for cookie in self.jar:
            if cookie.name == name:
                return cookie.value
        return None

    def login(self, username: str, password: str) -> None:
        self.get("/accounts/login/")
        reply = self.post("/accounts/login/", {"username": username, "password": password})
        if reply.status != 302:
            raise TourError(f"could not log in as {username!r} (HTTP {reply.status})")


# -- what the site reports ---------------------------------------------------------


class Site:
    """The running site, seen through /replicas/status.json as a staff user."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/")
        self.staff = Browser(base_url)
        self.staff.login(STAFF_USERNAME, STAFF_PASSWORD)

    def status(self) -> dict[str, Any]:
        reply = self.staff.get("/replicas/status.json")
        if reply.status != 200:
            raise TourError(f"/replicas/status.json answered HTTP {reply.status}")
        document: dict[str, Any] = json.loads(reply.body)
        return document

    def reader(self, tries: int = 50) -> dict[str, Any]:
        """The sharing status seen by a process that does not probe."""
        for _ in range(tries):
            sharing: dict[str, Any] = self.status()["sharing"]
            if not sharing["probing_here"]:
                return sharing
        raise TourError(f"every process of {self.url} says it probes")

    def node(self, alias: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        for node in (status or self.status())["nodes"]:
            if node["alias"] == alias:
                return dict(node)
        raise TourError(f"no node {alias!r} in /replicas/status.json")

    def reads(self) -> dict[str, int]:
        """Reads served so far by each alias (the counters never go down)."""
        return {node["alias"]: node["reads_total"] for node in self.status()["nodes"]}

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> float:
        """Poll the status until ``predicate`` holds; return the seconds it took."""
        started = time.monotonic()
        while True:
            if predicate(self.status()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TourError(f"not {what} after {timeout:g}s")
            time.sleep(0.1)

    def wait_node(self, alias: str, what: str, test: Callable[[dict[str, Any]], bool]) -> float:
        return self.wait(f"{alias} {what}", lambda s: test(self.node(alias, s)), timeout=30)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {alias: after.get(alias, 0) - before.get(alias, 0) for alias in after}


def name(alias: str) -> str:
    return "primary" if alias == PRIMARY_ALIAS else alias


def spread(reads: dict[str, int]) -> str:
    """``replica_1 120 (66.7%), replica_2 60 (33.3%), primary 0``: replicas first."""
    total = sum(reads.values()) or 1
    order = sorted(reads, key=lambda alias: (alias == PRIMARY_ALIAS, alias))
    return ", ".join(f"{name(a)} {reads[a]} ({100 * reads[a] / total:.1f}%)" for a in order)


def served_by(reads: dict[str, int]) -> str:
    """Who served a request's reads: ``primary``, ``replica_1 + primary``..."""
    serving = [name(alias) for alias, count in sorted(reads.items()) if count]
    return " + ".join(serving) or "nobody"


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(number: int, text: str) -> None:
    say()
    say(f"{number}. {text}")
    say("-" * (len(text) + 3))


# -- the tour ------------------------------------------------------------------------


class Tour:
    def __init__(self, url: str, cluster: Any, manage: list[str], env: dict[str, str]) -> None:
        self.url = url.rstrip("/")
        self.cluster = cluster
        self.manage = manage
        self.env = env
        self.site = Site(url)
        self.visitor = Browser(url)  # never writes: no pin cookie, reads by weight
        self.started = time.monotonic()
        self.pages = [f"/?page={n}" for n in range(1, 11)]
        self.books = self._book_paths()

    def _book_paths(self) -> list[str]:
        paths = re.findall(r'href="(/books/\d+/)"', self.visitor.get("/").body)
        if not paths:
            raise TourError("the book list shows no books: was the site seeded?")
        return list(dict.fromkeys(paths))

    def views(self, count: int) -> dict[str, int]:
        """Make ``count`` views of the book list as the visitor; return reads per alias."""
        before = self.site.reads()
        for index in range(count):
            path = self.pages[index % len(self.pages)]
            reply = self.visitor.get(path)
            if reply.status != 200:
                raise TourError(f"GET {path} answered HTTP {reply.status}")
        return delta(before, self.site.reads())

    def run(self) -> None:
        status = self.site.status()
        replicas = [n for n in status["nodes"] if n["role"] == "replica"]
        say(f"Site: {self.url}  (gunicorn, 1 worker x 8 threads)")
        say(
            "Nodes: primary + "
            + ", ".join(f"{n['alias']} (weight {n['weight']})" for n in replicas)
            + f"; health: {status['status']}"
        )
        self.site.wait("ok", lambda s: s["status"] == "ok", timeout=30)
        self.spread()
        self.read_your_writes()
        self.paused_replica()
        self.killed_replica()
        self.one_prober()
        self.health_table()
        say()
        say(f"Tour done in {time.monotonic() - self.started:.0f}s.")

    # 1 ---------------------------------------------------------------------------
    def spread(self) -> None:
        heading(1, "Reads are spread over the replicas by weight (2:1)")
        count = 60
        reads = self.views(count)
        say(f"{count} page views of the book list made {sum(reads.values())} reads:")
        say(f"  {spread(reads)}")
        if reads.get(PRIMARY_ALIAS):
            raise TourError(f"the primary served reads of an idle visitor: {reads}")
        one, two = reads.get("replica_1", 0), reads.get("replica_2", 0)
        if not two or abs(one / two - 2) > 0.25:
            raise TourError(f"reads are not spread 2:1: {reads}")
        say(f"  replica_1 : replica_2 = {one / two:.2f} : 1, as the weights 2 and 1 ask.")

    # 2 ---------------------------------------------------------------------------
    def read_your_writes(self) -> None:
        heading(2, "Read-your-writes: a form POST, then reads that see it")
        cluster, replicas = self.cluster, self.cluster.replicas
        # The monitor measures a replica that has WAL to apply by the age of the
        # last commit it replayed. A no-op commit now, replayed before the delay
        # starts, keeps an idle spell from counting as lag: the replicas stay in
        # rotation, and only the pin keeps this visitor's reads off them.
        cluster.query("primary", "SELECT txid_current()")
        cluster.wait_replayed()
        for replica in replicas:
            cluster.delay(replica, APPLY_DELAY)  # returns once it has taken effect
        try:
            self._post_and_read()
        finally:
            for replica in replicas:
                cluster.delay(replica, 0)

    def _post_and_read(self) -> None:
        say(
            f"Both replicas now apply WAL {APPLY_DELAY:g} s late "
            "(recovery_min_apply_delay), as busy replicas would."
        )
        reader = Browser(self.url)
        book = self.books[0]
        reader.get(book)  # the form, and its CSRF cookie
        marker = f"Tour review {int(time.time() * 1000)}"
        posted = reader.post(f"{book}reviews/", {"reviewer": "Tour", "rating": "5", "text": marker})
        if posted.status != 302:
            raise TourError(f"the review POST answered HTTP {posted.status}")
        pin = reader.cookie(COOKIE)
        if pin is None:
            raise TourError("the write set no pin cookie")
        # "lsn:0/3000148:<timestamp>:<signature>", quoted because of the slash.
        kind, _, rest = pin.strip('"').partition(":")
        if kind != "lsn":
            raise TourError(f"the pin cookie is not an LSN pin: {pin!r}")
        position = rest.split(":")[0]
        say(f"POST {book}reviews/ -> {posted.status} in {posted.elapsed * 1000:.0f} ms")
        say(f"  the response sets the signed cookie {COOKIE}=lsn:{position}...: the")
        say("  primary's WAL position after this write")
        target = urllib.parse.urlsplit(posted.location).path
        written = time.monotonic()
        rows: list[tuple[float, str, bool, bool]] = []
        while time.monotonic() - written < 10:
            before = self.site.reads()
            reply = reader.get(target)
            reads = delta(before, self.site.reads())
            rows.append(
                (
                    time.monotonic() - written,
                    served_by(reads),
                    marker in reply.body,
                    reader.cookie(COOKIE) is not None,
                )
            )
            if not rows[-1][2]:
                raise TourError(f"GET {target} after the POST did not show the new review")
            on_replica = PRIMARY_ALIAS not in {a for a, n in reads.items() if n}
            if on_replica and not rows[-1][3]:
                break
            time.sleep(0.2)
        else:
            raise TourError("reads did not come back to the replicas within 10 s")
        say(f"GET {target} every 0.2 s; the new review is on every page:")
        groups: list[list[tuple[float, str, bool, bool]]] = []
        for row in rows:
            if groups and groups[-1][-1][1::2] == row[1::2]:
                groups[-1].append(row)
            else:
                groups.append([row])
        for group in groups:
            first, last = group[0][0], group[-1][0]
            when = f"+{first:.2f} s" if len(group) == 1 else f"+{first:.2f} to +{last:.2f} s"
            views = f"{len(group)} page view{'s' if len(group) > 1 else ''}"
            cookie = "pin cookie kept" if group[0][3] else "pin cookie dropped"
            say(f"  {when:<18} {views:<13} served by {group[0][1]:<22} {cookie}")
        say(
            "The primary served them until the replicas had replayed the write, then the "
            "replicas did;"
        )
        say(
            "on a replica, the cookie names the replica it read from, so this visitor's next "
            "pages read"
        )
        say(
            "there (monotonic reads); it expires PIN_SECONDS after the write, and the browser "
            "drops it."
        )

    # 3 ---------------------------------------------------------------------------
    def paused_replica(self) -> None:
        heading(3, "A replica that falls behind leaves rotation, and comes back")
        victim = "replica_2"
        writer = Browser(self.url)
        writer.get(self.books[1])
        self.cluster.pause(victim)
        try:
            for index in range(3):
                reply = writer.post(
                    f"{self.books[1]}reviews/",
                    {"reviewer": "Tour", "rating": "4", "text": f"Written while paused {index}"},
                )
                if reply.status != 302:
                    raise TourError(f"a review POST answered HTTP {reply.status}")
            say(f"Paused WAL replay on {victim} and posted 3 reviews (real writes).")
            took = self.site.wait_node(victim, "out of rotation", lambda n: not n["in_rotation"])
            node = self.site.node(victim)
            say(f"  {victim} is {node['state']} after {took:.1f} s: {node['reason']}")
            say(f"  (lag {node['lag_seconds']} s, {node['lag_bytes']:,} bytes)")
            reads = self.views(30)
            say(f"  30 page views: {spread(reads)}")
            if reads.get(victim):
                raise TourError(f"{victim} served reads while out of rotation: {reads}")
        finally:
            self.cluster.resume(victim)
        took = self.site.wait_node(victim, "back in rotation", lambda n: n["in_rotation"])
        say(
            f"Resumed replay: {victim} is back after {took:.1f} s "
            "(RECOVERY_CHECKS = 2 good probes in a row)."
        )
        reads = self.views(30)
        say(f"  30 page views: {spread(reads)}")
        if not reads.get(victim):
            raise TourError(f"{victim} is back in rotation but served no reads: {reads}")

    # 4 ---------------------------------------------------------------------------
    def killed_replica(self) -> None:
        heading(4, "A replica killed under load: no request fails")
        victim = "replica_1"
        traffic = Traffic(self.url, self.pages + self.books, clients=4)
        watcher = Watcher(Site(self.url), victim)
        traffic.start()
        try:
            time.sleep(1.0)
            watcher.start()
            self.cluster.kill(victim)
            killed = watcher.mark(f"{victim} SIGKILLed (its postmaster and every backend)")
            before = self.site.reads()
            say(f"4 clients read pages nonstop; after 1 s, {victim} is killed.")
            self.site.wait_node(victim, "down", lambda n: n["state"] == "down")
            time.sleep(3.0)
            during = delta(before, self.site.reads())
            self.cluster.start(victim)
            self.cluster.wait_streaming([victim])
            watcher.mark(f"{victim} started again, streaming")
            # Back, and staying back: a return to rotation may not last.
            watcher.wait_steady(in_rotation=True, seconds=2.0, timeout=40)
            before = self.site.reads()
            time.sleep(1.5)
            after = delta(before, self.site.reads())
        finally:
            watcher.stop()
            traffic.stop()
        for at, text in watcher.timeline(since=killed):
            say(f"  {f'+{at:.2f} s':>8}  {text}")
        say(f"Reads while {victim} was down:  {spread(during)}")
        say(f"Reads once it was back:        {spread(after)}")
        say(
            f"{traffic.count} requests in {traffic.elapsed:.1f} s, {traffic.failed} failed, "
            f"slowest {traffic.slowest * 1000:.0f} ms."
        )
        if traffic.slowest > 0.9:
            say(
                "(A read already waiting for a connection to the dead replica waits at most "
                "its pool_timeout, 1 s,"
            )
            say(" then is served by another replica.)")
        if traffic.failed:
            raise TourError(f"{traffic.failed} requests failed: {traffic.errors[:3]}")
        if during.get(victim):
            raise TourError(f"{victim} served reads while it was down: {during}")
        if not after.get(victim):
            raise TourError(f"{victim} is back in rotation but served no reads: {after}")

    # 5 ---------------------------------------------------------------------------
    def one_prober(self) -> None:
        heading(5, "One prober for the host: a lease, readers, a takeover")
        nodes = self.cluster.nodes
        with MoreWorkers(self.env, workers=3) as more:
            self.wait_monitor_connections(1)
            say(
                "3 more gunicorn workers now serve the site beside the demo's: 4 processes, "
                'each with a health monitor (HEALTH_SHARING = "host").'
            )
            counts = self.monitor_connections()
            say(
                "Monitor connections per node: "
                + ", ".join(f"{name(node)} {counts[node]}" for node in nodes)
                + " (one each, not 4)."
            )
            sites = {"demo": self.site, "more": Site(more.url)}
            prober = self.site.status()["sharing"]["prober"]
            victim = prober["pid"]
            # Watch from the processes the victim is not among: a stopped
            # process answers no request.
            watch = sites["more"] if victim == self.worker_pid() else sites["demo"]
            reader = watch.reader()
            say(
                f"The prober: pid {victim} on {prober['host']}, lease held for "
                f"{watch.status()['sharing']['lease_age_seconds']:.1f} s. It probes every node "
                "and publishes a snapshot"
            )
            say(
                f"that the others read: a page served by a reader shows one "
                f"{reader['snapshot_age_seconds']:.1f} s old."
            )
            traffic = Traffic(watch.url, self.pages + self.books, clients=2)
            traffic.start()
            try:
                time.sleep(0.5)
                os.kill(victim, signal.SIGSTOP)
                try:
                    took = watch.wait(
                        "a new prober",
                        lambda s: (
                            _prober_pid(s) not in (None, victim)
                            and (s["sharing"]["snapshot_age_seconds"] or 0) < CHECK_INTERVAL
                        ),
                        timeout=30,
                    )
                    new = watch.status()["sharing"]["prober"]["pid"]
                    time.sleep(0.5)
                finally:
                    os.kill(victim, signal.SIGCONT)
                self.wait_monitor_connections(1)
            finally:
                traffic.stop()
            say(
                f"SIGSTOP pid {victim} (a hung prober): its lease ran out, and pid {new} took "
                f"over after {took:.1f} s (CHECK_INTERVAL {CHECK_INTERVAL:g} s)."
            )
            say(
                f"SIGCONT: pid {victim} finds the lease taken and reads the snapshot again; "
                "one monitor connection per node still."
            )
            say(
                f"Meanwhile: {traffic.count} requests, {traffic.failed} failed, "
                f"slowest {traffic.slowest * 1000:.0f} ms."
            )
        if traffic.failed:
            raise TourError(f"{traffic.failed} requests failed: {traffic.errors[:3]}")
        if took > 2 * CHECK_INTERVAL:
            raise TourError(f"the takeover took {took:.1f} s, more than two intervals")

    def worker_pid(self) -> int | None:
        """The demo's gunicorn worker (the master's child), or None."""
        master = demo_master(self.cluster)
        if master is None:
            return None
        workers = children(master)
        return workers[0] if workers else None

    def monitor_connections(self) -> dict[str, int]:
        return {
            node: int(
                self.cluster.query(
                    node,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    [APPLICATION_NAME],
                )
            )
            for node in self.cluster.nodes
        }

    def wait_monitor_connections(self, expected: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while set((counts := self.monitor_connections()).values()) != {expected}:
            if time.monotonic() > deadline:
                raise TourError(f"monitor connections never {expected} per node: {counts}")
            time.sleep(0.1)

    # 6 ---------------------------------------------------------------------------
    def health_table(self) -> None:
        heading(6, "manage.py replica_health")
        result = subprocess.run(
            [*self.manage, "replica_health"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in result.stdout.rstrip().splitlines():
            say(f"  {line}".rstrip())
        if result.returncode != 0:
            say(result.stderr)
            raise TourError(f"replica_health exited with status {result.returncode}")


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


def _prober_pid(status: dict[str, Any]) -> int | None:
    prober = status["sharing"]["prober"]
    return None if prober is None else int(prober["pid"])


def demo_master(cluster: Any) -> int | None:
    """The demo's gunicorn master, from the pid file demo.py gives it."""
    try:
        return int((Path(cluster.dir) / "gunicorn.pid").read_text())
    except (OSError, ValueError):
        return None


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


def main(argv: list[str] | None = None) -> int:
    """Run the tour against the running demo (``demo.py tour`` does this)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="the demo's cluster directory (default: the Makefile's)")
    args = parser.parse_args(argv)
    import demo

    return demo.main([*(["--dir", args.dir] if args.dir else []), "tour"])


if __name__ == "__main__":
    sys.exit(main())
