from __future__ import annotations

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
