"""HTTP: the sample site under concurrent load, in three configurations side by side.

Run with ``make bench``, which starts the local cluster and sets
``REPLICA_ROUTER_CLUSTER_DIR``; needs ``wrk`` (``apt-get install wrk``).

The same bookshop (``sample_site/``, gunicorn with one worker and 8 threads)
serves read-heavy traffic (70 % book pages with their reviews, 30 % the book
list) from ``wrk`` on loopback, in rounds that alternate the configurations:

* ``django-default``: one database, ``CONN_MAX_AGE = 0`` (a new connection per
  request), no pool: Django's defaults;
* ``persistent``: one database, ``CONN_MAX_AGE = 600``;
* ``replica-router``: the router with two replicas (weights 1:1), Django's
  psycopg pool on every alias, health checks and read-your-writes on.

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

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "sample_site"
OUT = ROOT / "docs" / "bench"

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
    pool = "pool_min_size=4&pool_max_size=12"
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


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
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


def _chart(results: dict[str, dict[str, float]], path: Path) -> None:
    """A small SVG bar chart of requests per second."""
    width, bar, gap, left = 560, 28, 14, 150
    top = max(r["rps"] for r in results.values())
    rows = []
    for i, (name, r) in enumerate(results.items()):
        y = 30 + i * (bar + gap)
        length = (width - left - 90) * r["rps"] / top
        rows.append(
            f'<text x="{left - 8}" y="{y + bar * 0.68:.0f}" text-anchor="end">{name}</text>'
            f'<rect x="{left}" y="{y}" width="{length:.0f}" height="{bar}" fill="#3b6ea8"/>'
            f'<text x="{left + length + 6:.0f}" y="{y + bar * 0.68:.0f}">'
            f"{r['rps']:.0f} req/s</text>"
        )
    height = 30 + len(results) * (bar + gap) + 10
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">'
        f'<text x="10" y="18" font-weight="bold">Sample site, requests per second '
        f"(median of rounds, higher is better)</text>{''.join(rows)}</svg>\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--books", type=int, default=1000)
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
    _manage(
        "seed", "--authors", "100", "--books", str(args.books), "--reviews", str(args.books * 3),
        "--force", env=seed_env,
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
                server = _serve({**base_env, **urls}, port)
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
        f"HTTP, sample site (gunicorn 1 worker x 8 threads), wrk -t2 -c{args.connections}, "
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
    report = "\n".join(lines)
    print(report)
    OUT.mkdir(exist_ok=True)
    (OUT / "http.txt").write_text(report + "\n")
    _chart(results, OUT / "http.svg")


if __name__ == "__main__":
    main()
