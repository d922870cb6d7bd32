"""The tour's steps, in order, each narrated and checked against the site.

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

import os
import re
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from demo_site import master_pid
from replica_router.health.probe import APPLICATION_NAME
from replica_router.testing.processes import children
from tour_background import MoreWorkers, Traffic, Watcher
from tour_client import (
    PRIMARY_ALIAS,
    Browser,
    Site,
    TourError,
    delta,
    name,
    served_by,
    spread,
)

COOKIE = "replica_router"  # REPLICA_ROUTER["COOKIE_NAME"]
#: How late both replicas apply WAL during the read-your-writes step.
APPLY_DELAY = 1.0
#: The site's CHECK_INTERVAL: a prober that hangs is replaced within two.
CHECK_INTERVAL = 1.0


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(number: int, text: str) -> None:
    say()
    say(f"{number}. {text}")
    say("-" * (len(text) + 3))


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
        master = master_pid(Path(self.cluster.dir))
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


def _prober_pid(status: dict[str, Any]) -> int | None:
    prober = status["sharing"]["prober"]
    return None if prober is None else int(prober["pid"])
