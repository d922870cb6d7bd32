from __future__ import annotations

from django.urls import path

from replica_router.views import metrics, replica_health

urlpatterns = [path("health/replicas/", replica_health), path("metrics", metrics)]
