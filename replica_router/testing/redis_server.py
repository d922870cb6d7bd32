"""A throwaway Redis server on 127.0.0.1, for tests and benchmarks.

Used as a context manager::

    with RedisServer() as redis:
        app = Celery(broker=redis.url())
        ...

It runs Debian's ``redis-server`` (``apt-get install redis-server``) as a
child process on a free port, bound to loopback, with persistence off and its
working directory in a temporary directory, and returns once the server
answers ``PING``. It never uses a Redis that happens to be running already, so
a test cannot touch someone's data or depend on a service it did not start.

The ``PING`` is spoken over a plain socket, so this module needs no Redis
client library.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from replica_router.testing.processes import end, free_port

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "ping"]

HOST = "127.0.0.1"


class RedisServerError(RuntimeError):
    """The local Redis server could not be found or started."""


def find_redis_server() -> str:
    """The path of ``redis-server``, or an error that says how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError(
            "redis-server was not found on PATH. Install it:\n"
            "  Debian/Ubuntu: sudo apt-get install redis-server\n"
            "  macOS:         brew install redis"
        )
    return path


def ping(port: int, *, timeout: float = 1.0) -> bool:
    """Whether a Redis server on ``127.0.0.1:port`` answers ``PING`` with ``PONG``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")  # an inline command: no RESP framing needed
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process, on a free loopback port.

    ``start()`` returns once the server answers ``PING``; ``stop()`` ends it and
    removes the temporary directory it made. Both are idempotent, and the
    object is a context manager that does both. ``halt()`` ends it but keeps
    its port, for ``start()`` to bring it back at the same URL.
    """

    def __init__(self, *, binary: str | None = None, startup_timeout: float = 10.0) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be > 0 seconds, got {startup_timeout}")
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the Redis server is not running; call start() first")
        return self._port

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:PORT/DB``, for a broker, a result backend or a client."""
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server; after :meth:`halt`, on the port it had."""
        if self.running:
            return
        binary = self._binary or find_redis_server()
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="replica-router-redis-"))
        log = self._directory / "redis.log"
        # A free port can be taken by someone else before the server binds it;
        # then the server exits at once, and another port is tried. A server
        # brought back after halt() must keep its URL: one try, on its port.
        ports = [self._port] if self._port is not None else [free_port() for _ in range(3)]
        for port in ports:
            with log.open("ab") as out:
                self._process = subprocess.Popen(
                    [
                        binary,
                        *("--port", str(port)),
                        *("--bind", HOST),
                        *("--save", ""),
                        *("--appendonly", "no"),
                        *("--dir", str(self._directory)),
                        *("--daemonize", "no"),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready(port):
                self._port = port
                return
        output = log.read_text(errors="replace")
        self.stop()
        raise RedisServerError(f"redis-server did not start; its output:\n{output}")

    def _wait_ready(self, port: int) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if ping(port, timeout=0.5):
                return True
            time.sleep(0.02)
        self._process.kill()
        self._process.wait()
        return False

    def halt(self) -> None:
        """End the server but keep its port, so that :meth:`start` brings it back
        at the same URL: a Redis host that goes down and comes back."""
        process, self._process = self._process, None
        end(process)

    def stop(self) -> None:
        self.halt()
        self._port = None
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
