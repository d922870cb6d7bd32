from __future__ import annotations

from django.apps import AppConfig


class TestappConfig(AppConfig):
    name = "testbed.testapp"
    # The label it had as tests.testapp: its migrations and its tables
    # (testapp_author, ...) keep their names.
    label = "testapp"
