"""The WSGI application of the fleet site (testbed/fleet_site/gunicorn.conf.py serves it)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testbed.fleet_site.settings")

application = get_wsgi_application()
