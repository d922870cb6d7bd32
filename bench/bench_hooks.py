"""What the failover engine's hooks cost, by the way they hook in.

Per query: the engine retries a failed read and notes a write through cursor
classes (``make_cursor``, overriding ``CursorWrapper.execute``) rather than
Django's ``connection.execute_wrapper()``. Both are timed on the same
do-nothing cursor, next to Django's plain cursor.

Per cursor: a connection borrowed from another node serves one cursor; the
engine swaps ``_cursor`` on the wrapper instance only while it is borrowed,
rather than overriding it in the class, where every cursor of every replica
alias would pay for the check. Both are timed on a wrapper whose connection is
a stand-in object. Pure Python, no server: ``python bench/bench_hooks.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import django
from django.conf import settings
from machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Cursor:
    def execute(self, sql: str, params: Any = None) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    settings.configure()
    django.setup()
    from django.db.backends import utils

    from replica_router.backends.postgresql.base import _RetryingCursorWrapper

    def db(wrappers: list[Any]) -> Any:
        return SimpleNamespace(
            execute_wrappers=wrappers,
            wrap_database_errors=contextlib.nullcontext(),
            validate_no_broken_transaction=lambda: None,
        )

    def retry_wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        try:
            return execute(sql, params, many, context)
        except Exception:  # what the engine would hand to its retry
            raise

    plain = utils.CursorWrapper(_Cursor(), db([]))
    cursor_class = _RetryingCursorWrapper(_Cursor(), db([]))
    execute_wrapper = utils.CursorWrapper(_Cursor(), db([retry_wrapper]))
    setups = {
        "Django's CursorWrapper, no hook": plain,
        "the engine's cursor class (execute)": cursor_class,
        "an execute_wrapper doing the same": execute_wrapper,
    }
    timings: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, cursor in setups.items():
            seconds = timeit.Timer(lambda c=cursor: c.execute("SELECT 1")).timeit(args.number)
            timings[name].append(seconds / args.number * 1e9)
    cursors = _cursor_timings(args.rounds, args.number)

    print(
        f"cursor.execute() on a do-nothing cursor, ns per call ({args.rounds} rounds x "
        f"{args.number:,} calls, Python {sys.version.split()[0]}, Django {django.get_version()})"
    )
    print(describe(None))
    base = statistics.median(timings["Django's CursorWrapper, no hook"])
    print(f"{'':40} {'median':>8} {'added':>8}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:40} {median:8.1f} {median - base:+8.1f}")
    print("connection.cursor() on a replica alias, ns per call")
    base = statistics.median(cursors["the engine, _cursor swapped while borrowed"])
    for name, values in cursors.items():
        median = statistics.median(values)
        print(f"{name:40} {median:8.1f} {median - base:+8.1f}")


def _cursor_timings(rounds: int, number: int) -> dict[str, list[float]]:
    from replica_router.backends.postgresql import base

    class DatabaseWrapper(base.DatabaseWrapper):
        # The same do-nothing cursor for both: only the _cursor layer differs.
        def create_cursor(self, name: str | None = None) -> Any:
            return _Cursor()

    class CheckedInTheClass(DatabaseWrapper):
        def _cursor(self, name: str | None = None) -> Any:
            if self.borrowed_from is not None and not self.in_atomic_block:
                self.close()
            return super()._cursor(name)

    settings_dict = {
        "NAME": "app",
        "USER": "",
        "PASSWORD": "",
        "HOST": "",
        "PORT": "",
        "OPTIONS": {},
        "TIME_ZONE": None,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "AUTOCOMMIT": True,
        "ATOMIC_REQUESTS": False,
        "TEST": {},
    }
    wrappers = {
        "the engine, _cursor swapped while borrowed": DatabaseWrapper(settings_dict, "bench"),
        "_cursor overridden in the class": CheckedInTheClass(settings_dict, "bench"),
    }
    for wrapper in wrappers.values():
        wrapper.connection = object()  # connected, as far as Django can tell
    timings: dict[str, list[float]] = {name: [] for name in wrappers}
    for _ in range(rounds):
        for name, wrapper in wrappers.items():
            seconds = timeit.Timer(wrapper.cursor).timeit(number)
            timings[name].append(seconds / number * 1e9)
    return timings


if __name__ == "__main__":
    main()
