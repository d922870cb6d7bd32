"""Read-your-writes for Celery tasks: the enqueuer's causal token travels with the task.

A view creates a row and enqueues a task that reads it. A worker picks the task
up within milliseconds, reads from a replica that has not replayed the write
yet, and fails with ``DoesNotExist``. ``install(app)`` closes that gap::

    from replica_router.contrib.celery import install

    app = Celery("proj")
    install(app)

It connects three of Celery's signals:

* ``before_task_publish``: when the publishing context has a causal token (it
  wrote on the primary, or runs under ``causal(token)`` itself), the token is
  added to the message headers as ``replica_router_token``;
* ``task_prerun``: the task runs inside ``causal(token)``, or ``causal(None)``
  when the message has no token, so that a write in the task still sends the
  task's later reads to the primary;
* ``task_postrun``: the block is exited. Celery sends it after failures and
  retries too, so a worker thread never carries one task's state into the next.

Celery's signals are process-wide, not per app. The worker side acts only on
tasks of an installed app. The publishing side cannot tell which app publishes
(``before_task_publish`` names only the task), so once any app is installed, the
header goes with every task this process publishes; a worker without
``install`` ignores it.

The block lives on the task's request, which Celery keeps per execution and
per thread, so it works with the prefork, solo and threads pools, and
concurrent tasks never share one. Eagerly applied tasks (``task_always_eager``,
``Task.apply``) run in the caller's own context, which already has the right
state, and are left alone.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from celery import signals

from replica_router.context import causal, current_token

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["HEADER", "install", "uninstall"]

#: The message header that carries the causality token, a WAL position such as
#: ``"0/3000148"`` (not a secret).
HEADER = "replica_router_token"

logger = logging.getLogger("replica_router")

# Apps whose workers run their tasks in causal(); weak, so an app can go away.
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
# Where the open block is kept on the task's request, between prerun and postrun.
_BLOCK_ATTRIBUTE = "_replica_router_causal"
_UID = "replica_router.contrib.celery"


def install(app: Celery) -> None:
    """Give ``app``'s tasks the read-your-writes guarantee of their enqueuer.

    Safe to call more than once, for one app or several: each signal is
    connected once per process.
    """
    _installed.add(app)
    signals.before_task_publish.connect(_add_token, weak=False, dispatch_uid=f"{_UID}.publish")
    signals.task_prerun.connect(_enter, weak=False, dispatch_uid=f"{_UID}.prerun")
    signals.task_postrun.connect(_exit, weak=False, dispatch_uid=f"{_UID}.postrun")


def uninstall(app: Celery) -> None:
    """Undo :func:`install` for ``app``; the signals are disconnected with the last app."""
    _installed.discard(app)
    if not _installed:
        signals.before_task_publish.disconnect(dispatch_uid=f"{_UID}.publish")
        signals.task_prerun.disconnect(dispatch_uid=f"{_UID}.prerun")
        signals.task_postrun.disconnect(dispatch_uid=f"{_UID}.postrun")


def token_of(request: Any) -> str | None:
    """The token a task's request carries, or None.

    With message protocol 2, custom headers become attributes of
    ``task.request``; ``Task.apply(headers=...)`` puts them in
    ``request.headers`` instead.
    """
    token = getattr(request, HEADER, None)
    if token is None:
        token = (getattr(request, "headers", None) or {}).get(HEADER)
    return token if isinstance(token, str) else None


def _add_token(*, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None or not _installed:
        return
    token = current_token()
    if token is not None:
        headers[HEADER] = token


def _enter(*, task: Any = None, **kwargs: Any) -> None:
    if task is None or task.app not in _installed:
        return
    request = task.request
    if request.is_eager:
        return
    token = token_of(request)
    try:
        block = causal(token)
    except ValueError:
        # Not a WAL position: we cannot tell which replicas have the write the
        # enqueuer meant, so every read of this task goes to the primary.
        logger.warning("Task %s carries a malformed %s header %r", request.id, HEADER, token)
        block = causal(None)
        block.__enter__().wrote = True
    else:
        block.__enter__()
    setattr(request, _BLOCK_ATTRIBUTE, block)


def _exit(*, task: Any = None, **kwargs: Any) -> None:
    if task is None:
        return
    block = task.request.__dict__.pop(_BLOCK_ATTRIBUTE, None)
    if block is not None:
        block.__exit__(None, None, None)
