"""The request context: where the reads of the code running now must go.

Three things travel with the code that runs, in context variables:

* :func:`use_primary` forces reads to the primary for a block or a function;
* :func:`max_lag` gives reads a staleness budget: only a replica whose lag
  cannot exceed it serves them;
* a :class:`CausalState` (set by the pinning middleware for a request, or by
  :class:`causal` for a block or a job) says what the reads must see: this
  context's own writes, the write a causality token stands for, and nothing
  older than its earlier reads (monotonic reads).

A context variable, unlike a ``threading.local``, is private to each asyncio
task as well as each thread, and ``var.reset(token)`` restores exactly the value
that was there before, so nested and concurrent uses cannot leak into each other.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction
from django.db import connections

from replica_router.conf import get_config
from replica_router.lsn import INSERT_LSN, format_lsn, parse_lsn, query_lsn

__all__ = [
    "CausalState",
    "MaxLag",
    "UsePrimary",
    "causal",
    "causal_state",
    "current_token",
    "forced_primary",
    "lag_budget",
    "max_lag",
    "note_write",
    "primary_forced",
    "primary_insert_lsn",
    "use_primary",
]

#: True under :func:`use_primary`. The router reads it on every read
#: (``forced_primary.get()`` is one C call).
forced_primary: ContextVar[bool] = ContextVar("replica_router.primary_forced", default=False)

#: The staleness budget in seconds under :func:`max_lag`, else None.
lag_budget: ContextVar[float | None] = ContextVar("replica_router.max_lag", default=None)

_F = TypeVar("_F", bound=Callable[..., Any])


def primary_forced() -> bool:
    """Return True while the current code runs under :func:`use_primary`."""
    return forced_primary.get()


class _Override:
    """Sets a context variable for a block or for each call of a function.

    As a context manager an instance may be entered once at a time; call the
    factory again for each ``with`` block. As a decorator it sets the variable
    afresh on every call, so recursive and concurrent calls are safe.
    """

    __slots__ = ("_reset",)
    _var: ContextVar[Any]
    _name: str

    def __init__(self) -> None:
        self._reset: Token[Any] | None = None

    @property
    def _value(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> None:
        if self._reset is not None:
            raise RuntimeError(
                f"This {self._name}() block is already active; call {self._name}() again "
                "for a nested or concurrent block."
            )
        self._reset = self._var.set(self._value)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset, self._reset = self._reset, None
        if reset is not None:
            self._var.reset(reset)

    def __call__(self, func: _F) -> _F:
        return _decorate(func, self._var, self._value, self._name)


class UsePrimary(_Override):
    """Send every read to the primary while active; returned by ``use_primary()``."""

    __slots__ = ()
    _var = forced_primary
    _name = "use_primary"
    _value = True


class MaxLag(_Override):
    """Give reads a staleness budget while active; returned by ``max_lag(seconds)``."""

    __slots__ = ("seconds",)
    _var = lag_budget
    _name = "max_lag"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        # bool is an int; max_lag(True) is a mistake, not one second.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"max_lag() takes a number of seconds, not {seconds!r}.")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"max_lag() needs a positive finite number of seconds: {seconds!r}")
        self.seconds = float(seconds)

    @property
    def _value(self) -> float:
        return self.seconds


def _decorate(func: _F, var: ContextVar[Any], value: object, name: str) -> _F:
    if isinstance(func, staticmethod | classmethod):
        # Wrap the function inside and re-wrap, so the decorator order does not matter.
        return cast(_F, type(func)(_decorate(func.__func__, var, value, name)))
    if not callable(func):
        raise TypeError(f"{name} can decorate a function or method, not {func!r}.")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        # The state would be set while the generator is created, not while it runs,
        # and setting it around each step would leak it to the consumer.
        raise TypeError(
            f"{name} cannot decorate the generator function {func.__qualname__}; "
            f"consume the generator inside a 'with {name}(...):' block instead."
        )

    if iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            # Set inside the coroutine, so it lands in the running task's context.
            reset = var.set(value)
            try:
                return await func(*args, **kwargs)
            finally:
                var.reset(reset)

        return cast(_F, async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        reset = var.set(value)
        try:
            return func(*args, **kwargs)
        finally:
            var.reset(reset)

    return cast(_F, wrapper)


@overload
def use_primary(func: _F, /) -> _F: ...
@overload
def use_primary(func: None = None, /) -> UsePrimary: ...
def use_primary(func: _F | None = None, /) -> _F | UsePrimary:
    """Send reads to the primary, for a block or for every call of a function.

    Use it as ``with use_primary():``, ``@use_primary`` or ``@use_primary()``, on
    plain functions, methods and ``async def`` functions. The state lives in a
    context variable: it covers code called from the block (including
    ``sync_to_async``), is private to each thread and asyncio task, and the outer
    state comes back when the block ends, even on an exception.

    Writes always go to the primary; this is for reads that must see them, for
    example right after a write in another request.
    """
    if func is None:
        return UsePrimary()
    return _decorate(func, forced_primary, True, "use_primary")


def max_lag(seconds: float) -> MaxLag:
    """Bound how stale the reads of a block or function may be, in seconds.

    Use it as ``with max_lag(2):`` or ``@max_lag(600)``, on plain and ``async
    def`` functions. A read in it goes to a replica only if the health monitor
    can promise that the replica's lag cannot exceed ``seconds`` at the time of
    the read (its measured lag plus the time until its next verdict), else to
    the primary. A budget looser than ``MAX_LAG_SECONDS`` also admits replicas
    that are out of rotation only for lag, which keeps tolerant reads (reports)
    off the primary during a lag storm. The innermost block wins, and the outer
    budget comes back when it ends; :func:`use_primary` overrides both.
    """
    return MaxLag(seconds)


# -- read-your-writes ----------------------------------------------------------


class CausalState:
    """What reads in one request (or one ``causal()`` block) must see.

    A mutable object in a context variable, rather than values in several
    variables, so that a write made in a thread by ``sync_to_async`` is seen by
    the async middleware that owns the request.
    """

    __slots__ = ("checked", "min_lsn", "pinned", "reading_from", "wrote")

    def __init__(
        self, *, min_lsn: int | None = None, pinned: bool = False, reading_from: str | None = None
    ) -> None:
        #: This request wrote on the primary: its later reads go there too.
        self.wrote = False
        #: The WAL position a replica must have replayed to serve these reads.
        self.min_lsn = min_lsn
        #: "time" mode: a write happened less than PIN_SECONDS ago.
        self.pinned = pinned
        #: Replicas known to have replayed ``min_lsn``, and those known not to.
        self.checked: dict[str, bool] = {}
        #: Monotonic reads: the node this context's reads come from, once it has
        #: read. A replica's replay position only grows, so reading from one node
        #: never goes back in time; when that replica cannot serve, the reads move
        #: to the primary, the one node sure to be at least as new.
        self.reading_from = reading_from


#: The causal state of the running request or ``causal()`` block, if any.
causal_state: ContextVar[CausalState | None] = ContextVar("replica_router.causal", default=None)
# Outside any request or causal() block: did this context write?
_wrote_outside: ContextVar[bool] = ContextVar("replica_router.wrote", default=False)


def note_write() -> None:
    """Record that the current context wrote on the primary."""
    state = causal_state.get()
    if state is not None:
        state.wrote = True
    else:
        _wrote_outside.set(True)


def primary_insert_lsn() -> int:
    """The primary's WAL insert position now, through Django's connection."""
    lsn = query_lsn(connections[get_config().primary], INSERT_LSN)
    assert lsn is not None  # a primary always has one
    return lsn


def current_token() -> str | None:
    """The causality token of this context's last write on the primary, or None.

    Pass it to work that runs elsewhere (a Celery task's headers, say) and read
    there inside ``with causal(token):``, so those reads see this write. It is a
    WAL position such as ``"0/3000148"``, not a secret.
    """
    state = causal_state.get()
    wrote = state.wrote if state is not None else _wrote_outside.get()
    if not wrote:
        return None
    return format_lsn(primary_insert_lsn())


class causal:  # noqa: N801 - used like a function, as ``with causal(token):``
    """Make reads in a block see the write a token stands for.

    Reads go to a replica that has replayed the token's WAL position, else to
    the primary. A write inside the block sends the block's later reads to the
    primary. ``causal(None)`` only does the latter. Usable as a decorator too.
    """

    __slots__ = ("_min_lsn", "_reset")

    def __init__(self, token: str | None = None) -> None:
        self._min_lsn = None if token is None else parse_lsn(token)
        self._reset: Token[CausalState | None] | None = None

    def __enter__(self) -> CausalState:
        state = CausalState(min_lsn=self._min_lsn)
        self._reset = causal_state.set(state)
        return state

    def __exit__(self, *exc: object) -> None:
        if self._reset is not None:
            causal_state.reset(self._reset)
            self._reset = None

    def __call__(self, func: _F) -> _F:
        token = None if self._min_lsn is None else format_lsn(self._min_lsn)

        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with causal(token):
                    return await func(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with causal(token):
                return func(*args, **kwargs)

        return cast(_F, wrapper)
