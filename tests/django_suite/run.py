"""Run Django's own test suite without and with the router, and compare the outcomes.

Run inside a cluster, which exports DATABASE_URL and REPLICA_URLS::

    python -m replica_router.testing.cluster run --dir /tmp/rr-djsuite --replicas 2 -- \\
        python -m tests.django_suite.run [--parallel N] [LABEL ...]

(``make test-django-suite`` does that.) The suite is the ``tests/`` directory of
the sdist of the installed Django version, downloaded with pip once and kept in
``.cache/django-tests/<version>/``. The apps of ``tests.django_suite.APPS`` (or
the labels given) run twice with Django's runtests.py: with settings_plain.py
(Django's PostgreSQL backend on the primary, no router), then with
settings_router.py (the router as the README installs it). Each run's output
(``-v 2``) and outcomes go to ``.cache/django-suite/<run>/``.

Exits non-zero if a test that passes without the router fails, errors or does
not run with it, or if the router run's teardown is unclean (an error
destroying a test database, a traceback, a warning, any unexpected line after
the closing counts), or if either run does not get to its closing counts.
The last line reads ``django-suite: N passed, M failed, K skipped``: the tests
that passed and were skipped with the router, and M the router-only failures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import django

from tests.django_suite import APPS

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"

PLAIN_SETTINGS = "tests.django_suite.settings_plain"
ROUTER_SETTINGS = "tests.django_suite.settings_router"

# Outcomes that count as passing (unittest's wasSuccessful) and as failing.
GOOD = {"ok", "skip", "expected_failure"}
BAD = {"fail", "error", "unexpected_success"}

# The router run's runtests.py: Django's, with two assignments added before its
# `if __name__ == "__main__":` block. runtests.py sets INSTALLED_APPS and
# MIDDLEWARE from these two module globals (in the main process and in every
# parallel worker), overriding the settings module, so changing them is the
# one way to install the app and the middleware as the README does without
# patching Django's code paths: the copy differs from the original only by
# these lines (diff them), and the plain run uses the original.
_MAIN_GUARD = '\nif __name__ == "__main__":\n'
_ROUTER_LINES = """
# Added by tests/django_suite/run.py: the router installed as its README says.
ALWAYS_INSTALLED_APPS = [*ALWAYS_INSTALLED_APPS, "replica_router"]
ALWAYS_MIDDLEWARE = [
    "replica_router.middleware.PrimaryPinningMiddleware",
    *ALWAYS_MIDDLEWARE,
]

"""

# The closing lines of unittest's report.
_RAN = re.compile(r"^Ran (\d+) tests? in ([\d.]+)s$")
_VERDICT = re.compile(r"^(OK|FAILED)\b.*$")
# Lines that may follow the closing counts in a clean run at -v 2.
_CLEAN_AFTER = re.compile(
    r"^(Destroying test database for alias '[^']+' \('[^']+'\)\.\.\.|"
    r"Destroying test database for alias '[^']+'\.\.\.)$"
)
# The head of each failure in unittest's report.
_SEPARATOR = "=" * 70
_REPORT_HEAD = re.compile(r"^(ERROR|FAIL|UNEXPECTED SUCCESS): ")
# Trouble wherever it shows in a run's output.
_TROUBLE = re.compile(
    r"being accessed by other users|Got an error destroying|Got an error creating|"
    r"Exception ignored in|ResourceWarning|Traceback \(most recent call last\)"
)


def fail(message: str) -> None:
    print(f"django-suite: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# -- The suite ------------------------------------------------------------------


def suite_dir(version: str) -> Path:
    """Django's tests/ for ``version``, from its sdist, downloaded the first time."""
    target = CACHE / "django-tests" / version / "tests"
    if (target / "runtests.py").is_file():
        return target
    print(f"downloading the sdist of Django {version} for its tests/ ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet"),
                *("--no-binary", ":all:", "--no-deps", "-d", tmp),
                f"django=={version}",
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(Path(tmp) / top / "tests", target)
    return target


def router_runtests(tests: Path) -> Path:
    """Write runtests_router.py beside runtests.py (see _ROUTER_LINES) and return it."""
    source = (tests / "runtests.py").read_text()
    for name in ("ALWAYS_INSTALLED_APPS = [", "ALWAYS_MIDDLEWARE = ["):
        if source.count(f"\n{name}") != 1:
            fail(f"runtests.py of this Django does not define {name.rstrip(' =[')} once")
    if source.count(_MAIN_GUARD) != 1:
        fail("runtests.py of this Django has no single __main__ block")
    before, after = source.split(_MAIN_GUARD)
    path = tests / "runtests_router.py"
    path.write_text(before + "\n" + _ROUTER_LINES + _MAIN_GUARD.lstrip("\n") + after)
    return path


# -- One run --------------------------------------------------------------------


@dataclass
class Run:
    name: str
    log: Path
    results: Path
    returncode: int | None = None
    wall: float = 0.0
    timed_out: bool = False
    ran: str = ""  # "Ran 1234 tests in 56.789s"
    verdict: str = ""  # "OK (skipped=12)" or "FAILED (failures=1, errors=2)"
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)
    teardown: list[str] = field(default_factory=list)  # unexpected lines after the counts
    trouble: list[str] = field(default_factory=list)  # _TROUBLE lines anywhere

    @property
    def closing(self) -> str:
        return self.verdict or "(no closing counts)"

    def count(self, statuses: set[str]) -> int:
        return sum(1 for record in self.outcomes.values() if record["status"] in statuses)


def run_suite(
    name: str,
    runtests: Path,
    settings: str,
    labels: list[str],
    parallel: int,
    out: Path,
    *,
    timeout: float,
) -> Run:
    run = Run(name, out / f"{name}.log", out / f"{name}.json")
    run.results.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DJANGO_SUITE_RESULTS": str(run.results),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    argv = [
        *(sys.executable, runtests.name, f"--settings={settings}", "--noinput"),
        *("--verbosity=2", f"--parallel={parallel}", *labels),
    ]
    print(f"{name}: {' '.join(argv[1:4])} ... (log: {run.log})", flush=True)
    started = time.monotonic()
    with open(run.log, "w") as log:
        process = subprocess.Popen(
            argv,
            cwd=runtests.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            run.returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    run.wall = time.monotonic() - started
    read_output(run)
    if run.results.is_file():
        run.outcomes = json.loads(run.results.read_text())["tests"]
    state = f"timed out after {timeout:.0f}s" if run.timed_out else f"exit {run.returncode}"
    print(f"{name}: {run.ran or '(no Ran line)'}; wall {run.wall:.1f}s, {state}", flush=True)
    print(f"{name}: {run.closing}", flush=True)
    return run


def read_output(run: Run) -> None:
    """The closing counts, the lines after them, and trouble anywhere else in the log.

    The failures' tracebacks that unittest prints before its closing counts (from
    the first ``=====`` line on) are not trouble: they are the outcomes.
    """
    lines = run.log.read_text(errors="replace").splitlines()
    ran_at = closing_at = None
    for index, line in enumerate(lines):
        if _RAN.match(line):
            verdict_at = next((i for i in range(index + 1, len(lines)) if lines[i].strip()), None)
            if verdict_at is not None and _VERDICT.match(lines[verdict_at]):
                ran_at, closing_at = index, verdict_at
                run.ran, run.verdict = line, lines[verdict_at]
    report_at = ran_at
    for index, line in enumerate(lines[: ran_at or 0]):
        if line == _SEPARATOR and _REPORT_HEAD.match(lines[index + 1]):
            report_at = index
            break
    outside = lines if ran_at is None else lines[:report_at] + lines[ran_at:]
    run.trouble = [line for line in outside if _TROUBLE.search(line)]
    if closing_at is not None:
        after = lines[closing_at + 1 :]
        run.teardown = [line for line in after if line.strip() and not _CLEAN_AFTER.match(line)]


# -- The comparison -------------------------------------------------------------


def _holder_error(test_id: str, outcomes: dict[str, dict[str, str]]) -> str | None:
    """The error of a class or module fixture that kept ``test_id`` from running.

    unittest names such an error after the fixture and its scope, as in
    ``setUpClass (basic.tests.ModelTest)``.
    """
    for holder, record in outcomes.items():
        if record["status"] in BAD and " (" in holder:
            scope = holder.split(" (", 1)[1].rstrip(")")
            if test_id.startswith(f"{scope}."):
                return f"did not run: {holder}: {record.get('error', '')}"
    return None


def router_only_failures(plain: Run, router: Run) -> dict[str, str]:
    """Each test id that passed without the router and not with it, with its error.

    An error of a class or module fixture (``setUpClass (mod.Class)``) counts
    through the tests it kept from running, or by itself if it kept none
    (``tearDownClass``).
    """
    failures: dict[str, str] = {}
    for test_id, record in plain.outcomes.items():
        if record["status"] in GOOD and test_id not in router.outcomes:
            failures[test_id] = _holder_error(test_id, router.outcomes) or "did not run"
    blamed = " ".join(failures.values())
    for test_id, record in router.outcomes.items():
        before = plain.outcomes.get(test_id, {}).get("status")
        if record["status"] in BAD and before not in BAD:
            if " (" in test_id and f"did not run: {test_id}:" in blamed:
                continue
            failures[test_id] = record.get("error") or record["status"].replace("_", " ")
    return failures


def report(plain: Run, router: Run) -> int:
    problems = 0
    for run in (plain, router):
        if not run.verdict or run.timed_out:
            print(f"{run.name}: the run did not get to its closing counts; see {run.log}")
            problems += 1
        elif not run.outcomes:
            print(f"{run.name}: no outcomes recorded in {run.results}")
            problems += 1

    failures = router_only_failures(plain, router)
    both = sorted(
        test_id
        for test_id, record in router.outcomes.items()
        if record["status"] in BAD and plain.outcomes.get(test_id, {}).get("status") in BAD
    )
    fixed = sorted(
        test_id
        for test_id, record in plain.outcomes.items()
        if record["status"] in BAD and router.outcomes.get(test_id, {}).get("status") in GOOD
    )
    print()
    if both:
        print(f"failing in both runs (not counted): {len(both)}")
        for test_id in both:
            print(f"  {test_id}: {router.outcomes[test_id].get('error', '')}")
    if fixed:
        print(f"failing without the router only (not counted): {len(fixed)}")
        for test_id in fixed:
            print(f"  {test_id}: {plain.outcomes[test_id].get('error', '')}")
    if failures:
        by_error: dict[str, list[str]] = defaultdict(list)
        for test_id, error in failures.items():
            by_error[error].append(test_id)
        print(f"FAIL: {len(failures)} tests pass without the router and fail with it:")
        for error, test_ids in sorted(by_error.items(), key=lambda item: (-len(item[1]), item)):
            print(f"  [{len(test_ids)}] {error}")
            for test_id in sorted(test_ids):
                print(f"      {test_id}")
        print(f"  tracebacks: {router.log} and {router.results}")

    if plain.teardown or plain.trouble:
        print(f"note: the plain run is not clean either ({plain.log}):")
        for line in dict.fromkeys([*plain.trouble, *plain.teardown]):
            print(f"  {line}")
    unclean = list(dict.fromkeys([*router.trouble, *router.teardown]))
    if unclean:
        print(f"FAIL: the router run is not clean ({router.log}):")
        for line in unclean:
            print(f"  {line}")
        problems += 1
    else:
        print("router run: clean teardown")

    print()
    print(f"plain:  {plain.ran}  {plain.closing}  (wall {plain.wall:.1f}s)")
    print(f"router: {router.ran}  {router.closing}  (wall {router.wall:.1f}s)")
    passed = router.count({"ok", "expected_failure"})
    skipped = router.count({"skip"})
    print(f"django-suite: {passed} passed, {len(failures)} failed, {skipped} skipped", flush=True)
    return 1 if failures or problems else 0


# -- Command line ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.django_suite.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "labels", nargs="*", help="test labels for runtests.py (default: tests.django_suite.APPS)"
    )
    # One process by default. With --parallel 2, runtests.py hands each worker
    # whole test classes as the workers come free, so which tests share a
    # process (and the router's process-wide state) changes from run to run:
    # a test that leaves that state wrong breaks the tests after it in its own
    # worker only, and the router-only failures came out 7 at --parallel 2 and
    # 13 at --parallel 1 on the same code. The mirrors do follow the workers'
    # clones (test_app_1 and test_app_2 replicate like test_app); one process
    # costs some 10 to 20 s more per run on 2 cores.
    parser.add_argument(
        "--parallel", type=int, default=1, help="runtests.py --parallel (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per run (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    for var in ("DATABASE_URL", "REPLICA_URLS"):
        if not os.environ.get(var):
            fail(
                f"{var} is not set: run inside a cluster, e.g. make test-django-suite, or "
                "python -m replica_router.testing.cluster run --dir DIR -- "
                "python -m tests.django_suite.run"
            )
    for module in ("tblib", "PIL"):
        try:
            __import__(module)
        except ImportError:
            fail(f"{module} is missing: pip install -r tests/django_suite/requirements.txt")

    version = django.__version__
    tests = suite_dir(version)
    plain_runtests = tests / "runtests.py"
    router_runtests_path = router_runtests(tests)
    out = CACHE / "django-suite" / f"django{version}-py{sys.version_info[0]}.{sys.version_info[1]}"
    out.mkdir(parents=True, exist_ok=True)
    labels = args.labels or list(APPS)
    print(f"Django {version}'s suite from {tests}: {' '.join(labels)}", flush=True)

    runs = [
        run_suite(name, runtests, settings, labels, args.parallel, out, timeout=args.timeout)
        for name, runtests, settings in [
            ("plain", plain_runtests, PLAIN_SETTINGS),
            ("router", router_runtests_path, ROUTER_SETTINGS),
        ]
    ]
    return report(*runs)


if __name__ == "__main__":
    sys.exit(main())
