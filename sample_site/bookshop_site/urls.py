from __future__ import annotations

from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from replica_router.views import replica_health

urlpatterns = [
    path("", include("bookshop.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    # The library's health view, for load balancers: staff see the topology.
    path("health/replicas/", replica_health, name="replica-health"),
    path("admin/", admin.site.urls),
]

if settings.DEBUG and apps.is_installed("debug_toolbar"):  # see settings.py
    from debug_toolbar.toolbar import debug_toolbar_urls

    urlpatterns += debug_toolbar_urls()
