"""What the journal keeps of values and errors: pickles, and short text forms beside them.

Pickles are what resume loads; the text forms (a value's ``repr``, an error's type
and message) are what listings read, so that they never unpickle.
"""

from __future__ import annotations

import json
import pickle
import reprlib
from typing import Any

from ._errors import RemoteError

__all__ = ["error_from_text", "error_text", "load_error", "portable_error", "value_text"]


def portable_error(error: BaseException | None) -> bytes | None:
    """Pickle an error so that it loads back; one that cannot becomes a ``RemoteError``."""
    if error is None:
        return None
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - described in plain data instead
        import traceback

        text = "".join(traceback.format_exception(error))
        return pickle.dumps(RemoteError(type(error).__qualname__, str(error), text))


# Text forms stay short: enough to recognise a value or an error in a listing.
_TEXT_LIMIT = 300


class _ShortRepr(reprlib.Repr):
    """``reprlib.Repr`` that never builds the full ``repr`` of a large bytes-like value."""

    def _sliced(self, value: bytes | bytearray) -> str:
        # The same head...tail text ``repr_instance`` makes, from the ends of the value only.
        limit = self.maxother
        whole = len(value) <= limit
        text = repr(value) if whole else ""
        if whole and len(text) <= limit:
            return text
        head = (limit - 3) // 2
        tail = limit - 3 - head
        if whole:
            return text[:head] + "..." + text[-tail:]
        return repr(value[:limit])[:head] + "..." + repr(value[-limit:])[-tail:]

    def repr_bytes(self, value: bytes, level: int) -> str:
        return self._sliced(value)

    def repr_bytearray(self, value: bytearray, level: int) -> str:
        return self._sliced(value)


_SHORT = _ShortRepr()
_SHORT.maxlevel = 4
_SHORT.maxstring = _SHORT.maxother = _TEXT_LIMIT
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 12


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


# Values whose short ``repr`` is the builtin one: spares ``reprlib`` for the commonest values.
_PLAIN = frozenset({type(None), bool, int, float, str, bytes})
_PLAIN_LIMIT = 40  # reprlib's own limit for ints (``maxlong``); the others' is _TEXT_LIMIT


def value_text(value: Any) -> str:
    """The short text form kept beside a pickled value: its ``repr``, truncated."""
    if type(value) in _PLAIN and not (isinstance(value, (str, bytes)) and len(value) > _PLAIN_LIMIT):
        text = repr(value)
        if len(text) <= _PLAIN_LIMIT:
            return text
    try:
        return _clip(_SHORT.repr(value))
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the record
        return f"<{type(value).__qualname__} object (its repr failed)>"


def error_text(error: BaseException | None) -> str | None:
    """The short text form kept beside a pickled error: its type's name and message, as JSON."""
    if error is None:
        return None
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the record
        message = "(its message could not be read)"
    return json.dumps({"type": type(error).__qualname__, "message": _clip(message)})


def error_from_text(text: str | None) -> BaseException | None:
    """A stand-in for a recorded error, built from its text form only (never unpickled)."""
    if text is None:
        return None
    try:
        shown = json.loads(text)
        return RemoteError(str(shown["type"]), str(shown["message"]), "")
    except (ValueError, KeyError, TypeError):
        return RemoteError("error", _clip(text), "")


def load_error(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        error: BaseException = pickle.loads(data)
    except Exception as problem:  # noqa: BLE001 - a class that no longer imports
        return RemoteError(type(problem).__name__, f"the recorded error could not be loaded: {problem}", "")
    return error
