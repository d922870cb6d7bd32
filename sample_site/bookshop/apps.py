from __future__ import annotations

from django.apps import AppConfig


class BookshopConfig(AppConfig):
    name = "bookshop"

    def ready(self) -> None:
        from bookshop import readstats

        readstats.install()
