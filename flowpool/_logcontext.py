"""Step identity on log records.

While a step attempt, a compensation, or an ``items``/``when`` callable runs,
flowpool sets a context variable naming it. ``LogContextFilter``, a
``logging.Filter`` users add to their handlers, copies that context onto every
record as ``flowpool_run_id``, ``flowpool_flow``, ``flowpool_step``,
``flowpool_attempt``, ``flowpool_item`` and ``flowpool_path``, whichever logger
wrote it (the user's, a third-party library's); it lives in ``_logfilter``, so that
a run that logs nothing never imports ``logging``. Threads a step starts see the
context only if they run in a copy of it (``contextvars.copy_context().run``).
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["FIELDS", "current", "enter", "leave"]

#: The record attributes, in the order of the context's fields.
FIELDS = (
    "flowpool_run_id",
    "flowpool_flow",
    "flowpool_step",
    "flowpool_attempt",
    "flowpool_item",
    "flowpool_path",
)

#: (run_id, flow, step, attempt, item, path) of the code running now, or None.
LogContext = tuple[str, str, str, int, Any, tuple[str, ...]]

_CURRENT: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar("flowpool_log_context", default=None)


def enter(
    run_id: str,
    flow: str,
    step: str,
    attempt: int,
    item: Any = None,
    path: tuple[str, ...] | None = None,
) -> contextvars.Token[LogContext | None]:
    """Name the code about to run in this thread; undo with ``leave(token)``."""
    return _CURRENT.set((run_id, flow, step, attempt, item, path if path is not None else (step,)))


def leave(token: contextvars.Token[LogContext | None]) -> None:
    """Restore the context that ``enter`` replaced."""
    _CURRENT.reset(token)


def current() -> dict[str, Any]:
    """The record attributes for the code running now (all None outside a run)."""
    values = _CURRENT.get()
    if values is None:
        return dict.fromkeys(FIELDS)
    return dict(zip(FIELDS, values, strict=True))


def __getattr__(name: str) -> Any:
    # The filter subclasses logging.Filter: logging is imported only by programs that use it.
    if name == "LogContextFilter":
        from ._logfilter import LogContextFilter

        return LogContextFilter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
