"""The debug-toolbar panel's stats and template, with no database and no browser.

The browser test in sample_site/tests/test_debug_toolbar.py drives the real
toolbar against the cluster; this pins down what the panel makes of a trace:
plain values the toolbar can keep as JSON, the subtitle, the pin cookie in
words, and a template that renders them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import override_settings

from replica_router.conf import get_config
from replica_router.context import CausalState, causal_state
from replica_router.contrib.debug_toolbar import ReplicaRoutingPanel, _node_rows
from replica_router.health import NodeStatus, Snapshot, State
from replica_router.middleware import sign_pin
from replica_router.trace import _record_query, active_trace

ROUTER = {"REPLICAS": {"replica_1": 1, "replica_2": 1}, "HEALTH_CHECKS": False}
# The panel's template comes with the app, as a site's APP_DIRS finds it.
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]


@pytest.fixture(autouse=True)
def _routing_of_its_own():
    with override_settings(REPLICA_ROUTER=ROUTER, TEMPLATES=TEMPLATES):
        yield


def panel() -> ReplicaRoutingPanel:
    saved = {}
    toolbar = SimpleNamespace(
        stats={},
        request_id="r1",
        request=HttpRequest(),
        store=SimpleNamespace(
            save_panel=lambda request_id, panel_id, data: saved.update({panel_id: data})
        ),
        saved=saved,
    )
    return ReplicaRoutingPanel(toolbar, lambda request: HttpResponse())


def run(p: ReplicaRoutingPanel, queries: list[tuple[str, str | None, str]]) -> None:
    """(alias, the decision before it or None, SQL) for each query of a request."""
    trace = active_trace()
    assert trace is not None
    for alias, reason, sql in queries:
        if reason is not None:
            trace.decide(alias, reason)
        trace.record(alias=alias, sql=sql, seconds=0.002)


def test_the_stats_are_plain_values_with_one_row_per_query():
    p = panel()
    p.enable_instrumentation()
    p.enable_instrumentation()  # idempotent, as the toolbar asks
    run(
        p,
        [
            ("replica_1", "replica", "SELECT 1"),
            ("replica_1", "replica", "SELECT 2"),
            ("default", None, "SELECT 3"),
        ],
    )
    p.disable_instrumentation()
    p.generate_stats(HttpRequest(), HttpResponse())
    stats = p.toolbar.saved["ReplicaRoutingPanel"]
    json.dumps(stats)  # the toolbar keeps it as JSON
    assert [(q["alias"], q["reason"]) for q in stats["queries"]] == [
        ("replica_1", "replica"),
        ("replica_1", "replica"),
        ("default", "direct"),
    ]
    assert stats["on_replicas"] == 2
    assert stats["reasons"] == [("replica", 2), ("direct", 1)]
    assert p.nav_subtitle == "3 queries: 2 on replicas"
    html = p.content
    assert html.count('data-query="') == 3
    assert 'data-reason="direct"' in html
    assert "No health monitor" in html
    # The block is over: nothing traces, nothing is left on the connections.
    assert active_trace() is None
    assert all(_record_query not in c.execute_wrappers for c in connections.all())


def test_under_asgi_the_connections_are_watched_from_the_views_thread():
    p = panel()
    async_to_sync(p.aenable_instrumentation)()
    try:
        assert all(c.execute_wrappers.count(_record_query) == 1 for c in connections.all())
    finally:
        p.disable_instrumentation()
    p.generate_stats(HttpRequest(), HttpResponse())
    assert p.nav_subtitle == "0 queries: 0 on replicas"
    assert "No SQL queries." in p.content


def test_the_pin_cookie_in_words_sent_and_set():
    config = get_config()
    request = HttpRequest()
    request.COOKIES[config.cookie_name] = sign_pin("lsn:0/3000148@replica_2")
    response = HttpResponse()
    response.set_cookie(config.cookie_name, sign_pin("lsn:0/4000000"), max_age=5)
    p = panel()
    p.enable_instrumentation()
    p.disable_instrumentation()
    p.generate_stats(request, response)
    rows = dict(p.get_stats()["pin"])
    sent = rows[f"Pin cookie {config.cookie_name!r} sent"]
    assert sent == "reads must see WAL position 0/3000148, from replica_2 (monotonic reads)"
    assert rows[f"Pin cookie {config.cookie_name!r} set by the response"] == (
        "reads must see WAL position 0/4000000 (for 5 s)"
    )
    assert rows["During the request"].startswith("no causal state")

    request.COOKIES[config.cookie_name] = "forged"
    response = HttpResponse()
    response.delete_cookie(config.cookie_name)
    p = panel()
    p.enable_instrumentation()
    p.disable_instrumentation()
    p.generate_stats(request, response)
    rows = dict(p.get_stats()["pin"])
    assert rows[f"Pin cookie {config.cookie_name!r} sent"].startswith("ignored")
    assert rows[f"Pin cookie {config.cookie_name!r} set by the response"].startswith("cleared")


def test_the_causal_state_of_the_request_in_words():
    state = CausalState(min_lsn=0x3000148, reading_from="default")
    state.wrote = True
    state.checked = {"replica_1": False, "replica_2": True}
    request = HttpRequest()
    request.COOKIES[get_config().cookie_name] = sign_pin("time")  # from "time" mode
    p = panel()
    reset = causal_state.set(state)
    try:
        p.enable_instrumentation()
        p.disable_instrumentation()
    finally:
        causal_state.reset(reset)
    p.generate_stats(request, HttpResponse())
    rows = dict(p.get_stats()["pin"])
    assert rows["During the request"] == (
        "wrote on the primary: later reads are pinned there; "
        "reads had to see WAL position 0/3000148; "
        "checked: replica_1 had not replayed it, replica_2 has replayed it; "
        "reads came from default (monotonic reads)"
    )
    sent = rows[f"Pin cookie {get_config().cookie_name!r} sent"]
    assert sent.startswith("pinned to the primary")


def test_each_node_of_the_snapshot_is_a_row():
    now = datetime.now(UTC)
    common = {"host": "h", "port": "5432", "since": now}
    snapshot = Snapshot(
        nodes=(
            NodeStatus(
                alias="default",
                role="primary",
                weight=None,
                state=State.HEALTHY,
                in_rotation=True,
                reason="reachable",
                **common,
            ),
            NodeStatus(
                alias="replica_1",
                role="replica",
                weight=2,
                state=State.LAGGING,
                in_rotation=False,
                reason="lag 6s",
                lag_seconds=6.12345,
                lag_bytes=100,
                lsn=0x3000148,
                **common,
            ),
        ),
        taken_at=now,
    )
    rows = _node_rows(snapshot)
    assert rows[1] == {
        "alias": "replica_1",
        "role": "replica",
        "state": "lagging",
        "in_rotation": False,
        "weight": 2,
        "lag_seconds": 6.123,
        "lag_bytes": 100,
        "lsn": "0/3000148",
        "why": "lag 6s",
    }
    assert _node_rows(None) == []
