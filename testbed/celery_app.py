"""Celery apps for tests/integration/test_celery.py and bench/bench_celery.py.

Each call of :func:`make_app` builds a separate app, with its own queue, on a
Redis broker, so a test can run one app with ``install(app)`` and one without
side by side. The tasks report what they saw rather than assert, so the test
that enqueued them can count stale reads.
"""

from __future__ import annotations

import os
import threading

from celery import Celery
from django.db import router, transaction

from replica_router.context import causal_state
from replica_router.contrib.celery import token_of
from replica_router.lsn import format_lsn
from testbed.testapp.models import Author, Counter

# The concurrency test holds this many tasks inside their causal blocks at once.
CONCURRENT = 4


def make_app(name: str, redis_url: str) -> Celery:
    """An app named ``name`` whose broker and result backend are that Redis."""
    app = Celery(name, broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=name,  # apps sharing one Redis never take each other's tasks
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=600,
    )
    barrier = threading.Barrier(CONCURRENT, timeout=30)

    @app.task(name="read_author", shared=False)
    def read_author(pk: int) -> dict:
        """What a welcome-mail task does: load the row the view just created."""
        author = Author.objects.filter(pk=pk).first()
        return {
            "found": author is not None,
            "db": author._state.db if author else None,
            "pid": os.getpid(),
        }

    @app.task(name="read_counter", shared=False)
    def read_counter(pk: int, reads: int = 6) -> list[tuple[int, str]]:
        """Read a counter several times, each read routed as usual."""
        seen = []
        for _ in range(reads):
            counter = Counter.objects.get(pk=pk)
            seen.append((counter.value, counter._state.db))
        return seen

    @app.task(name="create_then_read", shared=False)
    def create_then_read(name: str) -> dict:
        with transaction.atomic(using="default"):
            pk = Author.objects.create(name=name).pk
        author = Author.objects.filter(pk=pk).first()
        return {"found": author is not None, "db": router.db_for_read(Author)}

    @app.task(name="report_state", shared=False)
    def report_state(pk: int | None = None, wait: bool = False) -> dict:
        if wait:
            barrier.wait()  # every task is inside its own causal block now
        state = causal_state.get()
        min_lsn = None if state is None else state.min_lsn
        return {
            "header": token_of(report_state.request),
            "in_causal": state is not None,
            "min_lsn": None if min_lsn is None else format_lsn(min_lsn),
            "found": None if pk is None else Author.objects.filter(pk=pk).exists(),
        }

    @app.task(name="fail", shared=False)
    def fail() -> None:
        raise RuntimeError("this task fails on purpose")

    @app.task(name="retry_once", shared=False, bind=True, max_retries=1)
    def retry_once(self, pk: int) -> dict:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        author = Author.objects.filter(pk=pk).first()
        return {"header": token_of(self.request), "found": author is not None}

    return app
