"""What runs inside a worker process: start-up, the attempt trampoline, the envelope.

Kept in an importable module (not pickled by value) so that the globals set by
``init_worker`` are the ones the trampoline reads.

The envelope: the worker catches every outcome and sends back bytes that the
parent unpickles itself, so a value or an exception that cannot travel never
breaks the pool (an exception whose ``__init__`` needs two arguments would
otherwise fail to unpickle in loky's result thread and poison every in-flight
future). Anything that cannot make the trip is described in plain data instead.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import threading
import traceback
from typing import Any

__all__ = ["CancelFlag", "decode", "init_worker", "ping", "run_attempt"]

#: Bytes of a lane's cancel flag: an 8-byte attempt token, then the reason text.
FLAG_SIZE = 512
_TOKEN_BYTES = 8

OK, RAISED, UNPICKLABLE_VALUE, REMOTE_ERROR = range(4)

_flags: dict[str, mmap.mmap] = {}


def init_worker(parent_pid: int, poll: float = 0.25) -> None:
    """Loky initializer: ignore Ctrl-C (the parent decides) and die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()

    def watch_parent() -> None:
        # PR_SET_PDEATHSIG is tied to the spawning thread (loky's manager), so poll instead.
        while not stop.wait(poll):
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch_parent, name="flowpool-parent-watch", daemon=True).start()


def ping() -> int:
    """A no-op round trip that proves a lane's worker is up."""
    return os.getpid()


class CancelFlag:
    """Reads a lane's cancel flag (a small shared file mapped into memory).

    The parent writes the reason, then the token of the attempt to stop; an
    attempt is cancelled when the token in the flag is its own.
    """

    __slots__ = ("path", "token")

    def __init__(self, path: str, token: int) -> None:
        self.path = path
        self.token = token

    @property
    def cancel_reason(self) -> str | None:
        flag = _flags.get(self.path)
        if flag is None:
            try:
                with open(self.path, "r+b") as file:
                    flag = mmap.mmap(file.fileno(), FLAG_SIZE)
            except OSError:
                return None
            _flags[self.path] = flag
        if int.from_bytes(flag[:_TOKEN_BYTES], "little") != self.token:
            return None
        reason = flag[_TOKEN_BYTES:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return reason or "cancelled"


def write_cancel(flag: mmap.mmap, token: int, reason: str) -> None:
    """Parent side: mark attempt ``token`` of this lane as cancelled because of ``reason``."""
    text = reason.encode("utf-8")[: FLAG_SIZE - _TOKEN_BYTES - 1]
    flag[_TOKEN_BYTES : _TOKEN_BYTES + len(text) + 1] = text + b"\0"
    flag[:_TOKEN_BYTES] = token.to_bytes(_TOKEN_BYTES, "little")


def run_attempt(payload: bytes, flag_path: str, token: int) -> bytes:
    """Run one pickled call ``(fn, ctx, args)`` and return its envelope.

    ``flag_path`` and ``token`` name the lane's cancel flag, which backs ``ctx.cancelled``.
    """
    import cloudpickle

    try:
        fn, ctx, args = pickle.loads(payload)
        ctx._scope = CancelFlag(flag_path, token)
        value = fn(ctx, *args)
    except BaseException as error:  # noqa: BLE001 - every outcome goes back in the envelope
        return _envelope_error(error)
    try:
        data: bytes = cloudpickle.dumps((OK, value))
    except BaseException as error:  # noqa: BLE001 - a value that cannot travel fails its own step only
        return pickle.dumps((UNPICKLABLE_VALUE, f"{type(error).__name__}: {error}", type(value).__qualname__))
    return data


def _envelope_error(error: BaseException) -> bytes:
    import cloudpickle

    text = "".join(traceback.format_exception(error))
    try:
        data: bytes = cloudpickle.dumps((RAISED, error, text))
        pickle.loads(data)  # must also come back intact (two-argument __init__ …)
        return data
    except BaseException:  # noqa: BLE001 - described in plain data instead
        return pickle.dumps((REMOTE_ERROR, _qualified_name(type(error)), str(error), text))


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class RemoteTraceback(Exception):
    """Carries a worker's traceback text as ``__cause__``, as ``concurrent.futures`` does."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def decode(envelope: bytes, step: str) -> tuple[bool, Any, BaseException | None]:
    """Parent side: ``(ok, value, error)`` from a worker's envelope."""
    from .._errors import RemoteError, UnpicklableResultError

    try:
        message = pickle.loads(envelope)
    except BaseException as error:  # noqa: BLE001 - a value whose unpickling fails in the parent
        return False, None, UnpicklableResultError(step, f"it could not be unpickled here: {error!r}")
    kind = message[0]
    if kind == OK:
        return True, message[1], None
    if kind == RAISED:
        raised: BaseException = message[1]
        raised.__cause__ = RemoteTraceback(message[2])
        return False, None, raised
    if kind == UNPICKLABLE_VALUE:
        return False, None, UnpicklableResultError(step, f"{message[2]} value: {message[1]}")
    remote = RemoteError(message[1], message[2], message[3])
    remote.__cause__ = RemoteTraceback(message[3])
    return False, None, remote
