"""Django's DiscoverRunner, writing each test's outcome to a JSON file as well.

run.py compares the outcomes of two runs per test id. Reading them from the
result object rather than from the ``-v 2`` text is exact even when a test
prints, and in parallel runs too: Django replays the workers' results on the
main process's result object. The text output is unchanged.

The file is named by the DJANGO_SUITE_RESULTS environment variable (nothing is
written without it): ``{"tests": {test id: {"status": ..., "error": ...}}}``,
with status one of ok, skip, expected_failure, unexpected_success, fail, error.
A test with several outcomes (a failed subtest, an error in tearDown after
success) keeps the worst. An error outside any test (setUpClass, a module that
fails to import) is recorded under the id unittest gives it, such as
``setUpClass (basic.tests.ModelTest)``.
"""

from __future__ import annotations

import json
import os
import traceback
import unittest
from types import TracebackType
from typing import Any

from django.test.runner import DiscoverRunner

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# The worse outcome wins when a test reports more than one.
_RANK = {
    "ok": 0,
    "skip": 1,
    "expected_failure": 2,
    "unexpected_success": 3,
    "fail": 4,
    "error": 5,
}


def summary(err: ExcInfo) -> str:
    """The exception's one-line summary: its type and the first line of its message."""
    exc_type, exc_value, _ = err
    lines = traceback.format_exception_only(exc_type, exc_value)
    last = lines[-1].strip() if lines else exc_type.__name__
    return last.splitlines()[0] if last else exc_type.__name__


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[str, dict[str, str]] = {}

    def _record(self, test: unittest.TestCase, status: str, err: ExcInfo | None = None) -> None:
        test_id = test.id()
        previous = self.records.get(test_id)
        if previous is not None and _RANK[previous["status"]] >= _RANK[status]:
            return
        record = {"status": status}
        if err is not None and status in {"fail", "error"}:
            record["error"] = summary(err)
            record["traceback"] = self._exc_info_to_string(err, test)
        self.records[test_id] = record

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, "ok")

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", err)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "fail", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip")

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "fail" if failed else "error", err)

    def stopTestRun(self) -> None:
        super().stopTestRun()
        path = os.environ.get("DJANGO_SUITE_RESULTS")
        if path:
            with open(path, "w") as file:
                json.dump({"tests": self.records}, file, indent=1, sort_keys=True)


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self) -> type[unittest.TextTestResult] | None:
        # --debug-sql and --pdb keep their own result classes.
        return super().get_resultclass() or RecordingResult
