"""The test matrix: each supported Python with the Django versions it runs.

Run through ``make test-matrix``, which starts one cluster for every session.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

MATRIX = [
    ("3.11", "5.2"),
    ("3.12", "6.1"),
    ("3.13", "6.0"),
]

# With pyenv, `python3.12` is a shim that only works when that version is
# selected; select every installed version so nox finds them all.
if shutil.which("pyenv") and "PYENV_VERSION" not in os.environ:
    versions = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    wanted = [v for v in versions if v.rsplit(".", 1)[0] in {py for py, _ in MATRIX}]
    if wanted:
        os.environ["PYENV_VERSION"] = ":".join(wanted)


@nox.session
@nox.parametrize(("python", "django"), MATRIX, ids=[f"py{p}-django{d}" for p, d in MATRIX])
def tests(session: nox.Session, django: str) -> None:
    session.install("--upgrade", "pip")
    # demo brings gunicorn, which the fleet tests start (as make install does).
    session.install("-e", ".[env]", "--group", "dev", "--group", "demo")
    session.install(f"django~={django}.0")
    session.run("python", "-c", "import django, sys; print(sys.version, django.__version__)")
    session.run("pytest", *session.posargs)
    # The tests marked pgbouncer again, through the PgBouncer in front of each
    # node (make test-matrix brings the cluster up with --pgbouncer).
    session.run(
        "pytest",
        "-m",
        "pgbouncer",
        "tests/integration",
        *session.posargs,
        env={"REPLICA_ROUTER_TEST_PGBOUNCER": "1"},
    )
    # Django's own suite, from the sdist of this session's Django version,
    # without and with the router (tests/django_suite/run.py; the cluster's
    # nodes directly, not through PgBouncer).
    session.install("-r", "tests/django_suite/requirements.txt")
    session.run("python", "-m", "tests.django_suite.run")
