"""A fleet of real gunicorn workers sharing (or not) the health monitor's work (issue 15).

Every worker serves ``testbed/fleet_site`` and runs the router's health monitor
(``HEALTH_SHARING`` as given). Used by ``tests/integration/test_fleet.py`` and
``bench/bench_fleet.py``. One concept a module:

* :mod:`~testbed.fleet.hosts`: :class:`~testbed.fleet.hosts.Fleet`, one gunicorn
  master (a "host") with N sync workers; :func:`~testbed.fleet.hosts.fleets`
  starts several on one Redis, standing for several hosts;
* :mod:`~testbed.fleet.connections`: the monitor's connections on each node
  (``pg_stat_activity`` rows with ``application_name = 'replica_router
  monitor'``), and waiting until they settle;
* :mod:`~testbed.fleet.load`: light read load through the fleets, a writer on
  the primary, the row to read;
* :mod:`~testbed.fleet.store`: the prober's snapshots, read from the shared
  store, one per probe cycle: what the tests count instead of seconds;
* :mod:`~testbed.fleet.rotation`: after a fault, the time until every worker
  has the replica out of rotation, and the prober's cycles until it published
  it out;
* :mod:`~testbed.fleet.takeover`: SIGKILL the worker that probes, and the time
  until another one holds the lease (also with a replica killed meanwhile);
* :mod:`~testbed.fleet.outage`: Redis stopped under light load.
"""
