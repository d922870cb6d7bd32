"""Real replica routing in a test, for the tests that are about replicas.

By default, under Django's test runner or pytest-django, a replica whose
``TEST["MIRROR"]`` is the primary serves reads through the primary's
connection (see docs/testing.md). A test of replication itself (lag, failover,
read-your-writes) wants its reads on the replicas: it opts in with
:func:`replica_routing`, or with pytest's ``@pytest.mark.replica_routing``.
"""

from __future__ import annotations

from typing import Any

from django.test.utils import TestContextDecorator

from replica_router import runtime

__all__ = ["replica_routing"]


class replica_routing(TestContextDecorator):  # noqa: N801 - used like a function
    """Route reads to the mirrored replicas for real, as outside tests.

    A context manager, a function decorator, or a ``TestCase`` class decorator.
    Process-wide, so that the live server's threads route alike. The test then
    lists the replica aliases in ``databases`` and sees only committed data
    through them (``TransactionTestCase``, or ``django_db(transaction=True)``).
    Entering and leaving it starts the routing afresh, with a new health monitor;
    the engine stops the monitor and closes the router's connections before the
    test database is dropped.
    """

    def enable(self) -> Any:
        self._previous = runtime.set_route_test_mirrors(True)

    def disable(self) -> None:
        runtime.set_route_test_mirrors(self._previous)
