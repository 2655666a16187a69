"""``LogContextFilter``: step identity on log records (see ``_logcontext``)."""

from __future__ import annotations

import logging

from ._logcontext import _CURRENT, FIELDS

__all__ = ["LogContextFilter"]


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
