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
from types import MappingProxyType
from typing import Any

from .._errors import NotStartedError, RemoteTraceback

__all__ = ["CallPacker", "CancelFlag", "decode", "init_worker", "ping", "run_attempt"]

#: Bytes of a lane's flag file: the highest cancelled token (8 bytes), the token of
#: the attempt the worker last started (8 bytes), then the cancel reason's text.
FLAG_SIZE = 512
_TOKEN_BYTES = 8
_STARTED = slice(8, 16)
_REASON = 16

OK, RAISED, UNPICKLABLE_VALUE, REMOTE_ERROR, WITHDRAWN = range(5)

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
    """Reads a lane's flag file (a small shared file mapped into memory).

    The parent writes the reason, then the highest cancelled token: every attempt
    of the lane with a token up to it is cancelled. The worker writes the token
    of each attempt it starts, so the parent can tell, after a crash, whether an
    attempt queued on the lane had started.
    """

    __slots__ = ("path", "token")

    def __init__(self, path: str, token: int) -> None:
        self.path = path
        self.token = token

    def _flag(self) -> mmap.mmap | None:
        flag = _flags.get(self.path)
        if flag is None:
            try:
                with open(self.path, "r+b") as file:
                    flag = mmap.mmap(file.fileno(), FLAG_SIZE)
            except OSError:
                return None
            _flags[self.path] = flag
        return flag

    @property
    def cancel_reason(self) -> str | None:
        flag = self._flag()
        if flag is None or int.from_bytes(flag[:_TOKEN_BYTES], "little") < self.token:
            return None
        reason = flag[_REASON:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return reason or "cancelled"

    def mark_started(self) -> None:
        flag = self._flag()
        if flag is not None:
            flag[_STARTED] = self.token.to_bytes(_TOKEN_BYTES, "little")


def write_cancel(flag: mmap.mmap, token: int, reason: str) -> None:
    """Parent side: cancel the lane's attempts up to ``token`` because of ``reason``."""
    if int.from_bytes(flag[:_TOKEN_BYTES], "little") >= token:
        return  # already cancelled, with an earlier reason
    text = reason.encode("utf-8")[: FLAG_SIZE - _REASON - 1]
    flag[_REASON : _REASON + len(text) + 1] = text + b"\0"
    flag[:_TOKEN_BYTES] = token.to_bytes(_TOKEN_BYTES, "little")


def started_token(flag: mmap.mmap) -> int:
    """Parent side: the token of the attempt the lane's worker started last."""
    return int.from_bytes(flag[_STARTED], "little")


class CallPacker:
    """Parent side: turns attempts into small payloads, pickling what repeats only once.

    A step's function (pickled by value when it lives in ``__main__``) and the
    run's input and results (the same for every member of a stage) are pickled
    once and sent as bytes that the worker unpickles once and caches.
    """

    def __init__(self) -> None:
        self._functions: dict[int, tuple[Any, bytes]] = {}
        self._shared: tuple[Any, Any, bytes] | None = None

    def pack(self, fn: Any, ctx: Any, args: tuple[Any, ...]) -> bytes:
        """The payload for one call of ``fn(ctx, *args)`` (raises if it cannot be pickled)."""
        import cloudpickle

        cached = self._functions.get(id(fn))
        if cached is None or cached[0] is not fn:
            cached = (fn, cloudpickle.dumps(fn))
            self._functions[id(fn)] = cached
        shared = self._shared
        if shared is None or shared[0] is not ctx.input or shared[1] is not ctx.results:
            state = (ctx.input, dict(ctx.results), ctx.flow, ctx.run_id)
            shared = (ctx.input, ctx.results, _dumps(state))
            self._shared = shared
        return pickle.dumps((cached[1], shared[2], ctx.step, ctx.attempt, _dumps(args) if args else None))


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception:  # noqa: BLE001 - lambdas, closures, classes from __main__: cloudpickle can
        import cloudpickle

        data: bytes = cloudpickle.dumps(value)
        return data


_unpacked: dict[bytes, Any] = {}


def _unpack_cached(data: bytes) -> Any:
    value = _unpacked.get(data)
    if value is None:
        if len(_unpacked) > 64:  # many functions or stages: keep the cache small
            _unpacked.clear()
        value = _unpacked[data] = pickle.loads(data)
    return value


def run_attempt(payload: bytes, flag_path: str, token: int, queued: bool = False) -> bytes:
    """Run one packed call (see ``CallPacker``) and return its envelope.

    ``flag_path`` and ``token`` name the lane's flag, which backs ``ctx.cancelled``.
    An attempt that was ``queued`` behind another one is skipped if it was
    cancelled before it could start.
    """
    import cloudpickle

    from .._context import Context

    flag = CancelFlag(flag_path, token) if flag_path else None
    if flag is not None:
        if queued:
            reason = flag.cancel_reason
            if reason is not None:
                return pickle.dumps((WITHDRAWN, reason))
        flag.mark_started()
    try:
        fn_data, shared_data, step, attempt, args_data = pickle.loads(payload)
        fn = _unpack_cached(fn_data)
        run_input, results, flow, run_id = _unpack_cached(shared_data)
        args = pickle.loads(args_data) if args_data is not None else ()
        ctx = Context(
            input=run_input,
            flow=flow,
            run_id=run_id,
            step=step,
            attempt=attempt,
            results=MappingProxyType(results),
            scope=flag,
        )
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
    if kind == WITHDRAWN:
        return False, None, NotStartedError(step, f"{message[1]} (it never started)")
    if kind == UNPICKLABLE_VALUE:
        return False, None, UnpicklableResultError(step, f"{message[2]} value: {message[1]}")
    remote = RemoteError(message[1], message[2], message[3])
    remote.__cause__ = RemoteTraceback(message[3])
    return False, None, remote
