"""An existing project's test suite passes unchanged once the router is installed.

``tests/user_project`` is set up as the README says and has every kind of
test a project has, none of which lists a replica alias. Before the router
knew it was serving a test, its transactional and live-server tests failed
with ``DatabaseOperationForbidden`` (their reads went to a replica alias the
test had not listed), and the run ended unable to drop the test database
("is being accessed by other users"), or asking whether to delete it next time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from replica_router.testing.cluster import PRIMARY, Cluster

PROJECT = Path(__file__).resolve().parents[1] / "user_project"
# Its own database names, apart from this suite's test database on the same cluster.
DBNAME = "user_project"
TEST_DBNAME = f"test_{DBNAME}"
UNCLEAN = (
    "being accessed by other users",
    "Error when trying to teardown",
    "Got an error destroying",
    "Type 'yes' if you would like to try deleting",
    "Traceback",
)


def _renamed(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{DBNAME}"))


def _run(cluster: Cluster, *command: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": _renamed(cluster.url(PRIMARY)),
        "REPLICA_URLS": ",".join(_renamed(cluster.url(name)) for name in cluster.replicas),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        command,
        cwd=PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _test_database_exists(cluster: Cluster) -> bool:
    found = cluster.query(PRIMARY, "SELECT 1 FROM pg_database WHERE datname = %s", [TEST_DBNAME])
    return bool(found)


def _assert_clean(cluster: Cluster, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for sign in UNCLEAN:
        assert sign not in output, output
    assert not _test_database_exists(cluster), "the test database was left behind"


def test_manage_py_test_passes_and_drops_its_database(replica_cluster: Cluster) -> None:
    result = _run(replica_cluster, sys.executable, "manage.py", "test", "--noinput", "-v", "2")
    _assert_clean(replica_cluster, result)
    assert "Ran 7 tests" in result.stderr, result.stderr


def test_manage_py_test_in_parallel_drops_every_clone(replica_cluster: Cluster) -> None:
    result = _run(
        replica_cluster, sys.executable, "manage.py", "test", "--noinput", "--parallel", "2"
    )
    _assert_clean(replica_cluster, result)
    clones = replica_cluster.query(
        PRIMARY, "SELECT count(*) FROM pg_database WHERE datname LIKE %s", [f"{TEST_DBNAME}_%"]
    )
    assert clones == 0


def test_pytest_passes_and_drops_its_database(replica_cluster: Cluster) -> None:
    result = _run(replica_cluster, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v")
    _assert_clean(replica_cluster, result)
    assert "10 passed" in result.stdout, result.stdout


def test_manage_py_test_in_parallel_with_spawned_workers(replica_cluster: Cluster) -> None:
    # Spawned workers (macOS's default) start with none of the parent's state:
    # each learns of the test database from setup_worker_connection.
    spawn = (
        "import multiprocessing, runpy, sys; multiprocessing.set_start_method('spawn'); "
        "sys.argv = ['manage.py', 'test', '--noinput', '--parallel', '2']; "
        "runpy.run_path('manage.py', run_name='__main__')"
    )
    result = _run(replica_cluster, sys.executable, "-c", spawn)
    _assert_clean(replica_cluster, result)
    assert "Ran 7 tests" in result.stderr, result.stderr
