"""The demo's site processes: how they are run, and where they leave their state.

Shared by ``demo.py``, which starts and stops the site, and by the tour, which
runs ``manage.py`` and more gunicorn workers with the same environment and
finds the demo's server from its files. Everything lives in the demo's
directory (``--dir``): the cluster's nodes, and gunicorn's pid file, log and
address (``site.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parent
GUNICORN_CONF = SITE_DIR / "bookshop_site" / "gunicorn.conf.py"


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def site_env(directory: Path, **extra: str) -> dict[str, str]:
    """The environment the site's processes run with: the demo cluster's, nothing else.

    DATABASE_URL and REPLICA_URLS are removed, so that a shell that has them
    set for another project cannot point the demo (and its teardown) elsewhere;
    the settings then read the cluster in REPLICA_ROUTER_CLUSTER_DIR.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REPLICA_URLS")}
    env.update(
        REPLICA_ROUTER_CLUSTER_DIR=str(directory),
        DJANGO_SETTINGS_MODULE="bookshop_site.settings",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def manage_command() -> list[str]:
    return [sys.executable, str(SITE_DIR / "manage.py")]


def pid_file(directory: Path) -> Path:
    """The demo's gunicorn master writes its pid here."""
    return directory / "gunicorn.pid"


def master_pid(directory: Path) -> int | None:
    """The demo's gunicorn master, from its pid file, or None."""
    try:
        return int(pid_file(directory).read_text())
    except (OSError, ValueError):
        return None


def site_file(directory: Path) -> Path:
    """The running demo's address (and its master's pid), as JSON."""
    return directory / "site.json"


def site_url(directory: Path) -> str:
    try:
        url: str = json.loads(site_file(directory).read_text())["url"]
    except (OSError, ValueError, KeyError):
        raise DemoError(
            f"The demo site is not running ({site_file(directory)} is missing)."
        ) from None
    return url
