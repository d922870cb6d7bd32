"""HTTP: the sample site under concurrent load, in three configurations side by side.

Run with ``make bench``, which starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``; needs ``wrk``, which ``make bench`` installs
(``apt-get install wrk``).

The same bookshop (``sample_site/``) serves read-heavy traffic (70 % book
pages with their reviews, 30 % pages of the book list) from ``wrk`` on
loopback, in rounds that alternate the configurations. gunicorn runs a worker
per core (2 x 4 threads by default): one process's Python runs on one core at a
time. It closes each client connection after its response (``--keep-alive 0``,
as behind nginx's default proxying), so that new connections go to whichever
worker is free; with keep-alive, ``wrk``'s connections stay with the worker that
happened to accept them, and one worker may get them all. The shop is emptied
and seeded again first, so every run reads the same rows.

* ``django-default``: one database, ``CONN_MAX_AGE = 0`` (a new connection per
  request), no pool: Django's defaults;
* ``persistent``: one database, ``CONN_MAX_AGE = 600``;
* ``replica-router``: the router with two replicas (weights 1:1), Django's
  psycopg pool on every alias, health checks and read-your-writes on.

``CONN_HEALTH_CHECKS`` is off in all three, as Django has it by default.

Every server, the load generator and PostgreSQL share the machine's cores, so
the figures compare configurations; they are not a capacity figure.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from charts import OUT, bar_chart
from machine import describe

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "sample_site"

LUA = """
math.randomseed(42)
request = function()
  if math.random() < 0.3 then
    return wrk.format("GET", "/?page=" .. math.random(1, 20))
  end
  return wrk.format("GET", "/books/" .. math.random(1, %(books)d) .. "/")
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _configs(primary: str, replicas: list[str]) -> dict[str, dict[str, str]]:
    # CONN_HEALTH_CHECKS off everywhere, as Django's default has it: the sample
    # site turns it on for its own aliases, and a pool then tests every
    # connection it hands out with a round trip.
    pool = "pool_min_size=4&pool_max_size=12&conn_health_checks=False"
    return {
        "django-default": {
            "DATABASE_URL": f"{primary}?conn_health_checks=False",
            "REPLICA_URLS": "",
        },
        "persistent": {
            "DATABASE_URL": f"{primary}?conn_max_age=600&conn_health_checks=False",
            "REPLICA_URLS": "",
        },
        "replica-router": {
            "DATABASE_URL": f"{primary}?{pool}",
            "REPLICA_URLS": ",".join(f"{url}?{pool}" for url in replicas),
        },
    }


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SITE,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _serve(env: dict[str, str], port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "bookshop_site/gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--keep-alive",
            "0",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ],
        cwd=SITE,
        env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the sample site did not start")
        time.sleep(0.1)


def _wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    assert rps, out
    return {
        "rps": float(rps.group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--books", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    cluster_dir = os.environ.get("REPLICA_ROUTER_CLUSTER_DIR")
    if not cluster_dir:
        sys.exit("Run it with 'make bench', which starts the local cluster it measures against.")
    sys.path.insert(0, str(ROOT))
    from replica_router.testing.cluster import PRIMARY, Cluster

    cluster = Cluster(cluster_dir)
    base_env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REPLICA_URLS", "DJANGO_SETTINGS_MODULE")
    }
    base_env["SECRET_KEY"] = "bench-only-not-secret"
    seed_env = {**base_env, "DATABASE_URL": cluster.url(PRIMARY), "REPLICA_URLS": ""}
    _manage("migrate", "--verbosity", "0", env=seed_env)
    # The same rows on every run: flush resets the ids too, which the Lua script draws from.
    _manage("flush", "--no-input", env=seed_env)
    _manage(
        "seed", "--authors", "100", "--books", str(args.books), "--reviews", str(args.books * 3),
        env=seed_env,
    )  # fmt: skip
    cluster.wait_replayed()

    configs = _configs(cluster.url(PRIMARY), [cluster.url(name) for name in cluster.replicas])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % {"books": args.books})
    try:
        for _ in range(args.rounds):
            for name, urls in configs.items():
                port = _free_port()
                server = _serve({**base_env, **urls}, port, args.workers, args.threads)
                try:
                    _wrk(port, Path(script.name), 2, args.connections)  # warm-up
                    runs[name].append(_wrk(port, Path(script.name), args.seconds, args.connections))
                finally:
                    server.send_signal(signal.SIGTERM)
                    server.wait(30)
    finally:
        os.unlink(script.name)

    results = {
        name: {
            key: statistics.median(run[key] for run in rounds)
            for key in ("rps", "p50", "p99", "errors", "socket_errors")
        }
        for name, rounds in runs.items()
    }
    lines = [
        f"HTTP, sample site (gunicorn {args.workers} workers x {args.threads} threads, no "
        f"keep-alive), {args.books:,} books, wrk -t2 -c{args.connections}, "
        f"{args.rounds} rounds x {args.seconds} s per configuration, median of rounds; "
        f"{os.cpu_count()} cores shared by server, load generator and PostgreSQL",
        f"{'configuration':16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:16} {r['rps']:8.0f} {r['p50']:8.2f} {r['p99']:8.2f} "
            f"{r['errors'] + r['socket_errors']:7.0f}"
        )
    base = results["django-default"]["rps"]
    lines.append(
        f"replica-router / django-default: {results['replica-router']['rps'] / base:.2f}x; "
        f"persistent / django-default: {results['persistent']['rps'] / base:.2f}x"
    )
    lines.append(describe(len(cluster.replicas)))
    report = "\n".join(lines)
    print(report)
    OUT.mkdir(exist_ok=True)
    (OUT / "http.txt").write_text(report + "\n")
    bar_chart(
        OUT / "http.svg",
        "Sample site, requests per second (median of rounds; higher is better)",
        [(name, r["rps"]) for name, r in results.items()],
        value_label=lambda rps: f"{rps:.0f} req/s",
    )


if __name__ == "__main__":
    main()
