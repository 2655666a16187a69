"""Process mode: a worker's log records, and the stack of a hung attempt, in the parent.

::

    worker process (a lane)                         parent process
    ───────────────────────                         ──────────────
    payload ─▶ apply_settings: sys.argv and the     worker_settings(): sys.argv and the
               parent's logger levels               explicit logger levels, at submission
    logger.info(…) ─▶ (levels say no: nothing)
                  └─▶ ToParent (on the root) ───┐
    SIGUSR1 (a timeout) ─▶ the stack ───────────┤  one datagram each, in order
                                                ▼
                                   LogReceiver: one AF_UNIX datagram socket in a private
                                   folder; a thread handles what arrives, and drain()
                                   handles what has arrived, before an attempt's DONE:
                                   logging.getLogger(name).handle(record)

A datagram is in the parent's socket queue as soon as the worker's ``send``
returns, so a record is not lost when the worker is killed after logging it;
``drain()`` before an attempt's outcome is posted means its records are handled
before its end is reported. The levels travel with a lane's payloads only when
they changed, so a record the parent would not emit costs nothing in the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
import weakref
from types import CodeType, FrameType
from typing import Any

from .. import _logcontext
from .._attempt import user_stack
from . import _sweep

__all__ = [
    "STACK_SIGNAL",
    "LogReceiver",
    "apply_settings",
    "install_in_worker",
    "receiver",
    "worker_settings",
]

#: The signal that asks a worker for the stack of the attempt it runs.
STACK_SIGNAL = signal.SIGUSR1

_RECORD, _STACK = 1, 2

#: A datagram stays below this (the kernel's limit is about 200 KB): longer
#: messages and exception texts are cut.
_DATAGRAM_MAX = 60_000

# ── parent side: what a worker must know before it runs (and imports) anything ──

#: (argv, root level, logging.disable level, explicit levels of named loggers)
Settings = tuple[list[str], int, int, tuple[tuple[str, int], ...]]

_settings_lock = threading.Lock()
_settings: tuple[int, Settings] | None = None
_settings_keys = 0
# ``Logger.setLevel``, ``logging.disable`` and ``dictConfig`` clear every logger's
# level cache; an empty cache here therefore says that some level may have changed.
_LEVELS_WATCH = logging.getLogger("flowpool.levels-watch")


def worker_settings() -> tuple[int, Settings]:
    """``(key, settings)``: this process's ``sys.argv`` and logging levels now; the key
    changes only when they do (a lane is sent them only then)."""
    global _settings, _settings_keys
    cache: dict[int, bool] = getattr(_LEVELS_WATCH, "_cache", {})
    current = _settings
    if current is not None and cache and current[1][0] == sys.argv:
        return current
    manager = logging.root.manager
    levels = tuple(
        (name, logger.level)
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    )
    settings: Settings = (list(sys.argv), logging.root.level, manager.disable, levels)
    _LEVELS_WATCH.isEnabledFor(logging.CRITICAL)  # fills the cache that setLevel clears
    with _settings_lock:
        if current is None or current[1] != settings:
            _settings_keys += 1
            current = (_settings_keys, settings)
        _settings = current
    return current


class LogReceiver:
    """Parent side: receives what workers send; one per parent process."""

    def __init__(self) -> None:
        _sweep.sweep(tempfile.gettempdir(), "flowpool-logs-*-*", pid_field=2)  # left by killed processes
        self._folder = tempfile.mkdtemp(prefix=f"flowpool-logs-{os.getpid()}-")  # mode 0700: only we can send
        held = _sweep.hold_path(self._folder)  # until closed: see ``_sweep``
        self.address = os.path.join(self._folder, "socket")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.address)
        self._socket.setblocking(False)
        self._lock = threading.Lock()
        self._stack_arrived = threading.Condition(self._lock)
        self._stacks: dict[tuple[int, int], str] = {}
        weakref.finalize(self, _close, self._socket, self._folder, held)
        threading.Thread(target=self._serve, name="flowpool-worker-logs", daemon=True).start()

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._socket.fileno(), select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except OSError:
                return
            if any(flags & (select.POLLNVAL | select.POLLERR) for _, flags in events):
                return  # closed at exit
            self.drain()

    def drain(self) -> None:
        """Handle every datagram that has arrived (all that workers sent before now)."""
        with self._lock:
            while True:
                try:
                    data = self._socket.recv(_DATAGRAM_MAX + 4096)
                except OSError:  # nothing more (BlockingIOError), or closed
                    return
                try:
                    message = pickle.loads(data)
                except Exception:  # noqa: BLE001 - not one of ours: ignore it
                    continue
                if message[0] == _RECORD:
                    _handle(message[1])
                elif message[0] == _STACK:
                    self._stacks[message[1], message[2]] = message[3]
                    self._stack_arrived.notify_all()

    def wait_stack(self, lane: int, token: int, timeout: float) -> str | None:
        """The stack that lane ``lane`` dumped for its attempt ``token``, waiting at most ``timeout`` s."""
        key = (lane, token)
        with self._lock:
            self._stack_arrived.wait_for(lambda: key in self._stacks, timeout)
            return self._stacks.pop(key, None)


def _handle(fields: dict[str, Any]) -> None:
    record = logging.makeLogRecord(fields)
    # Handled as the parent's logger of that name handles its own records (its
    # filters, its handlers, propagation); the level was checked in the worker.
    logger = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    with contextlib.suppress(Exception):  # a handler's failure must not stop the receiver
        logger.handle(record)


def _close(sock: socket.socket, folder: str, held: int) -> None:
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.close(held)


_receiver: LogReceiver | None = None
_receiver_lock = threading.Lock()


def receiver() -> LogReceiver:
    """This process's receiver, started the first time a lane needs it."""
    global _receiver
    with _receiver_lock:
        if _receiver is None:
            _receiver = LogReceiver()
        return _receiver


# ── worker side ──

_channel: socket.socket | None = None
_lane = 0
_explicit: set[str] = set()
_original_argv: list[str] = []
#: The token of the attempt this worker runs now (0 between attempts).
running_token = 0
#: The code of the frame that calls the step function (the stack shown starts below it).
_trampoline: CodeType | None = None


def install_in_worker(lane: int, address: str | None, trampoline: CodeType) -> None:
    """Worker start-up: send records to the parent and answer ``STACK_SIGNAL`` with the
    stack below ``trampoline`` (the code that calls the step function)."""
    global _channel, _lane, _original_argv, _trampoline
    _lane, _trampoline = lane, trampoline
    _original_argv = list(sys.argv)
    if address is None:
        return
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        channel.connect(address)
    except OSError:
        channel.close()
        return
    _channel = channel
    root = logging.getLogger()
    root.addHandler(ToParent())
    signal.signal(STACK_SIGNAL, _send_stack)


def apply_settings(settings: Settings) -> None:
    """Take the parent's ``sys.argv`` and logging levels (before anything is unpickled)."""
    argv, root_level, disable, levels = settings
    sys.argv = list(argv) if argv else list(_original_argv)
    logging.disable(disable)
    logging.getLogger().setLevel(root_level)
    names = {name for name, _ in levels}
    for name in _explicit - names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in levels:
        logging.getLogger(name).setLevel(level)
    _explicit.clear()
    _explicit.update(names)


class ToParent(logging.Handler):
    """Worker side: sends each record it gets to the parent, as plain data."""

    def emit(self, record: logging.LogRecord) -> None:
        channel = _channel
        if channel is None:
            return
        try:
            data = _record_datagram(record)
        except Exception:  # noqa: BLE001 - e.g. arguments that do not fit the message
            self.handleError(record)  # logging's usual "--- Logging error ---" on this worker's stderr
            return
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            channel.send(data)


_PLAIN = (str, int, float, bool, type(None))


def _record_datagram(record: logging.LogRecord) -> bytes:
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info and not record.exc_text:
        fields["exc_text"] = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    fields["exc_info"] = None
    fields.pop("message", None)
    for name, value in _logcontext.current().items():
        fields.setdefault(name, value)
    for name, value in fields.items():
        if not _plain(value):
            fields[name] = repr(value)  # a user's extra attribute: its text travels
    data = pickle.dumps((_RECORD, fields))
    if len(data) > _DATAGRAM_MAX:
        for name in ("msg", "exc_text", "stack_info"):
            text = fields.get(name)
            if isinstance(text, str) and len(text) > _DATAGRAM_MAX // 4:
                fields[name] = text[: _DATAGRAM_MAX // 4] + " … (cut)"
        data = pickle.dumps((_RECORD, fields))
    return data


def _plain(value: object) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value))


def _send_stack(signum: int, frame: FrameType | None) -> None:
    channel, token = _channel, running_token
    if channel is None or not token:
        return
    text = user_stack(frame, _trampoline)
    with contextlib.suppress(Exception):
        channel.send(pickle.dumps((_STACK, _lane, token, text[-_DATAGRAM_MAX:])))
