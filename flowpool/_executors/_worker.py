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

import collections
import contextlib
import itertools
import mmap
import os
import pickle
import signal
import threading
import traceback
import weakref
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from .._errors import NotStartedError, RemoteTraceback, StaleStoreError

__all__ = [
    "Call",
    "CallPacker",
    "CancelFlag",
    "LaneStore",
    "decode",
    "init_worker",
    "ping",
    "run_attempt",
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


def init_worker(parent_pid: int, poll: float = 0.25) -> None:
    """Loky initializer: ignore Ctrl-C (the parent decides) and die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # loky quietly replaces a worker whose memory grew by 300 MB; this one holds the
    # lane's values on purpose (``LaneStore``), and a replacement would not have them.
    import loky.process_executor

    loky.process_executor._MAX_MEMORY_LEAK_SIZE = 1 << 62
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


#: Parent side: process-wide keys for functions, values, snapshots, sessions and lane stores.
_keys = itertools.count(1)
_keys_lock = threading.Lock()
#: Parent side: a pickled function's digest → its key, so a lane holds one function once across runs.
_function_keys: dict[bytes, int] = {}


def _new_key() -> int:
    with _keys_lock:
        return next(_keys)


def _function_key(data: bytes) -> int:
    import hashlib

    digest = hashlib.blake2b(data, digest_size=16).digest()
    with _keys_lock:
        key = _function_keys.get(digest)
        if key is None:
            if len(_function_keys) >= 4096:  # closures over ever-new values: start again
                _function_keys.clear()
            key = _function_keys[digest] = next(_keys)
        return key


#: A pickled value at least this big is written to the run's spool file once and read
#: from there by a worker only when a step reads it; smaller ones travel in payloads.
SPOOL_MIN = 4096

#: A worker's envelope up to this big is spooled as it arrives (a write is cheaper than
#: pickling the value again); a bigger one is not, so that a large value that no later
#: stage reads costs nothing more than before, and is pickled once if one does.
REMEMBER_MAX = 1 << 20

#: How a value travels: its pickle, or ``(offset, length, envelope)`` in the run's spool
#: (``envelope``: the bytes are the worker's ``(OK, value)`` envelope it came back in).
ValueData = bytes | tuple[int, int, bool]


class Spool:
    """Parent side: one run's file of pickled values (created at the first large value,
    removed when the run ends). Written before any payload that names a part of it."""

    def __init__(self, directory: str) -> None:
        import uuid

        self.path = os.path.join(directory, f"flowpool-{os.getpid()}-spool-{uuid.uuid4().hex}")
        self._lock = threading.Lock()
        self._file: Any = None
        self._closer: Any = None
        self._size = 0
        self._failed = False

    def append(self, data: bytes) -> tuple[int, int] | None:
        """``(offset, length)`` of ``data`` in the file, or None if it cannot be written."""
        with self._lock:
            if self._failed:
                return None
            offset = self._size
            try:
                if self._file is None:
                    _sweep_spools(os.path.dirname(self.path))
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    self._file = open(fd, "wb", buffering=0)  # noqa: SIM115 - closed by close()
                    # Removed by close(), or else when the run is collected or at interpreter exit.
                    self._closer = weakref.finalize(self, _remove_spool, self._file, self.path)
                view = memoryview(data)
                while view:
                    view = view[self._file.write(view) :]
            except OSError:  # a full disk, …: later values travel in payloads instead
                self._failed = True
                return None
            self._size += len(data)
            return offset, len(data)

    def close(self) -> None:
        with self._lock:
            self._failed = True
            if self._closer is not None:
                self._closer()


def _remove_spool(file: Any, path: str) -> None:
    file.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


_swept = False


def _sweep_spools(directory: str) -> None:
    """Remove, once per process, spool files left by processes that died mid-run."""
    global _swept
    if _swept:
        return
    _swept = True
    import glob

    for path in glob.glob(os.path.join(glob.escape(directory), "flowpool-*-spool-*")):
        try:
            pid = int(os.path.basename(path).split("-")[1])
            os.kill(pid, 0)
        except (ValueError, PermissionError):  # not ours to judge, or alive under another user
            continue
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(path)


class Snapshot:
    """Parent side: one ``ctx.results`` mapping, each of its values pickled once per run."""

    __slots__ = ("key", "names", "value_keys", "value_data")

    def __init__(self, names: tuple[str, ...], value_keys: tuple[int, ...], value_data: tuple[ValueData, ...]) -> None:
        self.key = _new_key()
        self.names = names
        self.value_keys = value_keys
        self.value_data = value_data


class Call:
    """Parent side: one attempt, pickled once, ready to be sent to any lane (see ``LaneStore``)."""

    __slots__ = ("function", "session", "spool", "snapshot", "step", "attempt", "args")

    def __init__(
        self,
        function: tuple[int, bytes],
        session: tuple[int, bytes],
        spool: str | None,
        snapshot: Snapshot,
        step: str,
        attempt: int,
        args: bytes | None,
    ) -> None:
        self.function = function
        self.spool = spool
        self.session = session
        self.snapshot = snapshot
        self.step = step
        self.attempt = attempt
        self.args = args


class CallPacker:
    """Parent side: turns attempts into ``Call``\\ s, pickling what repeats only once.

    A step's function (pickled by value when it lives in ``__main__``), the run's
    input (with the flow's name and the run id: a *session*) and every completed
    value are pickled once per run, each under a key; a worker keeps what it was
    sent under those keys, so a lane is sent each of them at most once.

    With a ``spool_dir``, large values go to the run's ``Spool`` file instead (the
    bytes of a worker's envelope when the value came from one: not pickled again),
    and a worker reads each only when a step reads it.
    """

    def __init__(self, spool_dir: str | None = None) -> None:
        self._functions: dict[int, tuple[Any, tuple[int, bytes]]] = {}
        self._session: tuple[Any, str, str, tuple[int, bytes]] | None = None
        self._values: dict[str, tuple[Any, int, ValueData]] = {}
        self._snapshot: tuple[Any, Snapshot] | None = None
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        self._remembered: dict[int, tuple[Any, ValueData]] = {}
        self.sessions: list[int] = []  # every session key this packer made

    def remember(self, value: Any, envelope: bytes) -> None:
        """``value`` came back from a worker in ``envelope``: spool those bytes now, so a later
        stage that is handed it costs no pickling (called from a backend's callback thread)."""
        spool = self._spool
        if spool is None or not SPOOL_MIN <= len(envelope) <= REMEMBER_MAX:
            return
        span = spool.append(envelope)
        if span is not None:
            self._remembered[id(value)] = (value, (*span, True))

    def close(self) -> None:
        """The run ended: remove its spool file."""
        if self._spool is not None:
            self._spool.close()
        self._remembered.clear()

    def prepare(self, fn: Any, ctx: Any, args: tuple[Any, ...]) -> Call:
        """The ``Call`` for one call of ``fn(ctx, *args)`` (raises if it cannot be pickled)."""
        import cloudpickle

        cached = self._functions.get(id(fn))
        if cached is None or cached[0] is not fn:
            data = cloudpickle.dumps(fn)
            cached = (fn, (_function_key(data), data))
            self._functions[id(fn)] = cached
        session = self._session
        if session is None or session[0] is not ctx.input or session[1] != ctx.run_id or session[2] != ctx.flow:
            key = _new_key()
            session = (ctx.input, ctx.run_id, ctx.flow, (key, _dumps((ctx.input, ctx.flow, ctx.run_id))))
            self._session = session
            self.sessions.append(key)
        snapshot = self._snapshot
        if snapshot is None or snapshot[0] is not ctx.results:
            snapshot = (ctx.results, self._snapshot_of(ctx.results))
            self._snapshot = snapshot
        spool = self._spool.path if self._spool is not None else None
        return Call(cached[1], session[3], spool, snapshot[1], ctx.step, ctx.attempt, _dumps(args) if args else None)

    def _snapshot_of(self, results: Any) -> Snapshot:
        names: list[str] = []
        keys: list[int] = []
        data: list[ValueData] = []
        for name, value in results.items():
            held = self._values.get(name)
            if held is None or held[0] is not value:
                held = (value, _new_key(), self._data_of(value))
                self._values[name] = held
            names.append(name)
            keys.append(held[1])
            data.append(held[2])
        return Snapshot(tuple(names), tuple(keys), tuple(data))

    def _data_of(self, value: Any) -> ValueData:
        remembered = self._remembered.get(id(value))
        if remembered is not None and remembered[0] is value:
            return remembered[1]
        data = _dumps(value)
        if self._spool is not None and len(data) >= SPOOL_MIN:
            span = self._spool.append(data)
            if span is not None:
                return (*span, False)
        return data


class _Held:
    """Parent side: what a lane's worker holds of one session."""

    __slots__ = ("values", "snapshot")

    def __init__(self) -> None:
        self.values: set[int] = set()
        self.snapshot = 0


class LaneStore:
    """Parent side: what one lane's worker holds, so that each payload carries only what
    is new to it. The parent decides everything the worker keeps and drops, and a lane
    runs its payloads in the order they were made, so the two never disagree; a worker
    that is not the one this record was made for (a fresh process) refuses the payload.
    """

    MAX_SESSIONS = 4
    MAX_FUNCTIONS = 256

    def __init__(self) -> None:
        self.key = _new_key()
        self._lock = threading.Lock()
        self._fresh = True
        self._functions: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._sessions: collections.OrderedDict[int, _Held] = collections.OrderedDict()
        self._forget: list[int] = []

    def forget(self, sessions: list[int]) -> None:
        """The runs of these sessions ended: the worker drops their values with its next payload."""
        with self._lock:
            for key in sessions:
                if self._sessions.pop(key, None) is not None:
                    self._forget.append(key)

    def payload(self, call: Call) -> bytes:
        """The bytes to send to this lane's worker for ``call``."""
        with self._lock:
            reset, self._fresh = self._fresh, False
            drop_sessions, self._forget = self._forget, []
            drop_functions: list[int] = []
            function_key, function_data = call.function
            new_function: bytes | None = None
            if function_key in self._functions:
                self._functions.move_to_end(function_key)
            else:
                self._functions[function_key] = None
                new_function = function_data
                if len(self._functions) > self.MAX_FUNCTIONS:
                    drop_functions.append(self._functions.popitem(last=False)[0])
            session_key, session_data = call.session
            held = self._sessions.get(session_key)
            new_session: tuple[bytes, str | None] | None = None
            if held is None:
                held = self._sessions[session_key] = _Held()
                new_session = (session_data, call.spool)
                if len(self._sessions) > self.MAX_SESSIONS:
                    drop_sessions.append(self._sessions.popitem(last=False)[0])
            else:
                self._sessions.move_to_end(session_key)
            snapshot = call.snapshot
            new_snapshot: tuple[tuple[str, ...], tuple[int, ...]] | None = None
            new_values: list[tuple[int, ValueData]] = []
            if held.snapshot != snapshot.key:
                values = held.values
                new_values = [
                    (key, data)
                    for key, data in zip(snapshot.value_keys, snapshot.value_data, strict=True)
                    if key not in values
                ]
                values.update(snapshot.value_keys)
                held.snapshot = snapshot.key
                new_snapshot = (snapshot.names, snapshot.value_keys)
        update = (
            (reset, drop_sessions, drop_functions, new_function, new_session, new_values, new_snapshot)
            if reset or drop_sessions or drop_functions or new_function or new_session or new_snapshot
            else None
        )
        return pickle.dumps(
            (self.key, update, function_key, session_key, snapshot.key, call.step, call.attempt, call.args)
        )


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception:  # noqa: BLE001 - lambdas, closures, classes from __main__: cloudpickle can
        import cloudpickle

        data: bytes = cloudpickle.dumps(value)
        return data


# ── worker side: what this worker holds, as its lane's parent-side LaneStore says ──


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
        else:
            offset, length, envelope = data
            value = pickle.loads(_read_spool(self.spool, offset, length))
            if envelope:
                value = value[1]
        self.loaded[key] = value  # before it leaves pending: another thread sees one or the other
        self.pending.pop(key, None)
        return value


def _read_spool(path: str | None, offset: int, length: int) -> bytearray:
    if path is None:
        raise StaleStoreError("a value was spooled but this worker was not told where")
    data = bytearray(length)
    view = memoryview(data)
    with open(path, "rb", buffering=0) as file:
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
        _sessions.pop(key, None)
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


def _usable(thing: Any) -> Any:
    if isinstance(thing, _Unloadable):
        raise thing.error
    return thing


def run_attempt(payload: bytes, flag_path: str, token: int, queued: bool = False) -> bytes:
    """Run one payload of a lane (see ``LaneStore``) and return its envelope.

    ``flag_path`` and ``token`` name the lane's flag, which backs ``ctx.cancelled``.
    An attempt that was ``queued`` behind another one is skipped if it was
    cancelled before it could start; what it carried is kept all the same, since
    the lane's next payloads count on it.
    """
    store_key, update, function_key, session_key, snapshot_key, step, attempt, args_data = pickle.loads(payload)
    _check_store(store_key, update)  # raised to loky: the lane is treated as crashed
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
    return _run(fn, run_input, flow, run_id, step, attempt, results, args_data, flag)


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
) -> bytes:
    import cloudpickle

    from .._context import Context

    try:
        args = pickle.loads(args_data) if args_data is not None else ()
        ctx = Context(
            input=run_input, flow=flow, run_id=run_id, step=step, attempt=attempt, results=results, scope=flag
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
