# A user's project with tests of its own, run in a subprocess by
# tests/integration/test_user_project.py; and Django's own suite's settings.
collect_ignore = ["user_project", "django_suite"]
