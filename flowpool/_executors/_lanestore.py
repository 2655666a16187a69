"""Parent side of a lane: what travels to a worker, each thing pickled once.

``CallPacker`` turns an attempt into a ``Call`` (its function, the run's session
and its ``ctx.results`` snapshot, each pickled once per run under a key);
``LaneStore`` remembers what one lane's worker already holds, so that a payload
carries only what is new to it; ``Spool`` is the run's file of large values that
a worker reads only when a step reads them. The worker side of this store is in
``_worker`` (``_apply``, ``_Session``, ``Results``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import pickle
import threading
import weakref
from typing import Any

from . import _sweep

__all__ = [
    "EAGER_SPOOL_MAX",
    "ITEMS",
    "REMEMBER_MAX",
    "SPOOL_MIN",
    "Call",
    "CallPacker",
    "LaneStore",
    "Snapshot",
    "Spool",
    "Spooled",
    "ValueData",
]

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

#: A worker's envelope up to this big is written to the spool as it arrives, by the
#: spool's own thread (off the settle loop, while other steps still run), so that a later
#: stage handed its value costs neither a pickling nor a write; a bigger one is not, so
#: that a large value no later stage reads costs nothing more, and is pickled once if one does.
REMEMBER_MAX = 1 << 20

#: Envelopes are written as they arrive until the spool holds this much; later ones are
#: pickled again if a later stage is handed them (a run of many large values that nothing
#: reads does not fill the temporary directory).
EAGER_SPOOL_MAX = 1 << 30

#: How a value travels: its pickle, or ``(offset, length, envelope)`` in the run's spool
#: (``envelope``: the bytes are the worker's ``(OK, value)`` envelope it came back in), or,
#: for a map's values some of which are in the spool, ``(ITEMS, data)``: ``data`` pickles
#: ``(keys, values, spans)`` where ``spans`` maps an index in ``values`` (None there) to the
#: ``(offset, length)`` of that item's envelope.
ValueData = bytes | tuple[int, int, bool] | tuple[str, bytes]

ITEMS = "items"


class Spooled:
    """Parent side: an envelope handed to the spool's writer; its span once written."""

    __slots__ = ("data", "span", "written")

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data
        self.span: tuple[int, int] | None = None
        self.written = False


class Spool:
    """Parent side: one run's file of pickled values (created at the first large value,
    removed when the run ends). Written before any payload that names a part of it.

    ``append`` writes now; ``append_later`` hands the bytes to the spool's writer
    thread (started at the first such call, ended by ``close``) and ``span_of`` waits
    for it."""

    def __init__(self, directory: str) -> None:
        import uuid

        self.path = os.path.join(directory, f"flowpool-{os.getpid()}-spool-{uuid.uuid4().hex}")
        self._lock = threading.Lock()
        self._file: Any = None
        self._closer: Any = None
        self._size = 0
        self._failed = False
        self._queued = 0  # bytes handed to the writer (written or not)
        self._writes: collections.deque[Spooled | None] = collections.deque()
        self._changed = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None

    def append_later(self, data: bytes) -> Spooled | None:
        """Hand ``data`` to the writer thread, or None past ``EAGER_SPOOL_MAX`` or once closed."""
        with self._changed:
            if self._failed or self._queued + len(data) > EAGER_SPOOL_MAX:
                return None
            if self._writer is None:
                writer = threading.Thread(target=self._write_queued, name="flowpool-spool", daemon=True)
                try:
                    writer.start()
                except RuntimeError:  # no thread to be had (a thread limit): the value is written if handed on
                    return None
                self._writer = writer
            self._queued += len(data)
            spooled = Spooled(data)
            self._writes.append(spooled)
            self._changed.notify_all()
            return spooled

    def span_of(self, spooled: Spooled) -> tuple[int, int] | None:
        """Where the writer put ``spooled`` (waiting for it), or None if it could not."""
        with self._changed:
            while not spooled.written:
                self._changed.wait()
            return spooled.span

    def _write_queued(self) -> None:
        current: Spooled | None = None
        try:
            while True:
                with self._changed:
                    while not self._writes:
                        self._changed.wait()
                    current = self._writes.popleft()
                if current is None:  # closed
                    return
                assert current.data is not None
                span = self.append(current.data)
                with self._changed:
                    current.span, current.data, current.written = span, None, True
                    current = None
                    self._changed.notify_all()
        finally:  # closed, or failed unexpectedly: nothing is left waiting for this thread
            with self._changed:
                self._failed = True
                for spooled in (current, *self._writes):
                    if spooled is not None:
                        spooled.data, spooled.written = None, True
                self._writes.clear()
                self._changed.notify_all()

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
                    _sweep.hold(fd)  # until the file is closed: see ``_sweep``
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
        with self._changed:
            self._failed = True
            if self._writer is not None:
                self._writes.append(None)  # the writer's queued appends find the spool closed
                self._changed.notify_all()
        with self._lock:
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
    _sweep.sweep(directory, "flowpool-*-spool-*")


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

    __slots__ = ("function", "session", "spool", "snapshot", "step", "attempt", "args", "settings", "trace")

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
        #: ``(key, settings)``: what the worker must take over before it runs the call
        #: (``_logs.worker_settings``: ``sys.argv``, logging levels), or None.
        self.settings: tuple[int, Any] | None = None
        #: The attempt span's W3C headers (``_tracing.split_attached``), when the program traces.
        self.trace: dict[str, str] | None = None


class CallPacker:
    """Parent side: turns attempts into ``Call``\\ s, pickling what repeats only once.

    A step's function (pickled by value when it lives in ``__main__``), the run's
    input (with the flow's name and the run id: a *session*) and every completed
    value are pickled once per run, each under a key; a worker keeps what it was
    sent under those keys, so a lane is sent each of them at most once.

    With a ``spool_dir``, large values go to the run's ``Spool`` file instead (the
    bytes of a worker's envelope when the value came from one: not pickled again),
    and a worker reads each only when a step reads it. With ``split_trace``, a
    function that ``Span.around`` wrapped for another process is unwrapped: its
    trace carrier travels as ``Call.trace`` and the function is pickled once.
    """

    def __init__(self, spool_dir: str | None = None, split_trace: bool = False) -> None:
        self._split_trace = split_trace
        self._functions: dict[int, tuple[Any, tuple[int, bytes]]] = {}
        self._session: tuple[Any, str, str, tuple[int, bytes]] | None = None
        self._values: dict[str, tuple[Any, int, ValueData]] = {}
        self._snapshot: tuple[Any, Snapshot] | None = None
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        self._remembered: dict[int, tuple[Any, Spooled]] = {}  # id(value) → (value, its envelope)
        self.sessions: list[int] = []  # every session key this packer made

    def remember(self, value: Any, envelope: bytes) -> None:
        """``value`` came back from a worker in ``envelope``: have those bytes written to the
        spool now, off the settle loop, so that a later stage that is handed it costs neither a
        pickling nor a write (called from a backend's callback thread)."""
        if self._spool is None or not SPOOL_MIN <= len(envelope) <= REMEMBER_MAX:
            return
        spooled = self._spool.append_later(envelope)
        if spooled is not None:
            self._remembered[id(value)] = (value, spooled)

    def close(self) -> None:
        """The run ended: remove its spool file."""
        if self._spool is not None:
            self._spool.close()
        self._remembered.clear()

    def prepare(self, fn: Any, ctx: Any, args: tuple[Any, ...]) -> Call:
        """The ``Call`` for one call of ``fn(ctx, *args)`` (raises if it cannot be pickled)."""
        import cloudpickle

        carrier = None
        if self._split_trace:
            from .._tracing import split_attached

            carrier, fn = split_attached(fn)
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
        call = Call(cached[1], session[3], spool, snapshot[1], ctx.step, ctx.attempt, _dumps(args) if args else None)
        call.trace = carrier
        return call

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
        span = self._spooled(value)
        if span is not None:
            return (*span, True)
        if self._remembered:
            from .._maps import MapValues

            if isinstance(value, MapValues):
                items = self._items_of(value)
                if items is not None:
                    return items
        data = _dumps(value)
        if self._spool is not None and len(data) >= SPOOL_MIN:
            span = self._spool.append(data)
            if span is not None:
                return (*span, False)
        return data

    def _spooled(self, value: Any) -> tuple[int, int] | None:
        """Where the envelope ``value`` came back in is in the spool, if it was written there."""
        remembered = self._remembered.pop(id(value), None)
        if remembered is None or remembered[0] is not value or self._spool is None:
            return None
        return self._spool.span_of(remembered[1])

    def _items_of(self, values: Any) -> tuple[str, bytes] | None:
        """A map's values as ``(ITEMS, data)``, when some of its items' envelopes are in the
        spool: those are not pickled again (a later stage of a map of large values would
        otherwise pickle them all at its first attempt)."""
        keys = list(values)
        plain: list[Any] = []
        spans: dict[int, tuple[int, int]] = {}
        for index, key in enumerate(keys):
            item = values[key]
            span = self._spooled(item)
            if span is None:
                plain.append(item)
            else:
                plain.append(None)
                spans[index] = span
        if not spans:
            return None
        return (ITEMS, _dumps((keys, plain, spans)))


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
        self._settings = 0  # the key of the settings the worker last got

    def forget(self, sessions: list[int]) -> None:
        """The runs of these sessions ended: the worker drops their values with its next payload."""
        with self._lock:
            for key in sessions:
                if self._sessions.pop(key, None) is not None:
                    self._forget.append(key)

    def take_forgotten(self) -> list[int]:
        """The sessions to drop that no payload has carried yet (the caller sends them)."""
        with self._lock:
            if self._fresh:  # the worker holds nothing yet
                return []
            forgotten, self._forget = self._forget, []
            return forgotten

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
            new_settings = None
            if call.settings is not None and call.settings[0] != self._settings:
                self._settings, new_settings = call.settings
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
            (
                self.key,
                update,
                function_key,
                session_key,
                snapshot.key,
                call.step,
                call.attempt,
                call.args,
                new_settings,
                call.trace,
            )
        )


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception:  # noqa: BLE001 - lambdas, closures, classes from __main__: cloudpickle can
        import cloudpickle

        data: bytes = cloudpickle.dumps(value)
        return data
