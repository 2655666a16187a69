"""Keeping standard output clean for a machine-readable document (``flowpool run --json``).

Legacy step code prints everywhere. Under ``--json`` everything written to
standard output from before the target is imported until the JSON is written
goes to standard error instead, at the file-descriptor level: Python's
``print``, C extensions, subprocesses, and worker processes started meanwhile
(they inherit descriptor 1 as it is when they start). The document itself is
written to the original standard output.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import TracebackType

__all__ = ["StdoutToStderr"]


class StdoutToStderr:
    """While entered, descriptor 1 is a duplicate of descriptor 2.

    ``write_document(text)`` writes to the standard output the process had
    before; it may be called inside or after the block.
    """

    def __init__(self) -> None:
        self._saved: int | None = None

    def __enter__(self) -> StdoutToStderr:
        _flush(sys.stdout)
        self._saved = os.dup(1)
        os.set_inheritable(self._saved, False)  # children see only the redirected descriptor
        os.dup2(2, 1)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    def restore(self) -> None:
        """Point descriptor 1 back at the original standard output (idempotent)."""
        saved = self._saved
        if saved is None:
            return
        _flush(sys.stdout)
        os.dup2(saved, 1)
        os.close(saved)
        self._saved = None

    def write_document(self, text: str) -> None:
        """Write ``text`` to the original standard output, whether or not redirected now."""
        _flush(sys.stdout)
        data = text.encode("utf-8")
        fd = self._saved if self._saved is not None else 1
        while data:
            written = os.write(fd, data)
            data = data[written:]


def _flush(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if flush is not None:
        with contextlib.suppress(Exception):  # a closed or broken stdout must not hide the document
            flush()
