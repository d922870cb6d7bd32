"""A throwaway DNS server on 127.0.0.1, for the discovery tests and benchmark.

It runs dnsmasq (Debian's ``dnsmasq-base``) as a child process on a free port,
answering only for the records it is given, with no upstream server and no
``/etc/hosts``::

    with DnsServer(ttl=1) as dns:
        dns.serve(srv={"_postgresql._tcp.replicas.test": [("r1.test", 5433)]},
                  hosts={"r1.test": "127.0.0.1"})
        ... DISCOVERY = {"SOURCE": "dns", "NAMESERVERS": [dns.address], ...}

dnsmasq reads SRV records from its configuration only, so :meth:`serve`
restarts it on the same port with the new records. :meth:`halt` stops it,
keeping the port, to test a DNS server that does not answer.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from replica_router.testing.processes import end, free_port

__all__ = ["DnsServer", "DnsServerError", "find_dnsmasq"]

HOST = "127.0.0.1"


class DnsServerError(RuntimeError):
    """dnsmasq could not be found or started."""


def find_dnsmasq() -> str:
    """The path of ``dnsmasq``, or an error that says how to install it."""
    path = shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None
    )
    if path is None:
        raise DnsServerError(
            "dnsmasq was not found. Install it:\n"
            "  Debian/Ubuntu: sudo apt-get install dnsmasq-base\n"
            "  macOS:         brew install dnsmasq"
        )
    return path


class DnsServer:
    """One dnsmasq child process on a free loopback port; a context manager."""

    def __init__(self, *, ttl: int = 1, binary: str | None = None) -> None:
        self.ttl = ttl
        self._binary = binary
        self._directory = Path(tempfile.mkdtemp(prefix="replica-router-dns-"))
        self.port = free_port(udp=True)  # dnsmasq listens on both
        self._process: subprocess.Popen[bytes] | None = None
        self._srv: dict[str, list[tuple[str, int]]] = {}
        self._hosts: dict[str, str] = {}

    @property
    def address(self) -> str:
        """``"127.0.0.1:port"``, as DISCOVERY's NAMESERVERS takes it."""
        return f"{HOST}:{self.port}"

    def serve(
        self,
        *,
        srv: Mapping[str, Iterable[tuple[str, int]]] | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        """Answer with these records from now on (dnsmasq is restarted)."""
        if srv is not None:
            self._srv = {name: list(targets) for name, targets in srv.items()}
        if hosts is not None:
            self._hosts = dict(hosts)
        self.halt()
        self.start()

    def start(self) -> None:
        """Start dnsmasq with the current records; returns once it answers."""
        if self._process is not None:
            return
        conf = self._directory / "dnsmasq.conf"
        lines = [
            "no-resolv",
            "no-hosts",
            "bind-interfaces",
            f"listen-address={HOST}",
            f"port={self.port}",
            f"local-ttl={self.ttl}",
            "user=nobody" if _is_root() else "",
        ]
        lines += [f"host-record={name},{address}" for name, address in self._hosts.items()]
        for name, targets in self._srv.items():
            lines += [f"srv-host={name},{target},{port}" for target, port in targets]
            if not targets:  # a name with no record: an empty answer
                lines.append(f"srv-host={name}")
        conf.write_text("\n".join(line for line in lines if line) + "\n")
        log = (self._directory / "dnsmasq.log").open("ab")
        self._process = subprocess.Popen(
            [
                self._binary or find_dnsmasq(),
                "--keep-in-foreground",
                f"--conf-file={conf}",
                "--pid-file=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                output = (self._directory / "dnsmasq.log").read_text(errors="replace")
                self.halt()
                raise DnsServerError(f"dnsmasq did not start on {self.address}:\n{output}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        # Any well-formed reply to a query (REFUSED included) means it is up.
        query = (
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x04test\x00\x00\x01\x00\x01"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(0.2)
            try:
                udp.sendto(query, (HOST, self.port))
                return udp.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False

    def halt(self) -> None:
        """Stop dnsmasq, keeping the port and records for :meth:`start`."""
        process, self._process = self._process, None
        end(process, timeout=5)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
