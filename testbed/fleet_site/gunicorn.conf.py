"""gunicorn settings for the fleet site; testbed/fleet/hosts.py passes bind and workers.

Every worker starts its health monitor as soon as it is up, the way the
router's first read would start it. Without this, a worker that happened to
serve no request yet would run no monitor and the connection counts would
depend on how the kernel spread the requests.
"""

wsgi_app = "testbed.fleet_site.wsgi:application"
worker_class = "sync"
graceful_timeout = 5
# gunicorn 27 opens a control socket in ~/.gunicorn by default; no use here.
control_socket_disable = True


def post_worker_init(worker):
    from replica_router import runtime

    runtime.load().start_monitor()
