"""The tour's view of the running site, over HTTP with plain ``urllib``.

A client that keeps cookies like a browser (the session, CSRF and the router's
pin cookie), the site's status as a staff user sees it at
/replicas/status.json, and the per-alias read counts the tour reports.
"""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

from bookshop.demo_account import STAFF_PASSWORD, STAFF_USERNAME

PRIMARY_ALIAS = "default"


class TourError(RuntimeError):
    """The site did not behave as the tour expects."""


# -- an HTTP client that behaves like a browser -----------------------------------


@dataclass
class Response:
    status: int
    headers: Message
    body: str
    elapsed: float

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class _ShowRedirects(urllib.request.HTTPRedirectHandler):
    # Return redirects to the caller, who follows them (to look at each step).
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """Keeps cookies (the session, CSRF and the router's pin cookie) like a browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _ShowRedirects()
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> Response:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        started = time.monotonic()
        try:
            with self._opener.open(self.base_url + path, body, timeout=15) as reply:
                status, headers, raw = reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx, 5xx
            status, headers, raw = error.code, error.headers, error.read()
        return Response(status, headers, raw.decode(), time.monotonic() - started)

    def get(self, path: str) -> Response:
        return self.request(path)

    def post(self, path: str, fields: dict[str, str]) -> Response:
        token = self.cookie("csrftoken")
        if token is None:
            raise TourError(f"no CSRF cookie before POST {path}: GET a page with the form first")
        return self.request(path, {**fields, "csrfmiddlewaretoken": token})

    def cookie(self, name: str) -> str | None:
        for cookie in self.jar:
            if cookie.name == name:
                return cookie.value
        return None

    def login(self, username: str, password: str) -> None:
        self.get("/accounts/login/")
        reply = self.post("/accounts/login/", {"username": username, "password": password})
        if reply.status != 302:
            raise TourError(f"could not log in as {username!r} (HTTP {reply.status})")


# -- what the site reports ---------------------------------------------------------


class Site:
    """The running site, seen through /replicas/status.json as a staff user."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/")
        self.staff = Browser(base_url)
        self.staff.login(STAFF_USERNAME, STAFF_PASSWORD)

    def status(self) -> dict[str, Any]:
        reply = self.staff.get("/replicas/status.json")
        if reply.status != 200:
            raise TourError(f"/replicas/status.json answered HTTP {reply.status}")
        document: dict[str, Any] = json.loads(reply.body)
        return document

    def reader(self, tries: int = 50) -> dict[str, Any]:
        """The sharing status seen by a process that does not probe."""
        for _ in range(tries):
            sharing: dict[str, Any] = self.status()["sharing"]
            if not sharing["probing_here"]:
                return sharing
        raise TourError(f"every process of {self.url} says it probes")

    def node(self, alias: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        for node in (status or self.status())["nodes"]:
            if node["alias"] == alias:
                return dict(node)
        raise TourError(f"no node {alias!r} in /replicas/status.json")

    def reads(self) -> dict[str, int]:
        """Reads served so far by each alias (the counters never go down)."""
        return {node["alias"]: node["reads_total"] for node in self.status()["nodes"]}

    def wait(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> float:
        """Poll the status until ``predicate`` holds; return the seconds it took."""
        started = time.monotonic()
        while True:
            if predicate(self.status()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TourError(f"not {what} after {timeout:g}s")
            time.sleep(0.1)

    def wait_node(self, alias: str, what: str, test: Callable[[dict[str, Any]], bool]) -> float:
        return self.wait(f"{alias} {what}", lambda s: test(self.node(alias, s)), timeout=30)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {alias: after.get(alias, 0) - before.get(alias, 0) for alias in after}


def name(alias: str) -> str:
    return "primary" if alias == PRIMARY_ALIAS else alias


def spread(reads: dict[str, int]) -> str:
    """``replica_1 120 (66.7%), replica_2 60 (33.3%), primary 0``: replicas first."""
    total = sum(reads.values()) or 1
    order = sorted(reads, key=lambda alias: (alias == PRIMARY_ALIAS, alias))
    return ", ".join(f"{name(a)} {reads[a]} ({100 * reads[a] / total:.1f}%)" for a in order)


def served_by(reads: dict[str, int]) -> str:
    """Who served a request's reads: ``primary``, ``replica_1 + primary``..."""
    serving = [name(alias) for alias, count in sorted(reads.items()) if count]
    return " + ".join(serving) or "nobody"
