"""gunicorn settings for the sample site: ``gunicorn -c bookshop_site/gunicorn.conf.py``.

One worker process with threads: the /replicas/ page shows the reads counted
in the process that serves it, and the health monitor runs once per process.
A real deployment runs several workers; each has its own monitor and counts.
"""

wsgi_app = "bookshop_site.wsgi"
workers = 1
worker_class = "gthread"
threads = 8
# gunicorn 27 opens a control socket in ~/.gunicorn by default; the demo has no
# use for it. Older versions ignore this name.
control_socket_disable = True
