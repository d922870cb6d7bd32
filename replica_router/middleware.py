"""Read-your-writes across requests: the pinning middleware.

Put ``replica_router.middleware.PrimaryPinningMiddleware`` first in
``MIDDLEWARE`` (above ``SessionMiddleware``), so that its response phase runs
last and sees every write of the request, the session save after a login
included.

Within a request, once the request has written on the primary, its later reads
go to the primary. Across requests, a response to a request that wrote carries a
signed cookie; what it holds depends on ``READ_YOUR_WRITES``:

``"lsn"``
    the primary's WAL insert position after the write. A later request reads
    from a replica that has replayed that position, else from the primary. When
    every replica in rotation has passed it, the cookie is dropped.
``"time"``
    only the time of the write: reads go to the primary for ``PIN_SECONDS``.
``"off"``
    nothing is pinned.

Within a request, with ``MONOTONIC_READS`` on (the default, and whatever
``READ_YOUR_WRITES`` says), the reads come from one node: no read returns
older data than an earlier read of the same request.

A cookie that is tampered with, signed with another key, malformed or older
than ``PIN_SECONDS`` is ignored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core import signing
from django.http import HttpRequest, HttpResponseBase

from replica_router import runtime
from replica_router.conf import RouterConfig, get_config
from replica_router.context import CausalState, causal_state, primary_insert_lsn
from replica_router.lsn import format_lsn, parse_lsn
from replica_router.runtime import get_balancer, get_counters, get_monitor

__all__ = ["PrimaryPinningMiddleware"]

logger = logging.getLogger("replica_router")

_SALT = "replica_router.middleware.PrimaryPinningMiddleware"


class _PinSigner(signing.TimestampSigner):
    """Signs a pin with the time of the write, also when the pin is signed again.

    A pin lasts ``PIN_SECONDS`` from the write; re-signing it to name the
    replica a request read from must not extend it.
    """

    def __init__(self, signed_at: int | None = None) -> None:
        super().__init__(salt=_SALT)
        self.signed_at = signed_at

    def timestamp(self) -> str:
        if self.signed_at is None:
            return super().timestamp()
        return signing.b62_encode(self.signed_at)


def sign_pin(value: str, *, signed_at: int | None = None) -> str:
    """The cookie value for ``value`` (``"lsn:0/3000148"``, ``"lsn:0/3000148@replica_1"``
    or ``"time"``), signed now or at ``signed_at`` (a Unix time)."""
    return _PinSigner(signed_at).sign(value)


def _signed_at(raw: str) -> int:
    """When a cookie that :func:`read_cookie` accepted was signed."""
    return int(signing.b62_decode(raw.rsplit(":", 2)[-2]))


def read_cookie(raw: str | None, config: RouterConfig) -> CausalState | None:
    """The causal state a pin cookie asks for, or None for a missing or bad one."""
    if not raw:
        return None
    try:
        value = _PinSigner().unsign(raw, max_age=timedelta(seconds=config.pin_seconds))
    except signing.SignatureExpired:
        return None
    except signing.BadSignature:
        logger.debug("replica_router: ignoring a pin cookie with a bad signature")
        return None
    kind, _, rest = value.partition(":")
    if kind == "time" and config.read_your_writes == "time":
        return CausalState(pinned=True)
    if kind == "lsn" and config.read_your_writes == "lsn":
        lsn, _, node = rest.partition("@")
        try:
            min_lsn = parse_lsn(lsn)
        except ValueError:
            logger.debug("replica_router: ignoring a malformed pin cookie")
            return None
        # The replica the client's last request read from, which has the
        # write: reading there again cannot go back in time.
        if not (config.monotonic_reads and node in config.replicas):
            node = ""
        return CausalState(min_lsn=min_lsn, reading_from=node or None)
    # A cookie from the other mode (the setting changed): a write happened less
    # than PIN_SECONDS ago, so reading from the primary is the safe answer.
    return CausalState(pinned=True)


def _nothing_to_do(config: RouterConfig) -> bool:
    """Whether no read of this request can go to a replica, or none needs a guarantee.

    With no replica to route to (none configured, or a test's replicas serving
    through the primary) the request runs as without the middleware: no pin
    cookie, no query for the primary's WAL position after a write, which a
    test's ``assertNumQueries`` would count.
    """
    if config.read_your_writes == "off" and not config.monotonic_reads:
        return True
    return not (runtime.current or runtime.load()).replicas


class PrimaryPinningMiddleware:
    """Read-your-writes for Django requests; works under WSGI and ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        config = get_config()
        if _nothing_to_do(config):
            return self.get_response(request)
        state = self._begin(request, config)
        reset = causal_state.set(state)
        try:
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
            lsn = primary_insert_lsn() if state.wrote and config.read_your_writes == "lsn" else None
        finally:
            causal_state.reset(reset)
        self._finish(request, response, state, lsn, config)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        config = get_config()
        if _nothing_to_do(config):
            return await self.get_response(request)  # type: ignore[no-any-return,misc]
        state = self._begin(request, config)
        reset = causal_state.set(state)
        try:
            response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
            lsn = None
            if state.wrote and config.read_your_writes == "lsn":
                lsn = await sync_to_async(primary_insert_lsn)()
        finally:
            causal_state.reset(reset)
        self._finish(request, response, state, lsn, config)
        return response

    def _begin(self, request: HttpRequest, config: RouterConfig) -> CausalState:
        if config.read_your_writes == "off":
            return CausalState()  # for monotonic reads alone
        state = read_cookie(request.COOKIES.get(config.cookie_name), config)
        if state is None:
            return CausalState()
        if config.metrics and (counters := get_counters()) is not None:
            counters.pins_honoured()
        return state

    def _finish(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        state: CausalState,
        lsn: int | None,
        config: RouterConfig,
    ) -> None:
        name = config.cookie_name
        if config.read_your_writes == "off":
            return
        if state.wrote:
            value = f"lsn:{format_lsn(lsn)}" if lsn is not None else "time"
            _set_pin(request, response, value, time.time(), config)
            if config.metrics and (counters := get_counters()) is not None:
                counters.pins_set()
        elif state.min_lsn is not None and name in request.COOKIES:
            if config.monotonic_reads:
                self._carry_on(request, response, state, config)
            elif _all_replayed(state):
                response.delete_cookie(name, samesite="Lax")

    @staticmethod
    def _carry_on(
        request: HttpRequest, response: HttpResponseBase, state: CausalState, config: RouterConfig
    ) -> None:
        """Monotonic reads across a pinned client's requests.

        Until the pin expires, the cookie names the replica this request read
        from, so that the next request reads there too. A request that read
        from the primary (no replica had the write yet) leaves the cookie as it
        is: raising its position to the primary's would keep the client on the
        primary for as long as anyone writes (docs/benchmarks.md has figures).
        """
        assert state.min_lsn is not None
        node = state.reading_from
        if node is None or node == config.primary:
            return
        value = f"lsn:{format_lsn(state.min_lsn)}@{node}"
        raw = request.COOKIES[config.cookie_name]
        if raw.rpartition(":")[0].rpartition(":")[0] == value:
            return  # the cookie says so already
        _set_pin(request, response, value, _signed_at(raw), config)


def _set_pin(
    request: HttpRequest,
    response: HttpResponseBase,
    value: str,
    signed_at: float,
    config: RouterConfig,
) -> None:
    """Set the pin cookie to ``value``, signed at, and expiring PIN_SECONDS after,
    ``signed_at`` (the time of the write)."""
    response.set_cookie(
        config.cookie_name,
        sign_pin(value, signed_at=int(signed_at)),
        max_age=max(1, math.ceil(signed_at + config.pin_seconds - time.time())),
        httponly=True,
        samesite="Lax",
        secure=request.is_secure(),
    )


def _all_replayed(state: CausalState) -> bool:
    """Whether every replica in rotation has replayed the state's ``min_lsn``."""
    min_lsn = state.min_lsn
    assert min_lsn is not None
    monitor = get_monitor()
    positions = monitor.replay_positions if monitor is not None else {}
    rotation = [alias for alias, weight in get_balancer().weights.items() if weight > 0]
    return bool(rotation) and all(
        state.checked.get(alias) or positions.get(alias, -1) >= min_lsn for alias in rotation
    )
