"""What runs inside a worker process: start-up, the attempt trampoline, the envelope.

Kept in an importable module (not pickled by value) so that the globals set by
``init_worker`` are the ones the trampoline reads. The parent side of a lane's
store is ``_lanestore``; log records and stack dumps travel through ``_logs``.

The envelope: the worker catches every outcome and sends back bytes that the
parent unpickles itself, so a value or an exception that cannot travel never
breaks the lane (an exception whose ``__init__`` needs two arguments would
otherwise fail to unpickle in the lane's reader thread). Anything that cannot
make the trip is described in plain data instead. ``lane_main`` is the worker's
loop: it answers the parent's messages in order.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import pickle
import signal
import struct
import threading
import traceback
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from .. import _logcontext, _tracing
from .._errors import NotStartedError, RemoteTraceback, StaleStoreError
from . import _logs
from ._lanestore import ValueData

__all__ = [
    "CancelFlag",
    "decode",
    "init_worker",
    "lane_main",
    "ping",
    "run_attempt",
    "run_message",
    "hand_on",
    "run_dask_attempt",
]

#: Bytes of a lane's flag file: the highest cancelled token (8 bytes), the token of
#: the attempt the worker last started (8 bytes), then the cancel reason's text.
FLAG_SIZE = 512
_TOKEN_BYTES = 8
_STARTED = slice(8, 16)
_REASON = 16

OK, RAISED, UNPICKLABLE_VALUE, REMOTE_ERROR, WITHDRAWN = range(5)

_flags: dict[str, mmap.mmap] = {}


#: What the parent sends a lane's worker: the first byte says what it is.
PING, RUN, FORGET, CALL, STOP = b"P", b"R", b"F", b"C", b"S"
#: A RUN message: the kind, the attempt's token, whether it was queued, then its payload.
_RUN_HEADER = struct.Struct("<cQ?")


def run_message(payload: bytes, token: int, queued: bool) -> bytes:
    """Parent side: the message that runs ``payload`` (see ``lane_main``)."""
    return _RUN_HEADER.pack(RUN, token, queued) + payload


def lane_main(conn: Any, parent_pid: int, lane: int, log_address: str | None, flag_path: str) -> None:
    """A lane's worker process: answer the parent's messages, in order, until told to stop.

    RUN answers with the attempt's envelope, PING with the pid, CALL (tests) with the
    pickled result; FORGET and STOP are not answered. A RUN this worker cannot serve
    (it does not hold what its lane was sent) is answered with an empty message and
    the reason, and the worker exits: the parent counts the lane as crashed.
    """
    init_worker(parent_pid, lane, log_address)
    recv, send = conn.recv_bytes, conn.send_bytes
    header = _RUN_HEADER.size
    while True:
        try:
            message = recv()
        except (EOFError, OSError):  # the parent closed its end, or is gone
            if os.getppid() != parent_pid:
                _clean_up_for_dead_parent(log_address)
            return
        kind = message[:1]
        if kind == RUN:
            _, token, queued = _RUN_HEADER.unpack_from(message)
            try:
                answer = run_attempt(memoryview(message)[header:], flag_path, token, queued)
            except BaseException as error:  # noqa: BLE001 - the lane is done: say why
                send(b"")
                send(f"{type(error).__name__}: {error}".encode())
                return
            send(answer)
            del message, answer  # an idle worker holds neither the call nor its value
            continue
        if kind == FORGET:
            forget_sessions(*pickle.loads(message[1:]))
        elif kind == PING:
            send(pickle.dumps(os.getpid()))
        elif kind == CALL:
            fn, args = pickle.loads(message[1:])
            send(pickle.dumps(fn(*args)))
        elif kind == STOP:
            return


def init_worker(parent_pid: int, lane: int = 0, log_address: str | None = None, poll: float = 0.25) -> None:
    """A worker's start: ignore Ctrl-C (the parent decides), die with the parent, send
    log records and stack dumps to the parent's ``_logs.LogReceiver`` at ``log_address``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _logs.install_in_worker(lane, log_address, _run.__code__)
    stop = threading.Event()

    def watch_parent() -> None:
        # PR_SET_PDEATHSIG is tied to the thread that started this process, so poll instead.
        while not stop.wait(poll):
            if os.getppid() != parent_pid:
                _clean_up_for_dead_parent(log_address)
                os._exit(1)

    threading.Thread(target=watch_parent, name="flowpool-parent-watch", daemon=True).start()


def _clean_up_for_dead_parent(log_address: str | None) -> None:
    """The parent was killed: end what the step started, and remove what the parent would
    have removed (the lane's flag file, the spool files of its runs, the log socket)."""
    with contextlib.suppress(Exception):
        import psutil

        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=1.0)
    paths = list(_flags)
    with contextlib.suppress(Exception):  # (the main thread may be changing them)
        paths += [session.spool for session in list(_sessions.values()) if session.spool]
    if log_address is not None:
        paths.append(log_address)
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if log_address is not None:
        with contextlib.suppress(OSError):  # the last lane to get here removes the folder
            os.rmdir(os.path.dirname(log_address))


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


# ── what this worker holds, as its lane's parent-side ``_lanestore.LaneStore`` says ──


class _Unloadable:
    """Something sent to this worker that could not be unpickled: raised when used."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Session:
    """Worker side: one run as this worker holds it. Values are unpickled (and read from
    the spool) the first time a step reads them."""

    __slots__ = ("state", "spool", "pending", "loaded", "snapshot", "results")

    def __init__(self, state: Any, spool: str | None) -> None:
        self.state = state
        self.spool = spool
        self.pending: dict[int, ValueData] = {}
        self.loaded: dict[int, Any] = {}
        self.snapshot = 0
        self.results: Results | None = None

    def value(self, key: int) -> Any:
        try:
            return self.loaded[key]
        except KeyError:
            pass
        data = self.pending.get(key)
        if data is None:  # another thread of the step loaded it meanwhile
            return self.loaded[key]
        if isinstance(data, bytes):
            value = pickle.loads(data)
        elif len(data) == 2:
            value = self._items(data[1])
        else:
            offset, length, envelope = data
            value = pickle.loads(_read_spool(self.spool, offset, length))
            if envelope:
                value = value[1]
        self.loaded[key] = value  # before it leaves pending: another thread sees one or the other
        self.pending.pop(key, None)
        return value

    def _items(self, data: bytes) -> dict[Any, Any]:
        """A map's values (``ITEMS`` in ``_lanestore``): the items in the spool read from it."""
        keys, values, spans = pickle.loads(data)
        if spans:
            with _open_spool(self.spool) as file:
                for index, (offset, length) in spans.items():
                    values[index] = pickle.loads(_read_span(file, self.spool, offset, length))[1]
        return dict(zip(keys, values, strict=True))


def _open_spool(path: str | None) -> Any:
    if path is None:
        raise StaleStoreError("a value was spooled but this worker was not told where")
    return open(path, "rb", buffering=0)


def _read_spool(path: str | None, offset: int, length: int) -> bytearray:
    with _open_spool(path) as file:
        return _read_span(file, path, offset, length)


def _read_span(file: Any, path: str | None, offset: int, length: int) -> bytearray:
    data = bytearray(length)
    view = memoryview(data)
    file.seek(offset)
    filled = 0
    while filled < length:  # a raw read may return less than asked
        got = file.readinto(view[filled:])
        if not got:
            raise EOFError(f"the run's spool file {path} ends early")
        filled += got
    return data


class Results(Mapping[str, Any]):
    """``ctx.results`` in a worker: read-only; each value is loaded when first read."""

    __slots__ = ("_session", "_keys")

    def __init__(self, session: _Session, keys: dict[str, int]) -> None:
        self._session = session
        self._keys = keys

    def __getitem__(self, name: str) -> Any:
        return self._session.value(self._keys[name])

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._keys)

    def copy(self) -> dict[str, Any]:
        """A plain dict of every value (as ``MappingProxyType.copy``)."""
        return dict(self.items())

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**self, **other}

    def __ror__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        return {**other, **self}

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle ctx.results (a read-only view); pickle dict(ctx.results) instead")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"


_store_key = 0
_functions: dict[int, Any] = {}
_sessions: dict[int, _Session] = {}


def _load(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except BaseException as error:  # noqa: BLE001 - raised by the attempt that uses it
        return _Unloadable(error)


def _check_store(store_key: int, update: Any) -> None:
    if (update is None or not update[0]) and store_key != _store_key:
        raise StaleStoreError("this worker does not hold what its lane was sent (it is not the lane's first worker)")


def _apply(store_key: int, update: Any, function_key: int, session_key: int, snapshot_key: int) -> None:
    """Apply a payload's update to this worker's store, in the order the parent made it."""
    global _store_key
    if update is None:
        return
    reset, drop_sessions, drop_functions, new_function, new_session, new_values, new_snapshot = update
    if reset:
        _store_key = store_key
        _functions.clear()
        _sessions.clear()
    for key in drop_sessions:
        _drop_session(key)
    for key in drop_functions:
        _functions.pop(key, None)
    if new_function is not None:
        _functions[function_key] = _load(new_function)
    if new_session is not None:
        state, spool = new_session
        _sessions[session_key] = _Session(_load(state), spool)
    session = _sessions[session_key]
    session.pending.update(new_values)
    if new_snapshot is not None:
        names, keys = new_snapshot
        session.snapshot = snapshot_key
        session.results = Results(session, dict(zip(names, keys, strict=True)))


def forget_sessions(store_key: int, sessions: list[int]) -> None:
    """Drop the values of runs that ended (sent to an idle lane, in its payload order)."""
    if store_key == _store_key:
        for key in sessions:
            _drop_session(key)


def _drop_session(key: int) -> None:
    # Its values go now, not at a cyclic collection (``results`` refers back to it).
    session = _sessions.pop(key, None)
    if session is not None:
        session.results = None
        session.loaded.clear()
        session.pending.clear()


def _usable(thing: Any) -> Any:
    if isinstance(thing, _Unloadable):
        raise thing.error
    return thing


def run_attempt(payload: bytes | memoryview, flag_path: str, token: int, queued: bool = False) -> bytes:
    """Run one payload of a lane (see ``LaneStore``) and return its envelope.

    ``flag_path`` and ``token`` name the lane's flag, which backs ``ctx.cancelled``.
    An attempt that was ``queued`` behind another one is skipped if it was
    cancelled before it could start; what it carried is kept all the same, since
    the lane's next payloads count on it.
    """
    store_key, update, function_key, session_key, snapshot_key, step, attempt, args_data, settings, carrier = (
        pickle.loads(payload)
    )
    if settings is not None:  # before anything is unpickled: the target may read sys.argv as it is imported
        _logs.apply_settings(settings)
    _check_store(store_key, update)  # raised to ``lane_main``: the lane is treated as crashed
    flag = CancelFlag(flag_path, token)
    if queued:
        reason = flag.cancel_reason
        if reason is not None:
            _apply(store_key, update, function_key, session_key, snapshot_key)
            return pickle.dumps((WITHDRAWN, reason))
    flag.mark_started()
    _apply(store_key, update, function_key, session_key, snapshot_key)
    try:
        fn = _usable(_functions[function_key])
        session = _sessions[session_key]
        if session.snapshot != snapshot_key:
            raise StaleStoreError(f"this worker does not hold the results snapshot of step {step!r}")
        run_input, flow, run_id = _usable(session.state)
        results = session.results
    except BaseException as error:  # noqa: BLE001 - every outcome goes back in the envelope
        return _envelope_error(error)
    _logs.running_token = token
    try:
        return _run(fn, run_input, flow, run_id, step, attempt, results, args_data, flag, carrier)
    finally:
        _logs.running_token = 0


#: Dask worker side: unpickled functions, sessions and values by their (unique) Dask keys.
_dask_cache: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
_dask_cache_lock = threading.Lock()
_dask_cache_bytes = 0
DASK_CACHE_BYTES = 256 * 1024 * 1024


def _dask_load(key: str, data: bytes) -> Any:
    """``data`` unpickled, once per Dask worker process while it is cached."""
    global _dask_cache_bytes
    with _dask_cache_lock:
        hit = _dask_cache.get(key)
        if hit is not None:
            _dask_cache.move_to_end(key)
            return hit[0]
    value = pickle.loads(data)  # an error is the attempt's (not cached)
    with _dask_cache_lock:
        if key not in _dask_cache:
            _dask_cache[key] = (value, len(data))
            _dask_cache_bytes += len(data)
            while _dask_cache_bytes > DASK_CACHE_BYTES and len(_dask_cache) > 1:
                _dask_cache_bytes -= _dask_cache.popitem(last=False)[1][1]
    return value


def run_dask_attempt(
    call: bytes, function: tuple[str, bytes], session: tuple[str, bytes], values: list[tuple[str, str, bytes]]
) -> bytes:
    """Run one attempt on a Dask worker and return its envelope.

    The function, the session and each value arrive as data that Dask scattered once
    per run (a worker fetches each at most once): ``(key, data)``, and for values
    ``(name, key, data)``.
    """
    step, attempt, args_data = pickle.loads(call)
    try:
        fn = _dask_load(*function)
        run_input, flow, run_id = _dask_load(*session)
        results = MappingProxyType({name: _dask_load(key, data) for name, key, data in values})
    except BaseException as error:  # noqa: BLE001 - every outcome goes back in the envelope
        return _envelope_error(error)
    return _run(fn, run_input, flow, run_id, step, attempt, results, args_data, None)


def hand_on(values: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
    """Dask: one snapshot's values, gathered once, for every attempt that reads them."""
    return values


def _run(
    fn: Any,
    run_input: Any,
    flow: str,
    run_id: str,
    step: str,
    attempt: int,
    results: Any,
    args_data: bytes | None,
    flag: CancelFlag | None,
    carrier: dict[str, str] | None = None,
) -> bytes:
    import cloudpickle

    from .._context import Context

    try:
        args = pickle.loads(args_data) if args_data is not None else ()
        ctx = Context(
            input=run_input, flow=flow, run_id=run_id, step=step, attempt=attempt, results=results, scope=flag
        )
        named = _logcontext.enter(run_id, flow, step, attempt, _item_key(fn, args))
        try:
            if carrier is None:
                value = fn(ctx, *args)
            else:
                with _tracing.attached(carrier):  # the attempt's span is current: the step's spans join the trace
                    value = fn(ctx, *args)
        finally:
            _logcontext.leave(named)
    except BaseException as error:  # noqa: BLE001 - every outcome goes back in the envelope
        return _envelope_error(error)
    try:
        data: bytes = cloudpickle.dumps((OK, value))
    except BaseException as error:  # noqa: BLE001 - a value that cannot travel fails its own step only
        return pickle.dumps((UNPICKLABLE_VALUE, f"{type(error).__name__}: {error}", type(value).__qualname__))
    return data


def _item_key(fn: Any, args: tuple[Any, ...]) -> Any:
    """The map item's key a call carries (``ItemCall``: item, index, key last), or None.

    The log context names the item from the start: ``ItemCall`` puts the key on
    ``ctx`` only once it runs."""
    from .._context import ItemCall, OutcomeCall

    _, fn = _tracing.split_attached(fn)  # (Dask: the trace carrier wraps the call)
    if isinstance(fn, OutcomeCall):
        fn, args = fn.fn, args[:-1]
    if isinstance(fn, ItemCall) and len(args) >= 3:
        return args[-1]
    return None


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
