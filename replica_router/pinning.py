"""Per-request routing state, kept in context variables.

A context variable, unlike a ``threading.local``, is private to each asyncio
task as well as each thread, and ``var.reset(token)`` restores exactly the value
that was there before, so nested and concurrent uses cannot leak into each other.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Final, TypeVar, cast, overload

from asgiref.sync import iscoroutinefunction

__all__ = [
    "CausalState",
    "UsePrimary",
    "causal",
    "current_token",
    "primary_forced",
    "use_primary",
]

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


# -- read-your-writes ----------------------------------------------------------


class CausalState:
    """What reads in one request (or one ``causal()`` block) must see.

    A mutable object in a context variable, rather than values in several
    variables, so that a write made in a thread by ``sync_to_async`` is seen by
    the async middleware that owns the request.
    """

    __slots__ = ("checked", "pinned", "token", "wrote")

    def __init__(self, *, token: int | None = None, pinned: bool = False) -> None:
        #: This request wrote on the primary: its later reads go there too.
        self.wrote = False
        #: The WAL position a replica must have replayed to serve these reads.
        self.token = token
        #: "time" mode: a write happened less than PIN_SECONDS ago.
        self.pinned = pinned
        #: Replicas known to have replayed ``token``, and those known not to.
        self.checked: dict[str, bool] = {}


_causal: ContextVar[CausalState | None] = ContextVar("replica_router.causal", default=None)
# Outside any request or causal() block: did this context write?
_wrote_outside: ContextVar[bool] = ContextVar("replica_router.wrote", default=False)

# Statements that change data or schema. SELECT ... FOR UPDATE locks but does
# not write, and a SELECT calling a writing function is not detected.
_WRITE_KEYWORDS: Final = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE",
        "GRANT", "REVOKE", "COMMENT", "COPY", "REINDEX", "CLUSTER", "REFRESH",
    }
)  # fmt: skip
_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)


def is_write(sql: object) -> bool:
    """Whether a statement writes (by its leading keyword, or a writing CTE)."""
    text = sql if isinstance(sql, str) else str(sql)
    head = text.lstrip(" \t\r\n(").split(None, 1)
    if not head:
        return False
    keyword = head[0].upper()
    if keyword in _WRITE_KEYWORDS:
        return True
    return keyword == "WITH" and _CTE_WRITE.search(text) is not None


def note_write() -> None:
    """Record that the current context wrote on the primary."""
    state = _causal.get()
    if state is not None:
        state.wrote = True
    else:
        _wrote_outside.set(True)


def detect_writes(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
) -> Any:
    """An execute wrapper for the primary's connections: note each real write."""
    result = execute(sql, params, many, context)
    if is_write(sql):
        note_write()
    return result


def format_lsn(lsn: int) -> str:
    """``0x3000148`` -> ``"0/3000148"``, as PostgreSQL prints a WAL position."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``"0/3000148"`` -> ``0x3000148``; ValueError on anything else."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def primary_insert_lsn() -> int:
    """The primary's WAL insert position now, through Django's connection."""
    from django.db import connections

    from replica_router.conf import get_config

    with connections[get_config().primary].cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
        row = cursor.fetchone()
    return int(row[0])


def current_token() -> str | None:
    """The causality token of this context's last write on the primary, or None.

    Pass it to work that runs elsewhere (a Celery task's headers, say) and read
    there inside ``with causal(token):``, so those reads see this write. It is a
    WAL position such as ``"0/3000148"``, not a secret.
    """
    state = _causal.get()
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

    __slots__ = ("_reset", "_token")

    def __init__(self, token: str | None = None) -> None:
        self._token = None if token is None else parse_lsn(token)
        self._reset: Token[CausalState | None] | None = None

    def __enter__(self) -> CausalState:
        state = CausalState(token=self._token)
        self._reset = _causal.set(state)
        return state

    def __exit__(self, *exc: object) -> None:
        if self._reset is not None:
            _causal.reset(self._reset)
            self._reset = None

    def __call__(self, func: _F) -> _F:
        token = None if self._token is None else format_lsn(self._token)

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


def install_write_detector(connection: Any, **kwargs: Any) -> None:
    """Add :func:`detect_writes` to a connection of the primary, once.

    For primaries on Django's own engine; ``replica_router.backends.postgresql``
    notes writes in its cursors instead. Connected to ``connection_created``
    by :func:`hook_write_detector`; the wrapper list belongs to Django's
    connection object and survives reconnects, hence the membership test.
    """
    from replica_router.conf import get_config

    if getattr(connection, "notes_writes", False):
        return
    try:
        primary = get_config().primary
    except Exception:  # misconfigured: the system checks say so
        return
    if connection.alias == primary and detect_writes not in connection.execute_wrappers:
        connection.execute_wrappers.append(detect_writes)


def hook_write_detector(**kwargs: Any) -> bool:
    """Connect :func:`install_write_detector` to ``connection_created`` if it is needed.

    It is needed unless the primary's engine notes writes itself. Any receiver
    of that signal costs every connection (each checkout from a pool) a
    dispatch of a few microseconds, so it is connected only when it is needed.
    Called when the app is ready and when the settings change. Returns whether
    it is connected.
    """
    from django.db import connections
    from django.db.backends.signals import connection_created

    from replica_router.conf import WATCHED_SETTINGS

    setting = kwargs.get("setting")
    if setting is not None and setting not in WATCHED_SETTINGS:
        return False
    uid = "replica_router.install_write_detector"
    if _primary_notes_writes():
        connection_created.disconnect(dispatch_uid=uid)
        return False
    connection_created.connect(install_write_detector, dispatch_uid=uid)
    for connection in connections.all(initialized_only=True):
        install_write_detector(connection)
    return True


def _primary_notes_writes() -> bool:
    from django.conf import settings
    from django.db.utils import load_backend

    from replica_router.conf import get_config

    try:
        engine = settings.DATABASES[get_config().primary]["ENGINE"]
        wrapper_class = load_backend(engine).DatabaseWrapper
    except Exception:  # misconfigured: the system checks say so
        return False
    return bool(getattr(wrapper_class, "notes_writes", False))
