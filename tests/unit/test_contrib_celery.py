"""replica_router.contrib.celery without a broker: the signal wiring and the header.

The real path, through Redis and a worker, is tests/integration/test_celery.py.
Here the handlers are driven through Celery's own signals, as a worker would.
"""

from __future__ import annotations

import contextvars
import logging

import pytest
from celery import Celery, signals

from replica_router import causal
from replica_router.context import causal_state
from replica_router.contrib.celery import HEADER, install, token_of, uninstall
from replica_router.lsn import parse_lsn

UID = "replica_router.contrib.celery"
SIGNALS = (signals.before_task_publish, signals.task_prerun, signals.task_postrun)


def ours(signal) -> int:
    return sum(1 for key, _ in signal.receivers if str(key[0]).startswith(UID))


def make_app(name: str = "unit"):
    app = Celery(name, set_as_current=False)

    @app.task(name="unit.noop", shared=False)
    def noop():
        return None

    return app


@pytest.fixture
def app():
    app = make_app()
    yield app
    uninstall(app)


def publish(headers: dict) -> dict:
    """What the publishing side sends, in a fresh context (no write recorded)."""
    contextvars.Context().run(
        signals.before_task_publish.send, sender="unit.noop", headers=headers, body=((), {}, {})
    )
    return headers


def publish_under(token: str | None) -> dict:
    def run():
        with causal(token):
            headers: dict = {}
            signals.before_task_publish.send(sender="unit.noop", headers=headers, body=())
            return headers

    return contextvars.Context().run(run)


def run_task(task, **request):
    """prerun, the body (which reports the causal state), postrun, as the worker's tracer."""
    task.push_request(id="task-1", **request)
    try:
        signals.task_prerun.send(sender=task, task_id="task-1", task=task, args=(), kwargs={})
        during = causal_state.get()
        signals.task_postrun.send(
            sender=task, task_id="task-1", task=task, args=(), kwargs={}, retval=None
        )
        return during, causal_state.get()
    finally:
        task.pop_request()


def test_installing_twice_connects_each_signal_once(app):
    install(app)
    install(app)
    assert [ours(signal) for signal in SIGNALS] == [1, 1, 1]


def test_uninstall_disconnects_with_the_last_app(app):
    other = make_app("other")
    install(app)
    install(other)
    uninstall(other)
    assert [ours(signal) for signal in SIGNALS] == [1, 1, 1]
    uninstall(app)
    assert [ours(signal) for signal in SIGNALS] == [0, 0, 0]


def test_the_token_a_task_runs_under_travels_to_the_tasks_it_enqueues(app):
    install(app)
    # A task enqueued by a task that read under this token needs it as much.
    assert publish_under("0/3000148") == {HEADER: "0/3000148"}


def test_no_token_no_header(app):
    install(app)
    assert publish_under(None) == {}
    assert publish({"id": "x"}) == {"id": "x"}


def test_nothing_is_sent_once_uninstalled(app):
    install(app)
    uninstall(app)
    assert publish_under("0/3000148") == {}


@pytest.mark.parametrize(
    ("request_fields", "token"),
    [
        ({HEADER: "0/10"}, "0/10"),  # protocol 2: custom headers become request attributes
        ({"headers": {HEADER: "0/10"}}, "0/10"),  # Task.apply(headers=...)
        ({}, None),
        ({HEADER: 16}, None),  # not ours to interpret
    ],
)
def test_token_of_a_request(app, request_fields, token):
    task = app.tasks["unit.noop"]
    task.push_request(**request_fields)
    try:
        assert token_of(task.request) == token
    finally:
        task.pop_request()


def test_a_task_runs_inside_causal_of_its_token_and_leaves_nothing_behind(app):
    install(app)
    during, after = run_task(app.tasks["unit.noop"], **{HEADER: "0/3000148"})
    assert during is not None
    assert during.min_lsn == parse_lsn("0/3000148")
    assert not during.wrote
    assert after is None


def test_a_task_without_a_token_still_gets_a_causal_block(app):
    install(app)
    during, after = run_task(app.tasks["unit.noop"])
    assert during is not None and during.min_lsn is None
    assert after is None


def test_a_malformed_token_sends_the_tasks_reads_to_the_primary(app, caplog):
    install(app)
    with caplog.at_level(logging.WARNING, logger="replica_router"):
        during, after = run_task(app.tasks["unit.noop"], **{HEADER: "not-a-position"})
    assert during is not None and during.wrote  # wrote: reads go to the primary
    assert after is None
    assert "malformed" in caplog.text


def test_eager_tasks_are_left_in_their_callers_context(app):
    install(app)
    with causal() as caller:
        during, after = run_task(app.tasks["unit.noop"], is_eager=True)
    assert during is caller and after is caller


def test_tasks_of_an_app_that_is_not_installed_are_left_alone(app):
    install(app)
    other = make_app("other")
    during, _ = run_task(other.tasks["unit.noop"], **{HEADER: "0/10"})
    assert during is None
