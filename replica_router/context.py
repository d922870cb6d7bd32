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
    "lag_budget",
    "max_lag",
    "note_write",
    "primary_forced",
    "primary_insert_lsn",
    "read_override",
    "use_primary",
]

#: What the running code asks of its reads: ``False`` (nothing), ``True``
#: (:func:`use_primary`) or a float (a :func:`max_lag` budget in seconds). One
#: variable for both, because the router reads it on every read and one
#: ``get()`` is one C call. ``True`` is tested with ``is``: ``1.0 == True``.
read_override: ContextVar[bool | float] = ContextVar("replica_router.read_override", default=False)

_F = TypeVar("_F", bound=Callable[..., Any])


def primary_forced() -> bool:
    """Return True while the current code runs under :func:`use_primary`."""
    return read_override.get() is True


def lag_budget() -> float | None:
    """The staleness budget of the current code in seconds, or None."""
    override = read_override.get()
    return None if override is True or override is False else override


class _Override:
    """Sets :data:`read_override` for a block or for each call of a function.

    As a context manager an instance may be entered once at a time; call the
    factory again for each ``with`` block. As a decorator it sets the variable
    afresh on every call, so recursive and concurrent calls are safe.
    """

    __slots__ = ("_reset",)
    _name: str

    def __init__(self) -> None:
        self._reset: Token[bool | float] | None = None

    def _override(self, outer: bool | float) -> bool | float:
        """The value inside, given the value outside."""
        raise NotImplementedError

    def __enter__(self) -> None:
        if self._reset is not None:
            raise RuntimeError(
                f"This {self._name}() block is already active; call {self._name}() again "
                "for a nested or concurrent block."
            )
        self._reset = read_override.set(self._override(read_override.get()))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset, self._reset = self._reset, None
        if reset is not None:
            read_override.reset(reset)

    def __call__(self, func: _F) -> _F:
        return _decorate(func, self._override, self._name)


class UsePrimary(_Override):
    """Send every read to the primary while active; returned by ``use_primary()``."""

    __slots__ = ()
    _name = "use_primary"

    def _override(self, outer: bool | float) -> bool:
        return _force_primary(outer)


class MaxLag(_Override):
    """Give reads a staleness budget while active; returned by ``max_lag(seconds)``."""

    __slots__ = ("seconds",)
    _name = "max_lag"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        # bool is an int; max_lag(True) is a mistake, not one second.
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"max_lag() takes a number of seconds, not {seconds!r}.")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"max_lag() needs a positive finite number of seconds: {seconds!r}")
        self.seconds = float(seconds)

    def _override(self, outer: bool | float) -> bool | float:
        # Inside use_primary the reads stay on the primary; else the innermost budget wins.
        return True if outer is True else self.seconds


def _decorate(func: _F, override: Callable[[bool | float], bool | float], name: str) -> _F:
    if isinstance(func, staticmethod | classmethod):
        # Wrap the function inside and re-wrap, so the decorator order does not matter.
        return cast(_F, type(func)(_decorate(func.__func__, override, name)))
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
            reset = read_override.set(override(read_override.get()))
            try:
                return await func(*args, **kwargs)
            finally:
                read_override.reset(reset)

        return cast(_F, async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        reset = read_override.set(override(read_override.get()))
        try:
            return func(*args, **kwargs)
        finally:
            read_override.reset(reset)

    return cast(_F, wrapper)


def _force_primary(outer: bool | float) -> bool:
    # Under monotonic reads, a context that reads from the primary must not
    # read from a replica afterwards: any replica may be older than what it
    # saw. Noted once here, when the block starts, rather than on every read.
    state = causal_state.get()
    if state is not None:
        config = get_config()
        if config.monotonic_reads:
            state.reading_from = config.primary
    return True


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
    return _decorate(func, _force_primary, "use_primary")


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


def wrote_here() -> bool:
    """Whether this context has written on the primary (its reads stay there)."""
    state = causal_state.get()
    return state.wrote if state is not None else _wrote_outside.get()


def current_token() -> str | None:
    """The causality token of what this context must see, or None.

    After a write in this context, the primary's position after it; otherwise
    the position this context was given to read at (a pin cookie's, or the
    token of an enclosing ``causal(token)``), so that work handed on from a job
    that was itself handed a token still sees that write. None when neither.

    Pass it to work that runs elsewhere (a Celery task's headers, say) and read
    there inside ``with causal(token):``, so those reads see this write. It is a
    WAL position such as ``"0/3000148"``, not a secret. Inside
    ``transaction.atomic()`` the write is not committed yet: hand the work on
    from ``transaction.on_commit``.
    """
    state = causal_state.get()
    wrote = state.wrote if state is not None else _wrote_outside.get()
    if wrote:
        return format_lsn(primary_insert_lsn())
    if state is not None and state.min_lsn is not None:
        return format_lsn(state.min_lsn)
    return None


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
