"""Integrations with other libraries, each imported explicitly.

Nothing here is imported by ``replica_router`` itself, so a site that does not
use, say, Celery never imports it: ``from replica_router.contrib.celery import
install``.
"""
