import os

import factory.random
import pytest

from replica_router.testing.patroni import DIR_VARIABLE

# A user's project with tests of its own, run in a subprocess by
# tests/integration/test_user_project.py; and Django's own suite's settings.
collect_ignore = ["user_project", "django_suite"]
# The Patroni pass's tests, which need its cluster and settings.
if not os.environ.get(DIR_VARIABLE):
    collect_ignore.append("patroni")


@pytest.fixture(autouse=True)
def _seeded_factories() -> None:
    """The same fake names and titles in every run: no test depends on luck."""
    factory.random.reseed_random("django-replica-router")
