"""The pytest plugin loads on request only (docs/testing.md): a project that
installs the package gets its fixtures and marker when it asks for them, and
no hook of ours in its other pytest runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TEST = """
import pytest

@pytest.mark.replica_routing
def test_marked():
    pass
"""


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Without pytest-django, which would look for the project's settings.
    ini = "[pytest]\naddopts = --strict-markers -p no:cacheprovider -p no:django\n"
    (project / "pytest.ini").write_text(ini)
    (project / "test_marked.py").write_text(TEST)
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_project_that_asks_for_the_plugin_gets_its_marker_and_fixtures(tmp_path):
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["replica_router.testing.pytest_plugin"]\n'
    )
    result = run_pytest(tmp_path, "--fixtures")
    assert "replica_cluster" in result.stdout
    assert "pause_replica" in result.stdout
    assert run_pytest(tmp_path).returncode == 0


def test_a_project_that_does_not_ask_gets_nothing_of_ours(tmp_path):
    result = run_pytest(tmp_path)
    assert result.returncode != 0
    assert "'replica_routing' not found in `markers`" in result.stdout
    assert "--replica-cluster" not in run_pytest(tmp_path, "--help").stdout


def test_replica_cluster_asks_for_the_plugin_by_p(tmp_path, monkeypatch):
    # Loaded from conftest.py, the plugin is too late to start a cluster
    # before the settings are read: it says so rather than start none.
    monkeypatch.delenv("REPLICA_ROUTER_CLUSTER_DIR", raising=False)
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["replica_router.testing.pytest_plugin"]\n'
    )
    result = run_pytest(tmp_path, "--replica-cluster")
    assert result.returncode != 0
    assert "--replica-cluster needs the plugin loaded with -p" in result.stderr
