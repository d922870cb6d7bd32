"""Django's own test suite on the replicated cluster, without and with the router.

``python -m tests.django_suite.run`` (``make test-django-suite``, and every
``make test-matrix`` session) runs the apps below from the sdist of the
installed Django twice: with plain ``django.db.backends.postgresql`` and no
router (settings_plain.py), then with the router installed as the README says
(settings_router.py), and fails on a test that passes without the router but
not with it, or on an unclean teardown with it. See run.py.
"""

from __future__ import annotations

#: The test apps of Django's suite (directories of its tests/) that both runs
#: cover: the ORM's reads and writes, transactions and locking, the test
#: framework's own database handling, live servers, the test client, sessions,
#: and the PostgreSQL backend. The one list the make target and nox use.
APPS: tuple[str, ...] = (
    "basic",
    "queries",
    "transactions",
    "select_for_update",
    "get_or_create",
    "update",
    "delete",
    "lookup",
    "aggregation",
    "prefetch_related",
    "select_related",
    "model_forms",
    "test_utils",
    "servers",
    "test_client",
    "sessions_tests",
    "backends",
)
