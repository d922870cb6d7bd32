"""``manage.py replica_health`` against the real cluster.

It is what an operator runs when reads misbehave, and what a cron job or a
deploy script runs with ``--check``: it must tell the truth about each node as
it is *now* (it probes live), exit with the status a script can act on, and
never print a database password.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.management.color import color_style
from django.db import connections
from django.test import override_settings

from replica_router.management.commands.replica_health import COLUMNS
from replica_router.testing.cluster import PRIMARY, Cluster
from testbed.testapp.models import Author

pytestmark = pytest.mark.replica_routing

ALL = ["default", "replica_1", "replica_2"]
db = pytest.mark.django_db(databases=ALL, transaction=True)
PASSWORD = "s3cret-pw"  # every alias's PASSWORD in testbed.settings
ROOT = Path(__file__).resolve().parents[2]
STATES = {"healthy", "lagging", "down", "ejected", "unknown"}
LSN = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")

# The documented JSON schema (docs/replica-health.md): key -> allowed JSON types.
NUMBER = (int, float)
NODE_SCHEMA = {
    "alias": (str,),
    "role": (str,),
    "state": (str,),
    "in_rotation": (bool,),
    "lag_seconds": (*NUMBER, type(None)),
    "lag_bytes": (int, type(None)),
    "recovery_conflicts": (int, type(None)),
    "recovery_conflicts_per_second": (*NUMBER, type(None)),
    "source": (str,),
    "host": (str,),
    "port": (str,),
    "weight": (int, type(None)),
    "reason": (str,),
    "since": (str,),
    "checked_at": (str, type(None)),
    "rtt_ms": (*NUMBER, type(None)),
    "lsn": (str, type(None)),
    "last_error": (str, type(None)),
    "pool": (dict, type(None)),
}
POOL_SCHEMA = {"size": int, "idle": int, "waiting": int}


def node_name(alias: str) -> str:
    """The cluster node behind a DATABASES alias."""
    return PRIMARY if alias == "default" else alias


def run(*args: str, **options) -> tuple[int, str]:
    """Run the command like ``manage.py`` would; return (exit status, output)."""
    out = StringIO()
    try:
        call_command("replica_health", *args, stdout=out, stderr=out, **options)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def run_json(*args: str) -> tuple[int, dict]:
    code, out = run("--format", "json", *args)
    return code, json.loads(out)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The table's rows by alias, each a dict of column -> cell."""
    lines = text.splitlines()
    header = lines[0]
    starts, position = [], 0
    for column in COLUMNS:
        position = header.index(column, position)
        starts.append(position)
        position += len(column)
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = [
            line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)
        ]
        rows[cells[0]] = dict(zip(COLUMNS, cells, strict=True))
    return rows


def assert_schema(document: dict) -> None:
    assert set(document) == {"status", "taken_at", "nodes"}
    assert document["status"] in {"ok", "degraded", "unavailable"}
    datetime.fromisoformat(document["taken_at"])
    assert [node["alias"] for node in document["nodes"]] == ALL  # the primary first
    for node in document["nodes"]:
        assert set(node) == set(NODE_SCHEMA), node
        for key, types in NODE_SCHEMA.items():
            assert isinstance(node[key], types), (key, node[key])
            if bool not in types:
                assert not isinstance(node[key], bool), (key, node[key])
        assert node["role"] == ("primary" if node["alias"] == "default" else "replica")
        assert node["state"] in STATES
        datetime.fromisoformat(node["since"])
        if node["checked_at"] is not None:
            datetime.fromisoformat(node["checked_at"])
        if node["lsn"] is not None:
            assert LSN.match(node["lsn"]), node["lsn"]
        if node["pool"] is not None:
            assert {k: type(v) for k, v in node["pool"].items()} == POOL_SCHEMA


def states_of(document: dict) -> dict[str, str]:
    return {node["alias"]: node["state"] for node in document["nodes"]}


@db
def test_the_table_lists_every_node_with_its_address_state_and_pool(replica_cluster: Cluster):
    # Open replica_2's pool (testbed.settings gives it Django's psycopg pool) in
    # this process: the table shows pool figures for it and "-" for the others.
    connections["replica_2"].ensure_connection()
    replica_cluster.wait_replayed()

    code, out = run(no_color=True)

    assert code == 0
    rows = parse_table(out)
    assert list(rows) == ALL
    for alias, row in rows.items():
        assert row["ADDRESS"] == f"127.0.0.1:{replica_cluster.port(node_name(alias))}"
        assert row["STATE"] == "healthy"
        assert row["RTT MS"] != "-"
        datetime.fromisoformat(row["SINCE"])
    assert rows["default"]["ROLE"] == "primary"
    assert rows["default"]["WEIGHT"] == "-"
    assert {rows[a]["ROLE"] for a in ("replica_1", "replica_2")} == {"replica"}
    assert rows["replica_1"]["WEIGHT"] == rows["replica_2"]["WEIGHT"] == "1"
    assert rows["replica_2"]["LAG BYTES"] == "0"
    assert int(rows["replica_2"]["POOL SIZE"]) >= 1
    assert rows["replica_2"]["WAITING"] == "0"
    assert rows["replica_1"]["POOL SIZE"] == rows["default"]["POOL SIZE"] == "-"
    assert "ok: 2 of 2 replicas serve reads" in out
    assert "\x1b[" not in out
    assert PASSWORD not in out


@db
def test_states_are_colored_with_djangos_styles_unless_no_color(replica_cluster: Cluster):
    replica_cluster.wait_replayed()
    style = color_style(force_color=True)

    _, colored = run(force_color=True)
    _, plain = run(no_color=True)

    assert style.SUCCESS("healthy") in colored
    assert style.SUCCESS("ok: 2 of 2 replicas serve reads (exit status 0)") in colored
    assert "\x1b[" not in plain


@db
def test_json_follows_the_documented_schema(replica_cluster: Cluster):
    connections["replica_2"].ensure_connection()
    replica_cluster.wait_replayed()

    code, document = run_json()

    assert code == 0
    assert_schema(document)
    assert document["status"] == "ok"
    by_alias = {node["alias"]: node for node in document["nodes"]}
    for alias, node in by_alias.items():
        assert node["host"] == "127.0.0.1"
        assert node["port"] == str(replica_cluster.port(node_name(alias)))
        assert node["state"] == "healthy"
        assert node["in_rotation"] is True
        assert node["rtt_ms"] > 0
        assert node["lsn"] is not None
        assert node["last_error"] is None
    assert by_alias["default"]["weight"] is None
    assert by_alias["default"]["lag_bytes"] is None
    assert by_alias["replica_1"]["lag_bytes"] == 0
    assert by_alias["replica_1"]["pool"] is None
    assert by_alias["replica_2"]["pool"]["size"] >= 1


@db
def test_check_exits_0_when_every_replica_serves(replica_cluster: Cluster):
    replica_cluster.wait_replayed()

    code, document = run_json("--check")

    assert code == 0
    assert document["status"] == "ok"
    assert states_of(document) == dict.fromkeys(ALL, "healthy")


@db
def test_check_exits_1_when_a_replica_is_held_behind(replica_cluster: Cluster, pause_replica):
    replica_cluster.wait_replayed()
    pause_replica("replica_1")
    Author.objects.bulk_create(Author(name=f"author {i}") for i in range(5000))
    replica_cluster.wait_replayed(["replica_2"])
    threshold = 64 * 1024  # far above an idle primary's own WAL, far below 5000 rows
    assert replica_cluster.lag_bytes("replica_1", replica_cluster.primary_lsn()) > threshold

    with override_settings(REPLICA_ROUTER={**settings.REPLICA_ROUTER, "MAX_LAG_BYTES": threshold}):
        code, document = run_json("--check")

    assert code == 1
    assert document["status"] == "degraded"
    assert states_of(document) == {
        "default": "healthy",
        "replica_1": "lagging",
        "replica_2": "healthy",
    }
    lagging = document["nodes"][1]
    assert lagging["in_rotation"] is False
    assert lagging["lag_bytes"] > threshold
    assert f"MAX_LAG_BYTES {threshold}" in lagging["reason"]


@db
def test_check_exits_2_when_no_replica_serves(outage: Cluster):
    outage.kill("replica_1")
    outage.kill("replica_2")

    code, document = run_json("--check")
    table_code, table = run("--check", no_color=True)
    quiet_code, quiet = run("--check", verbosity=0)

    assert code == table_code == quiet_code == 2
    assert quiet == ""  # -v 0: the exit status says it all
    assert_schema(document)
    assert document["status"] == "unavailable"
    assert states_of(document) == {"default": "healthy", "replica_1": "down", "replica_2": "down"}
    for node in document["nodes"][1:]:
        assert node["in_rotation"] is False
        assert node["last_error"]  # the driver's message, e.g. "connection refused"
    assert "unavailable: 0 of 2 replicas serve reads (exit status 2)" in table
    assert PASSWORD not in json.dumps(document)
    assert PASSWORD not in table


@db
def test_check_exits_2_when_the_primary_is_down(outage: Cluster):
    outage.stop_primary()

    code, document = run_json("--check")

    assert code == 2
    assert_schema(document)
    assert document["status"] == "unavailable"
    primary = document["nodes"][0]
    assert primary["state"] == "down"
    assert primary["last_error"]
    assert PASSWORD not in json.dumps(document)


def test_manage_py_exits_with_the_check_status(replica_cluster: Cluster):
    # The status a shell script sees, from a process of its own (which has no
    # test database and no monitor running: it probes by itself).
    replica_cluster.wait_replayed()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testbed.settings", "PYTHONPATH": str(ROOT)}

    result = subprocess.run(
        [sys.executable, "-m", "django", "replica_health", "--check", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"
    assert PASSWORD not in result.stdout + result.stderr


def test_watch_rejects_a_non_positive_interval():
    with pytest.raises(CommandError, match="positive number of seconds"):
        call_command("replica_health", "--watch", "0")


def watch(*args: str, refreshes: int) -> tuple[int, str]:
    """Run the command with ``args`` (which include ``--watch``) and press Ctrl-C
    (SIGINT to this process, as a terminal does) once it has printed
    ``refreshes`` refreshes, or after 30 seconds. Return (exit status, output)."""
    out = StringIO()
    lock = threading.Lock()
    finished = False

    def printed() -> int:
        text = out.getvalue()  # each refresh is written in one piece
        return max(text.count("(Ctrl-C to stop)"), text.count('{"status"'))

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and printed() < refreshes:
            time.sleep(0.01)
        with lock:
            if not finished:
                os.kill(os.getpid(), signal.SIGINT)

    # A process started in the background by a non-interactive shell ignores
    # SIGINT, and Python then raises no KeyboardInterrupt: give it the handler
    # a terminal's Ctrl-C meets.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    code = 0
    try:
        call_command("replica_health", *args, stdout=out, no_color=True)
    except SystemExit as exc:
        code = int(exc.code)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped from replica_health --watch")
    finally:
        with lock:
            finished = True
        presser.join()
        signal.signal(signal.SIGINT, previous)
    return code, out.getvalue()


@db
def test_watch_refreshes_until_ctrl_c(replica_cluster: Cluster):
    replica_cluster.wait_replayed()

    code, out = watch("--watch", "0.05", refreshes=2)

    assert code == 0
    blocks = out.split("Every 0.05s: replica_health at ")[1:]
    assert len(blocks) >= 2
    for block in blocks:
        rows = parse_table(block.split("\n\n", 1)[1])
        assert list(rows) == ALL
        assert {row["STATE"] for row in rows.values()} == {"healthy"}
    assert PASSWORD not in out


@db
def test_watch_keeps_one_monitor_so_states_carry_across_refreshes(replica_cluster: Cluster):
    replica_cluster.wait_replayed()

    code, out = watch("--format", "json", "--watch", "0.05", refreshes=3)

    assert code == 0
    documents = [json.loads(line) for line in out.splitlines()]  # JSON Lines
    assert len(documents) >= 3
    for document in documents:
        assert_schema(document)
    first, last = documents[0], documents[-1]
    for before, after in zip(first["nodes"], last["nodes"], strict=True):
        # Probed again, but still in the state it entered at the first refresh:
        # a new Monitor per refresh would restart every "since".
        assert after["checked_at"] > before["checked_at"]
        assert after["since"] == before["since"]
    # A rate needs two probes: none at the first refresh, one for each replica after.
    rates = [[node["recovery_conflicts_per_second"] for node in d["nodes"]] for d in documents]
    assert rates[0] == [None, None, None]
    assert rates[-1][0] is None  # the primary has no recovery conflicts
    assert all(rate is not None and rate >= 0 for rate in rates[-1][1:])
    assert PASSWORD not in out


@db
def test_watch_with_check_exits_with_the_status_of_the_last_refresh(outage: Cluster):
    outage.kill("replica_2")

    code, out = watch("--check", "--format", "json", "--watch", "0.05", refreshes=2)

    assert code == 1
    last = json.loads(out.splitlines()[-1])
    assert last["status"] == "degraded"
    assert states_of(last)["replica_2"] == "down"
    assert PASSWORD not in out


@db
def test_the_table_and_json_count_each_replicas_recovery_conflicts(
    replica_cluster: Cluster, provoke_conflicts
):
    counted = provoke_conflicts("replica_1")

    _, document = run_json()
    _, table = run(no_color=True)

    assert_schema(document)
    nodes = {node["alias"]: node for node in document["nodes"]}
    assert nodes["replica_1"]["recovery_conflicts"] >= counted > 0
    assert isinstance(nodes["replica_2"]["recovery_conflicts"], int)
    assert nodes["default"]["recovery_conflicts"] is None
    # One probe per run: a rate needs two (see --watch).
    assert {node["recovery_conflicts_per_second"] for node in nodes.values()} == {None}
    rows = parse_table(table)
    assert int(rows["replica_1"]["CONFLICTS"]) >= counted
    assert rows["default"]["CONFLICTS"] == "-"
    assert {row["CONFL/S"] for row in rows.values()} == {"-"}
