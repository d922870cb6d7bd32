"""Celery tasks read what their enqueuer wrote: ``replica_router.contrib.celery``.

The failure guarded against: a view creates a row and enqueues a task that
loads it; a worker picks the task up within milliseconds and reads from a
replica that has not replayed the write yet, so the task fails with
``DoesNotExist`` (or, worse, acts on old data).

Everything here is real: a Redis broker and result backend (a redis-server
this session started), messages serialized through it, Celery's own worker
(in this process, so it uses the test databases), and replicas that apply WAL
one second late.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import kombu.pools
import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish, task_postrun
from django.conf import settings
from django.db import connections
from django.test import override_settings

from replica_router import causal
from replica_router.context import causal_state
from replica_router.contrib.celery import HEADER, install, uninstall
from testbed.celery_app import CONCURRENT, make_app
from testbed.monotonic import configured, lagging_counter, measure
from testbed.polling import wait_for
from testbed.testapp.models import Author

pytestmark = pytest.mark.replica_routing

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)

# The health monitor would take a lagging replica out of rotation and so hide
# staleness; these tests are about the token alone, so it tolerates any lag.
TOLERANT = {"MAX_LAG_SECONDS": 3600.0, "MAX_LAG_BYTES": 2**40, "CHECK_INTERVAL": 0.2}
TASKS = 20
RESULT_TIMEOUT = 60


@pytest.fixture
def lagging(delay_replica) -> Iterator[None]:
    """Both replicas apply WAL 1 s late, and stay in rotation."""
    for name in settings.REPLICA_ROUTER["REPLICAS"]:
        delay_replica(name, 1.0)
    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, **TOLERANT}):
        yield


_apps = 0


@pytest.fixture
def new_app(redis_server: str) -> Callable[..., object]:
    """Build a Celery app on the session's Redis, with a queue of its own.

    Celery leaves every Redis connection of a result backend open: app.close()
    only forgets the broker pool. A backend is a reference cycle (with its
    result consumer), and each thread has one of its own, kept until the
    thread ends, so the garbage collector finalises its sockets later, unclosed,
    with a ResourceWarning (an error in this suite) in whichever test is
    running then. So each task's thread closes its backend's connections once
    the result is stored, and the fixture closes the test thread's and, after
    the module, kombu's broker pools.
    """
    made = []

    def close_task_connections(sender=None, **kwargs):
        if sender is not None and sender.app in made:
            sender.app.backend.client.connection_pool.disconnect()

    task_postrun.connect(close_task_connections, weak=False)

    def make(*, installed: bool):
        global _apps
        _apps += 1
        app = make_app(f"test-celery-{_apps}", redis_server)
        if installed:
            install(app)
        made.append(app)
        return app

    yield make
    task_postrun.disconnect(close_task_connections)
    for app in made:
        uninstall(app)
        app.backend.result_consumer.stop()
        app.backend.client.connection_pool.disconnect()
        app.close()


@pytest.fixture(autouse=True, scope="module")
def _close_broker_connections(redis_server: str) -> Iterator[None]:
    """Close kombu's pools after the module, then check that no connection
    to Redis is left: one that Celery left open fails this module, which made
    it, rather than whichever later test the garbage collector finalises it in."""
    # kombu's pools are global, one per broker URL, shared by every app here.
    yield
    kombu.pools.reset()
    gc.collect()
    port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    left = [sock for sock in gc.get_objects() if _connected_to(sock, port)]
    described = [repr(sock) for sock in left]
    for sock in left:  # so that they do not fail a later test as well
        sock.close()
    assert described == [], described


def _connected_to(sock: object, port: int) -> bool:
    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
        return False
    try:
        return bool(sock.getpeername()[1] == port)
    except OSError:
        return False


@contextmanager
def worker(app, pool: str = "threads", concurrency: int = 1):
    with start_worker(app, pool=pool, concurrency=concurrency, perform_ping_check=False):
        yield


@contextmanager
def published_headers() -> Iterator[dict[str, dict]]:
    """The headers of every message published meanwhile, by task id, as sent."""
    seen: dict[str, dict] = {}

    def record(headers=None, **kwargs):
        seen[headers["id"]] = dict(headers)

    before_task_publish.connect(record, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(record)


def create_and_enqueue(app, count: int) -> list:
    """Like ``count`` requests: each creates an author and at once enqueues a read of it."""
    results = []
    for i in range(count):
        with causal():  # what PrimaryPinningMiddleware gives each request
            author = Author.objects.create(name=f"new user {i}")
            results.append(app.tasks["read_author"].delay(author.pk))
    return [result.get(timeout=RESULT_TIMEOUT) for result in results]


@db
def test_tasks_read_the_row_their_enqueuer_just_wrote(new_app, lagging):
    app = new_app(installed=True)
    with worker(app), published_headers() as headers:
        reads = create_and_enqueue(app, TASKS)
    stale = [read for read in reads if not read["found"]]
    assert stale == []
    assert all(HEADER in sent for sent in headers.values())
    assert len(headers) == TASKS


@db
def test_a_prefork_worker_process_reads_the_row_its_enqueuer_just_wrote(
    new_app, lagging, redis_server, tmp_path
):
    """Celery's default pool: a worker process of its own (celery worker --pool prefork)."""
    app = new_app(installed=True)
    env = {
        **os.environ,
        "CELERY_TEST_APP": app.main,
        "CELERY_TEST_BROKER": redis_server,
        "CELERY_TEST_DATABASE": connections["default"].settings_dict["NAME"],
    }
    command = [sys.executable, "-m", "celery", "-A", "testbed.celery_worker", "worker"]
    options = ["--pool=prefork", "--concurrency=2", "--loglevel=WARNING", f"-n={app.main}@%h"]
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, *options, "--without-mingle", "--without-gossip"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Enqueue only once it consumes, or the replicas would catch up meanwhile.
        wait_for(lambda: bool(app.control.ping(timeout=0.5)), timeout=60)
        reads = create_and_enqueue(app, TASKS)
    finally:
        process.terminate()  # a warm shutdown: its child processes exit too
        process.wait(timeout=30)
    assert [read for read in reads if not read["found"]] == [], log.read_text()
    assert os.getpid() not in {read["pid"] for read in reads}


@db
def test_without_install_the_same_tasks_read_stale_rows(new_app, lagging):
    """The failure install() prevents, shown for real: proves the test above can fail.

    Another app in this process is installed, so the header is even sent; a
    worker of an app that is not installed ignores it.
    """
    new_app(installed=True)
    app = new_app(installed=False)
    with worker(app), published_headers() as headers:
        reads = create_and_enqueue(app, TASKS)
    assert all(HEADER in sent for sent in headers.values())
    stale = [read for read in reads if not read["found"]]
    assert len(stale) > 0


@db
def test_a_write_inside_a_task_pins_its_later_reads_to_the_primary(new_app, lagging):
    app = new_app(installed=True)
    with worker(app, pool="solo"):
        with causal():  # enqueued where nothing was written: no token
            result = app.tasks["create_then_read"].delay("written by the task")
        read = result.get(timeout=RESULT_TIMEOUT)
    assert read == {"found": True, "db": "default"}


@db
def test_a_task_enqueued_without_a_write_gets_no_header_and_runs(new_app, lagging):
    app = new_app(installed=True)
    with worker(app), published_headers() as headers:
        with causal():
            result = app.tasks["report_state"].delay()
        report = result.get(timeout=RESULT_TIMEOUT)
    assert HEADER not in headers[result.id]
    # It still runs in a causal block of its own, so a write would pin it.
    assert report == {"header": None, "in_causal": True, "min_lsn": None, "found": None}


@db
def test_concurrent_tasks_in_a_threads_pool_keep_their_own_tokens(new_app, lagging):
    app = new_app(installed=True)
    with worker(app, pool="threads", concurrency=CONCURRENT), published_headers() as headers:
        results = []
        for i in range(CONCURRENT):
            with causal():
                pk = Author.objects.create(name=f"concurrent {i}").pk
                results.append(app.tasks["report_state"].delay(pk, wait=True))
        reports = {result.id: result.get(timeout=RESULT_TIMEOUT) for result in results}
    sent = {task_id: headers[task_id][HEADER] for task_id in reports}
    assert len(set(sent.values())) == CONCURRENT  # four writes, four tokens
    for task_id, report in reports.items():
        assert report["header"] == sent[task_id]
        assert report["min_lsn"] == sent[task_id]  # its own token, not a neighbour's
        assert report["found"] is True


@db
def test_a_failing_task_leaves_no_causal_state_behind(new_app):
    app = new_app(installed=True)
    after: dict[str, object] = {}
    during = threading.Event()

    def look(task_id=None, **kwargs):  # connected after install(): runs after its exit
        after[task_id] = causal_state.get()

    def seen_during(task_id=None, **kwargs):
        if causal_state.get() is not None:
            during.set()

    from celery.signals import task_failure

    task_failure.connect(seen_during, weak=False)
    task_postrun.connect(look, weak=False)
    try:
        with worker(app, pool="solo"):
            with causal():
                Author.objects.create(name="before the failure")
                result = app.tasks["fail"].delay()
            with pytest.raises(RuntimeError, match="on purpose"):
                result.get(timeout=RESULT_TIMEOUT)
    finally:
        task_postrun.disconnect(look)
        task_failure.disconnect(seen_during)
    assert during.is_set()  # the failing task did run in a causal block
    assert after == {result.id: None}  # and it was closed


@db
def test_an_eager_task_runs_in_its_callers_context(new_app, lagging):
    """``task_always_eager`` runs the task inline: the caller's write pins it too."""
    app = new_app(installed=True)
    app.conf.task_always_eager = True
    with causal():
        author = Author.objects.create(name="eager")
        read = app.tasks["read_author"].delay(author.pk).get()
    assert (read["found"], read["db"]) == (True, "default")


@db
def test_a_retried_task_keeps_its_token(new_app, lagging):
    app = new_app(installed=True)
    with worker(app, pool="solo"), published_headers() as headers:
        with causal():
            pk = Author.objects.create(name="retried").pk
            result = app.tasks["retry_once"].delay(pk)
        report = result.get(timeout=RESULT_TIMEOUT)
    first = headers[result.id][HEADER]
    assert report == {"header": first, "found": True}


@db
def test_a_tasks_reads_never_go_back_in_time(new_app, replica_cluster, delay_replica):
    """Monotonic reads inside a task: with replica_1 1.5 s behind replica_2 and
    both in rotation, a task that reads a moving counter six times never sees
    it go back; without install(app) its reads alternate between the two."""
    dbname = connections["default"].settings_dict["NAME"]
    outcomes = {}
    with lagging_counter(replica_cluster, dbname, delay_replica) as pk, configured():
        for installed in (True, False):
            app = new_app(installed=installed)

            def run(app=app):
                with worker(app):
                    results = [app.tasks["read_counter"].delay(pk) for _ in range(TASKS)]
                    return [
                        [tuple(read) for read in result.get(timeout=RESULT_TIMEOUT)]
                        for result in results
                    ]

            outcomes[installed] = measure(pk, run)
    for outcome in outcomes.values():
        assert outcome.replicas_stayed_in_rotation, outcome.state_changes
    assert outcomes[True].went_back == 0, outcomes[True].groups
    assert outcomes[True].replica_share > 0.5, dict(outcomes[True].served)
    assert outcomes[False].went_back > 0  # the same tasks without it: the test can fail
