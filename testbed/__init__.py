"""The Django project that the test suite and the benchmarks both run against.

Not shipped (pyproject.toml packages ``replica_router`` only). What is here is
shared by ``tests/`` and ``bench/``; what only tests use is in ``tests/support``.

* ``settings``: the aliases on the cluster named by REPLICA_ROUTER_CLUSTER_DIR
  (``DJANGO_SETTINGS_MODULE`` of pytest and of the benchmarks);
  ``typing_settings``: the same apps for mypy's Django plugin, no cluster needed;
* ``testapp``: the models (app label ``testapp``: tables ``testapp_*``);
* ``urls``, ``ryw_urls``, ``monotonic_urls``: URL confs of the views the tests
  and benchmarks request;
* ``monotonic``: the monotonic-reads scenario (issue 14); ``polling``: waiting
  with a deadline, which it and the tests use;
* ``celery_app``, ``celery_worker``: Celery apps on a Redis broker, and a worker
  process of its own;
* ``fleet_site``: the site gunicorn serves for the fleet harness, ``fleet``
  (issue 15).
"""
