"""Test databases: what Django's test set-up does to the router's aliases.

Django's test runner and pytest-django call ``create_test_db`` on the primary
(which calls ``_create_test_db``),
``set_as_test_mirror`` on each replica that a test uses and that mirrors the
primary, ``setup_worker_connection`` in each worker of a parallel run, and
``destroy_test_db`` on the primary when the run ends. Those calls
are how the router knows that it serves a test, rather than a guess from
``sys.argv``: see :func:`replica_router.runtime._without_test_mirrors` and
docs/testing.md.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from django.db import connections
from django.db.backends.postgresql import creation

from replica_router import runtime

__all__ = ["DatabaseCreation"]


class DatabaseCreation(creation.DatabaseCreation):
    # The step of create_test_db() that makes the database, which every backend
    # implements. Not create_test_db() itself: a frame of ours there would move
    # the location of Django 6.0's deprecation warning for its ``serialize``
    # argument into this module (backends.base.test_creation in Django's own
    # suite, which make test-django-suite runs on every Django of the matrix).
    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> str:
        name: str = super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc]
        if self._role() is runtime.PRIMARY:
            runtime.note_test_database()
        return name

    def set_as_test_mirror(self, primary_settings_dict: dict[str, Any]) -> None:
        super().set_as_test_mirror(primary_settings_dict)
        primary = self._role() is runtime.REPLICA and next(
            (a for a in connections if connections[a].settings_dict is primary_settings_dict),
            None,
        )
        if primary and runtime.role_of(primary) is runtime.PRIMARY:
            runtime.note_test_database(mirror=self.connection.alias)

    def setup_worker_connection(self, _worker_id: int) -> None:
        # A worker of a parallel run. Forked, it has the parent's state already;
        # spawned, it learns it here from the aliases the set-up used: a
        # replica among them is a mirror (a standby cannot hold a test database).
        if multiprocessing.get_start_method() != "fork":
            role = self._role()
            if role is runtime.PRIMARY:
                runtime.note_test_database()
            elif role is runtime.REPLICA and self.connection.settings_dict["TEST"].get("MIRROR"):
                runtime.note_test_database(mirror=self.connection.alias)
        super().setup_worker_connection(_worker_id)

    def destroy_test_db(self, *args: Any, **kwargs: Any) -> None:
        if self._role() is runtime.PRIMARY:
            # PostgreSQL refuses to drop a database that has a session: the
            # monitor's probes, a kept replica connection, a pool.
            runtime.release_test_databases()
        super().destroy_test_db(*args, **kwargs)

    def _role(self) -> str | None:
        """The role of the alias, if this is the connection that Django's test
        set-up uses for it; None for a copy (Django's own tests of test database
        creation call these methods on copies of a connection)."""
        alias = self.connection.alias
        if alias not in connections or connections[alias] is not self.connection:
            return None
        return runtime.role_of(alias)
