"""Step identity on log records.

While a step attempt, a compensation, or an ``items``/``when`` callable runs,
flowpool sets a context variable naming it. ``LogContextFilter``, a
``logging.Filter`` users add to their handlers, copies that context onto every
record as ``flowpool_run_id``, ``flowpool_flow``, ``flowpool_step``,
``flowpool_attempt``, ``flowpool_item`` and ``flowpool_path``, whichever logger
wrote it (the user's, a third-party library's). Threads a step starts see the
context only if they run in a copy of it (``contextvars.copy_context().run``).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

__all__ = ["FIELDS", "LogContextFilter", "current", "enter", "leave"]

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


class LogContextFilter(logging.Filter):
    """Adds flowpool's step context to every record it sees; never drops a record.

    Add it to a handler (``handler.addFilter(flowpool.LogContextFilter())``) and
    use the attributes in a format string, e.g.
    ``"%(flowpool_step)s #%(flowpool_attempt)s %(message)s"``. Outside a run
    they are None; attributes a record already carries (records a worker
    process sent to this one) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = record.__dict__
        values = _CURRENT.get()
        if values is None:
            for name in FIELDS:
                attributes.setdefault(name, None)
        else:
            for name, value in zip(FIELDS, values, strict=True):
                attributes.setdefault(name, value)
        return True
