import factory.random
import pytest

# A user's project with tests of its own, run in a subprocess by
# tests/integration/test_user_project.py; and Django's own suite's settings.
collect_ignore = ["user_project", "django_suite"]


@pytest.fixture(autouse=True)
def _seeded_factories() -> None:
    """The same fake names and titles in every run: no test depends on luck."""
    factory.random.reseed_random("django-replica-router")
