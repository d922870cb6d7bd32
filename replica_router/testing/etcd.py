"""A throwaway one-member etcd on 127.0.0.1, the store a test Patroni cluster keeps its leader in.

It runs Debian's ``etcd`` (``apt-get install etcd-server``) as a child process
on free loopback ports, with its data in the directory it is given, and
returns once the server answers ``GET /health``. Patroni's ``etcd`` client
speaks etcd's v2 API, which etcd 3.4 serves when asked to (``--enable-v2``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from replica_router.testing.processes import end, free_port

__all__ = ["EtcdError", "EtcdServer", "find_etcd"]

HOST = "127.0.0.1"


class EtcdError(RuntimeError):
    """etcd could not be found or started."""


def find_etcd() -> str:
    """The path of ``etcd``, or an error that says how to install it."""
    path = shutil.which("etcd")
    if path is None:
        raise EtcdError("etcd was not found on PATH. Install it: sudo apt-get install etcd-server")
    return path


class EtcdServer:
    """One etcd member; ``start()`` and ``stop()`` are idempotent, and the
    object is a context manager that does both."""

    def __init__(self, directory: Path, *, startup_timeout: float = 20.0) -> None:
        self.directory = Path(directory)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: what Patroni's ``etcd.host`` takes."""
        if self.port is None:
            raise EtcdError("etcd is not running; call start() first")
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health", timeout=1) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def start(self) -> None:
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        client, peer = free_port(), free_port()
        log = self.directory / "etcd.log"
        with log.open("ab") as out:
            self._process = subprocess.Popen(
                [
                    find_etcd(),
                    *("--name", "etcd"),
                    *("--data-dir", str(self.directory / "data")),
                    *("--listen-client-urls", f"http://{HOST}:{client}"),
                    *("--advertise-client-urls", f"http://{HOST}:{client}"),
                    *("--listen-peer-urls", f"http://{HOST}:{peer}"),
                    *("--initial-advertise-peer-urls", f"http://{HOST}:{peer}"),
                    *("--initial-cluster", f"etcd=http://{HOST}:{peer}"),
                    "--enable-v2=true",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.port = client
        deadline = time.monotonic() + self._startup_timeout
        while not self.healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                output = log.read_text(errors="replace")[-4000:]
                self.stop()
                raise EtcdError(f"etcd did not start; the end of its log:\n{output}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        end(process)
        self.port = None

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
