"""Keeping standard output clean for a machine-readable document (``flowpool run --json``).

Legacy step code prints everywhere. Under ``--json`` everything written to
standard output from before the target is imported until the JSON is written
goes to standard error instead, at two levels:

- descriptor 1 becomes a duplicate of descriptor 2, so C extensions,
  subprocesses and worker processes started meanwhile (they inherit descriptor
  1 as it is when they start, and keep it while they import the target) write
  to standard error;
- ``sys.stdout`` becomes ``sys.stderr``, so ``print`` goes there too when
  ``sys.stdout`` is not descriptor 1 at all (the command called in-process, as
  click's test runner does), and lands in order with the progress lines.

The document itself is written to the standard output the process had before.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import TracebackType
from typing import IO, Any

__all__ = ["StdoutToStderr"]


class StdoutToStderr:
    """While entered, standard output is standard error (descriptor and ``sys.stdout``).

    ``write_document(text)`` writes to the standard output the process had
    before; it may be called inside the block (the redirection then stays in
    place until the document is out) or after it.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._stream: IO[Any] | None = None

    def __enter__(self) -> StdoutToStderr:
        self._stream = sys.stdout
        _flush(sys.stdout)
        _flush(sys.stderr)
        try:
            saved = os.dup(1)  # not inheritable: children see only the redirected descriptor
        except OSError:  # no descriptor 1 at all: nothing below it to protect
            saved = None
        if saved is not None:
            try:
                os.dup2(2, 1)
            except OSError:
                os.close(saved)
                saved = None
        self._saved = saved
        sys.stdout = sys.stderr
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    def restore(self) -> None:
        """Give standard output back (idempotent)."""
        stream = self._stream
        if stream is None:
            return
        _flush(sys.stdout)
        _flush(stream)  # what was buffered in the original object during the block goes to stderr
        _flush_c_stdio()
        sys.stdout = stream
        self._stream = None
        saved = self._saved
        self._saved = None
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)

    def write_document(self, text: str) -> None:
        """Write ``text`` to the original standard output, whether or not redirected now."""
        stream = self._stream if self._stream is not None else sys.stdout
        saved = self._saved
        if saved is None or not _is_descriptor_1(stream):
            # Not redirected, or the original stdout is a Python object of its own
            # (click's test runner): it was never descriptor 1, so write to it.
            stream.write(text)
            _flush(stream)
            return
        # Whatever stray text sits in the original object's buffer, or in the C
        # library's (printf to a pipe is flushed only when the buffer is full or at
        # exit), goes to stderr first, not after the document.
        _flush(stream)
        _flush_c_stdio()
        data = text.encode(getattr(stream, "encoding", None) or "utf-8", "replace")
        while data:
            written = os.write(saved, data)
            data = data[written:]


def _is_descriptor_1(stream: object) -> bool:
    try:
        return bool(stream.fileno() == 1)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to reach (another platform)
        pass


def _flush(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if flush is not None:
        with contextlib.suppress(Exception):  # a closed or broken stream must not hide the document
            flush()
