"""Per-request routing state, kept in context variables.

A context variable, unlike a ``threading.local``, is private to each asyncio
task as well as each thread, and ``var.reset(token)`` restores exactly the value
that was there before, so nested and concurrent uses cannot leak into each other.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction

__all__ = ["UsePrimary", "primary_forced", "use_primary"]

# The router reads this directly (``_forced.get()`` is a C call) on every read.
_forced: ContextVar[bool] = ContextVar("replica_router.primary_forced", default=False)

_F = TypeVar("_F", bound=Callable[..., Any])


def primary_forced() -> bool:
    """Return True while the current code runs under :func:`use_primary`."""
    return _forced.get()


class UsePrimary:
    """Send every read to the primary while active; returned by ``use_primary()``.

    As a context manager an instance may be entered once at a time; call
    ``use_primary()`` again for each ``with`` block. As a decorator it sets the
    state afresh on every call, so recursive and concurrent calls are safe.
    """

    __slots__ = ("_token",)

    def __init__(self) -> None:
        self._token: Token[bool] | None = None

    def __enter__(self) -> None:
        if self._token is not None:
            raise RuntimeError(
                "This use_primary() block is already active; call use_primary() again "
                "for a nested or concurrent block."
            )
        self._token = _forced.set(True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _forced.reset(token)

    def __call__(self, func: _F) -> _F:
        return _decorate(func)


def _decorate(func: _F) -> _F:
    if isinstance(func, staticmethod | classmethod):
        # Wrap the function inside and re-wrap, so the decorator order does not matter.
        return cast(_F, type(func)(_decorate(func.__func__)))
    if not callable(func):
        raise TypeError(f"use_primary can decorate a function or method, not {func!r}.")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        # The state would be set while the generator is created, not while it runs,
        # and setting it around each step would leak it to the consumer.
        raise TypeError(
            f"use_primary cannot decorate the generator function {func.__qualname__}; "
            "consume the generator inside a 'with use_primary():' block instead."
        )

    if iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            # Set inside the coroutine, so it lands in the running task's context.
            token = _forced.set(True)
            try:
                return await func(*args, **kwargs)
            finally:
                _forced.reset(token)

        return cast(_F, async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _forced.set(True)
        try:
            return func(*args, **kwargs)
        finally:
            _forced.reset(token)

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
    return _decorate(func)
