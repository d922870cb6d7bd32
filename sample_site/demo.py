#!/usr/bin/env python
"""The bookshop demo: a local cluster, the site under gunicorn, and a narrated tour.

    python sample_site/demo.py up      # make demo: cluster, migrate, seed, gunicorn, tour
    python sample_site/demo.py down    # make demo-down: stop gunicorn and the cluster
    python sample_site/demo.py serve   # make serve: runserver against the cluster
    python sample_site/demo.py seed    # make seed: cluster, migrate, seed
    python sample_site/demo.py tour    # the tour again, against the running demo

Everything lives in one directory under /tmp (``--dir``; the Makefile passes
its ``DEMO_DIR``): the cluster's nodes, and gunicorn's pid file, log and
address. ``up`` leaves the site running unless ``DEMO_KEEP=0``, in which case
it removes everything at the end, as ``down`` does, even if the tour failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bookshop_site.local_cluster import (  # noqa: E402
    DEMO_WEIGHTS,
    cluster_urls,
    default_cluster_dir,
)
from demo_site import (  # noqa: E402
    GUNICORN_CONF,
    SITE_DIR,
    DemoError,
    manage_command,
    pid_file,
    site_env,
    site_file,
    site_url,
)
from replica_router.testing.cluster import (  # noqa: E402
    Cluster,
    ClusterError,
    process_alive,
    processes_with,
)
from tour import run_tour  # noqa: E402

REPLICAS = 2
PREFERRED_PORT = 8000


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say()
    say(f"==> {text}")


# -- the site's commands ------------------------------------------------------------


def manage(directory: Path, *args: str) -> None:
    result = subprocess.run([*manage_command(), *args], env=site_env(directory), cwd=SITE_DIR)
    if result.returncode != 0:
        raise DemoError(f"manage.py {' '.join(args)} exited with status {result.returncode}")


# -- the cluster -------------------------------------------------------------------


def start_cluster(directory: Path) -> Cluster:
    cluster = Cluster(directory)
    started = time.monotonic()
    created = cluster.up(REPLICAS)
    verb = "started" if created else "already running"
    say(
        f"primary + {len(cluster.replicas)} streaming replicas {verb} in {directory} "
        f"({time.monotonic() - started:.1f}s)"
    )
    urls = cluster_urls(directory)
    say("The site reads its databases from these URLs (what DATABASE_URL and")
    say("REPLICA_URLS would hold; unset, they come from the cluster directory):")
    say(f"  DATABASE_URL={urls['DATABASE_URL']}")
    for index, url in enumerate(urls["REPLICA_URLS"].split(",")):
        say(f"  {'REPLICA_URLS=' if index == 0 else ' ' * 13}{url}{',' if index == 0 else ''}")
    return cluster


def prepare(directory: Path) -> Cluster:
    """Cluster up, migrated and seeded (each step does nothing if already done)."""
    step(f"Cluster: a primary and {REPLICAS} replicas, read weights {DEMO_WEIGHTS[0]}:1")
    cluster = start_cluster(directory)
    step("Migrate")
    started = time.monotonic()
    manage(directory, "migrate", "--no-input", "-v", "0")
    say(f"migrated in {time.monotonic() - started:.1f}s")
    step("Seed: factory-boy builds realistic rows, inserted on the primary in batches")
    manage(directory, "seed")
    return cluster


# -- gunicorn ----------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As gunicorn binds: connections of an earlier run in TIME_WAIT do not
        # make the port busy, a listening server does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(preferred: int = PREFERRED_PORT) -> int:
    """``preferred`` if it is free (0: any), else a free port picked by the kernel."""
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gunicorn(directory: Path, port: int) -> str:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        raise DemoError(f"{gunicorn} is missing: pip install gunicorn (make demo does).")
    stop_gunicorn(directory, quiet=True)  # a new run gets a fresh server
    url = f"http://127.0.0.1:{port}"
    log_path = directory / "gunicorn.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                str(gunicorn),
                "--config",
                str(GUNICORN_CONF),
                "--bind",
                f"127.0.0.1:{port}",
                "--pid",
                str(pid_file(directory)),
            ],
            cwd=SITE_DIR,
            env=site_env(directory),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own session: Ctrl-C on the demo does not reach the server,
            # which keeps running after the demo ends, until ``down``.
            start_new_session=True,
        )
    site_file(directory).write_text(json.dumps({"url": url, "pid": process.pid}))
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise DemoError(f"gunicorn exited with status {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/replicas/status.json", timeout=5) as reply:
                if reply.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"gunicorn did not answer on {url} within 30 s; see {log_path}")
        time.sleep(0.1)
    say(f"gunicorn (pid {process.pid}) serves {url}; its log: {log_path}")
    return url


def _gunicorn_pids(directory: Path) -> list[int]:
    """The demo's gunicorn master and workers: their command line names our pid file."""
    return processes_with(b"gunicorn", str(pid_file(directory)).encode())


def stop_gunicorn(directory: Path, *, quiet: bool = False) -> None:
    """SIGTERM the demo's gunicorn (it stops its workers), SIGKILL what remains after 10 s."""
    pids = _gunicorn_pids(directory)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Reap the master if this process started it (a zombie would look alive elsewhere).
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    for path in (pid_file(directory), site_file(directory)):
        path.unlink(missing_ok=True)
    if pids and not quiet:
        say(f"stopped gunicorn (pids {', '.join(map(str, sorted(pids)))})")


# -- commands ----------------------------------------------------------------------


def _keep() -> bool:
    return os.environ.get("DEMO_KEEP", "1").strip().lower() not in ("0", "false", "no", "off")


def up(directory: Path, port: int) -> int:
    keep = _keep()
    started = time.monotonic()
    try:
        cluster = prepare(directory)
        step("Serve the site with gunicorn on 127.0.0.1")
        url = start_gunicorn(directory, pick_port(port))
        step("Tour: real HTTP traffic, and faults injected into the cluster")
        run_tour(directory, cluster, url)
    except Exception as exc:
        say()
        say(f"demo failed: {type(exc).__name__}: {exc}")
        if keep:
            say(f"Left running for a look (gunicorn log: {directory / 'gunicorn.log'});")
            say("stop it all with: make demo-down")
        return 1
    finally:
        if not keep:
            say()
            say("DEMO_KEEP=0: stopping and removing everything.")
            down(directory)
    say()
    say(f"Demo finished in {time.monotonic() - started:.0f}s.")
    if not keep:
        return 0
    say()
    say(f"The bookshop is still running at {url}/")
    say(f"  live replica page: {url}/replicas/   (log in as staff / bookshop to see hosts)")
    say(f"  health JSON:       {url}/health/replicas/")
    say("Stop it and the cluster with: make demo-down")
    return 0


def down(directory: Path) -> int:
    stop_gunicorn(directory)
    cluster = Cluster(directory)
    existed = cluster.exists()
    cluster.down()  # also kills servers left running from the directory
    if existed:
        say(f"stopped the cluster and removed {directory}")
    elif not directory.exists():
        say(f"nothing left in {directory}")
    return 0


def serve(directory: Path, port: int) -> int:
    prepare(directory)
    port = pick_port(port)
    step(f"runserver on http://127.0.0.1:{port}/ (Ctrl-C stops it, make demo-down the cluster)")
    argv = [*manage_command(), "runserver", f"127.0.0.1:{port}"]
    os.chdir(SITE_DIR)
    os.execve(argv[0], argv, site_env(directory, DEBUG="1"))


def seed(directory: Path, extra: Sequence[str]) -> int:
    start_cluster(directory)
    manage(directory, "migrate", "--no-input", "-v", "0")
    manage(directory, "seed", *extra)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The bookshop demo of django-replica-router.")
    parser.add_argument(
        "--dir",
        type=Path,
        default=default_cluster_dir(),
        help="the demo's directory under /tmp (default: %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=PREFERRED_PORT, help="8000 if free (0: any free port)"
    )
    parser.add_argument("command", choices=["up", "down", "serve", "seed", "tour"])
    parser.add_argument("seed_args", nargs=argparse.REMAINDER, help="options for manage.py seed")
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    try:
        if args.command == "up":
            return up(directory, args.port)
        if args.command == "down":
            return down(directory)
        if args.command == "serve":
            return serve(directory, args.port)
        if args.command == "seed":
            return seed(directory, args.seed_args)
        run_tour(directory, Cluster(directory), site_url(directory))
        return 0
    except (DemoError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
