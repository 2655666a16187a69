"""One lane of process mode: a single-worker process, its cancel flag, and what it holds.

``_process`` shares lanes between runs (``LanePool``) and sends attempts to them
(``ProcessBackend``); this module is one lane on its own: starting its worker,
what a payload for it carries (``_lanestore.LaneStore``), killing it with every
process it started, and closing it.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import pickle
import select
import signal
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _lanestore, _logs, _sweep, _worker

if TYPE_CHECKING:
    from ._process import LanePool, ProcessBackend

__all__ = ["CLOSE_WAIT", "INLINE_MAX", "Lane", "LaneTicket", "Reply", "closing_threads", "in_background"]


def _flag_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


_flags_swept = False


def _sweep_flags() -> None:
    """Remove, once per process, lane flag files left by processes that were killed."""
    global _flags_swept
    if _flags_swept:
        return
    _flags_swept = True
    _sweep.sweep(_flag_dir() or tempfile.gettempdir(), "flowpool-*-lane*-*")


class Reply:
    """What came back for one message sent to a lane: the worker's answer, or why there is none."""

    __slots__ = ("data", "crash")

    def __init__(self, data: bytes | None, crash: str | None) -> None:
        self.data = data  # the answer (an attempt's envelope), None if the worker died first
        self.crash = crash  # what happened to the worker, when it died or gave up


#: A message up to this big is written by the thread that sends it; a bigger one (or any
#: message behind one still being written) by the lane's writer thread. Whatever the
#: worker does meanwhile, the few small messages a lane holds fit in its socket's buffer,
#: so neither the settle loop nor the lane's reader ever blocks on a send.
INLINE_MAX = 32 * 1024


class Lane:
    """One worker process, its two-way pipe, its reader thread and its cancel flag.

    Messages go out in order from whichever thread sends them (``send_attempt``,
    ``send_forgotten``, …); the worker answers each attempt (and ping) in order, so the
    reader thread matches answers to a FIFO of callbacks. When the worker dies the
    reader calls every callback still waiting with the reason (``Reply.crash``).
    """

    def __init__(self, pool: LanePool, number: int) -> None:
        self.pool = pool
        self.number = number
        _sweep_flags()
        fd, self.flag_path = tempfile.mkstemp(prefix=f"flowpool-{os.getpid()}-lane{number}-", dir=_flag_dir())
        try:
            _sweep.hold(fd)  # kept open (so held) until close(): see ``_sweep``
            os.ftruncate(fd, _worker.FLAG_SIZE)
            self.flag = mmap.mmap(fd, _worker.FLAG_SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._flag_fd = [fd]  # popped by the first close(): close() may run on two threads
        self.ready = False
        self.broken = False
        self.requester: weakref.ref[ProcessBackend] | None = None
        self.idle_since = 0.0
        self.tokens = 0
        self.store = _lanestore.LaneStore()  # what the worker holds: a new lane starts empty
        self._kill_claim = [True]  # popped by the first kill()
        self._process: Any = None
        self._pid: int | None = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._pending: collections.deque[Callable[[Reply], None]] = collections.deque()
        self._backlog: collections.deque[bytes] = collections.deque()  # for the writer thread
        self._writer: threading.Thread | None = None
        self._wake_writer = threading.Event()
        self._dead = False  # the reader saw the worker go: nothing more is sent

    def start(self, on_ready: Callable[[Reply], None]) -> None:
        """Start the worker; ``on_ready`` is called (from another thread) once it answers."""
        from loky.backend.context import get_context

        context = get_context("loky")  # a fresh interpreter (fork + exec): safe with threads
        ours, theirs = context.Pipe(duplex=True)
        try:
            process = context.Process(
                target=_worker.lane_main,
                args=(theirs, os.getpid(), self.number, _logs.receiver().address, self.flag_path),
                name=f"flowpool-lane-{self.number}",
            )
            process.start()
        except Exception as error:  # noqa: BLE001 - told to the requester, off this thread
            self._dead = True
            ours.close()
            in_background(on_ready, "flowpool-lane-failed", Reply(None, f"{type(error).__name__}: {error}"))
            return
        finally:
            theirs.close()
        self._process, self._pid, self._conn = process, process.pid, ours
        self._reader = threading.Thread(target=self._read, name=f"flowpool-lane-{self.number}", daemon=True)
        self._reader.start()
        try:
            self._send(_worker.PING, on_ready)
        except OSError as error:  # it died already, before the reader could be told to answer
            in_background(on_ready, "flowpool-lane-failed", Reply(None, f"{type(error).__name__}: {error}"))

    def next_token(self) -> int:
        self.tokens += 1
        return self.tokens

    def started_token(self) -> int:
        """The token of the attempt the worker started last (all of them if unknown)."""
        try:
            return _worker.started_token(self.flag)
        except (ValueError, OSError):  # the flag is closed: assume the worst, never run twice
            return 1 << 62

    def pids(self) -> list[int]:
        """The worker's pid while it has not been reaped."""
        pid = self._pid
        return [] if pid is None or self._dead else [pid]

    def payload(self, call: _lanestore.Call) -> bytes:
        """What to send this lane's worker for ``call``: only what it does not hold yet."""
        return self.store.payload(call)

    def send_attempt(self, payload: bytes, token: int, queued: bool, on_reply: Callable[[Reply], None]) -> None:
        """Send one attempt's payload; ``on_reply`` gets its envelope. Raises ``OSError``
        if the worker is gone (the attempt was then not sent)."""
        self._send(_worker.run_message(payload, token, queued), on_reply)

    def send_call(self, fn: Callable[..., Any], args: tuple[Any, ...], on_reply: Callable[[Reply], None]) -> None:
        """Have the worker run ``fn(*args)`` after everything sent before; ``on_reply``
        gets the pickled result (for tests: the worker dies if ``fn`` raises)."""
        import cloudpickle

        self._send(_worker.CALL + cloudpickle.dumps((fn, args)), on_reply)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """``fn(*args)`` in the worker, after everything sent before (for tests)."""
        answered = threading.Event()
        replies: list[Reply] = []

        def on_reply(reply: Reply) -> None:
            replies.append(reply)
            answered.set()

        self.send_call(fn, args, on_reply)
        if not answered.wait(timeout):
            raise TimeoutError(f"lane {self.number} did not answer within {timeout:g} s")
        reply = replies[0]
        if reply.data is None:
            raise OSError(f"lane {self.number}'s worker died: {reply.crash}")
        return pickle.loads(reply.data)

    def send_forgotten(self) -> None:
        """Have an idle worker drop the values of runs that ended now, not with its next
        payload (maybe ``IDLE_TIMEOUT`` later). Called with the pool's lock held while the
        lane is idle, so the drop goes out before any later payload."""
        if self.broken or not self.ready:
            return
        sessions = self.store.take_forgotten()
        if sessions:
            with contextlib.suppress(OSError):  # a dead worker holds nothing
                self._send(_worker.FORGET + pickle.dumps((self.store.key, sessions)), None)

    def _send(self, message: bytes, on_reply: Callable[[Reply], None] | None) -> None:
        with self._send_lock:
            if self._dead or self._conn is None:
                raise BrokenPipeError(f"lane {self.number}'s worker is gone")
            if on_reply is not None:
                self._pending.append(on_reply)
            if self._backlog or len(message) > INLINE_MAX:
                self._backlog.append(message)
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write, name=f"flowpool-lane-{self.number}-writer", daemon=True
                    )
                    self._writer.start()
                else:
                    self._wake_writer.set()
                return
            try:
                self._conn.send_bytes(message)
            except OSError:
                if on_reply is not None:
                    self._pending.pop()  # never sent: the reader will not answer it
                raise

    def _write(self) -> None:
        wake = self._wake_writer
        while True:
            with self._send_lock:
                if self._dead:
                    self._backlog.clear()
                    return
                if not self._backlog:
                    wake.clear()
                    message = None
                else:
                    message = self._backlog[0]
            if message is None:
                wake.wait()
                continue
            try:
                self._conn.send_bytes(message)  # may block until the worker reads: only this thread waits
            except OSError:
                return  # the worker died: the reader answers what is pending
            with self._send_lock:
                self._backlog.popleft()

    def _read(self) -> None:
        """The reader thread: answers in order, until the worker is gone."""
        conn, process = self._conn, self._process
        poller = select.poll()
        fd = conn.fileno()
        poller.register(fd, select.POLLIN)
        poller.register(process.sentinel, select.POLLIN)
        pending = self._pending
        crash: str | None = None
        while True:
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            if not any(got == fd for got, _ in ready):
                break  # only the sentinel: the worker exited and left nothing unread
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break
            if not data:  # the worker gives up (it cannot serve this lane): why, then it exits
                with contextlib.suppress(EOFError, OSError):
                    crash = conn.recv_bytes().decode("utf-8", "replace")
                break
            try:
                callback = pending.popleft()
            except IndexError:
                continue  # nothing asked for it
            _answer(callback, Reply(data, None))
            del data, callback  # while it polls, this thread holds no reply, nor the attempt it was for
        with self._send_lock:
            self._dead = True
            self.broken = True
            waiting = list(pending)
            pending.clear()
            self._wake_writer.set()
        process.join(1.0)
        if process.exitcode is None:  # it closed its end but lingers: it is done all the same
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
            process.join()
        crash = crash or _exit_detail(process.exitcode)
        writer = self._writer
        if writer is not None:
            writer.join(5.0)  # its send fails at once now: the socket is closed only after it
        with contextlib.suppress(Exception):
            conn.close()
        _release_sentinel(process)
        for callback in waiting:
            _answer(callback, Reply(None, crash))

    def kill(self, wait: bool = False) -> None:
        """Kill the worker and every process it started; the lane is done.

        The SIGKILLs go out before this returns; the clean-up (waiting for the step's
        own processes, then for the lane's reader to reap the worker) finishes on a
        background thread so the settle loop is not held, unless ``wait``. Only the
        first call kills.
        """
        self.broken = True
        try:
            self._kill_claim.pop()
        except IndexError:
            return  # already killed (a timeout, then the run's close): one clean-up is enough
        import psutil

        workers: list[Any] = []
        descendants: list[Any] = []
        for pid in self.pids():
            try:
                process = psutil.Process(pid)
                descendants.extend(process.children(recursive=True))
                workers.append(process)
            except psutil.Error:
                continue
        for victim in (*workers, *descendants):
            with contextlib.suppress(psutil.Error):
                victim.kill()
        # Only the descendants are waited for here: the lane's reader reaps the worker.
        if wait:
            self._finish_kill(descendants)
            return
        in_background(self._finish_kill, "flowpool-lane-kill", descendants)

    def _finish_kill(self, descendants: list[Any]) -> None:
        import psutil

        with contextlib.suppress(Exception):
            psutil.wait_procs(descendants, timeout=2.0)
        self.close(wait=True)

    def ask_to_stop(self) -> None:
        """Tell the worker to exit once it has done what it was sent."""
        self.broken = True
        with contextlib.suppress(OSError):
            self._send(_worker.STOP, None)

    def close(self, wait: bool = False) -> None:
        """Tell the worker to exit (it ends after what it was sent); with ``wait``, wait
        for it, killing it if it does not end within a second."""
        self.ask_to_stop()
        reader = self._reader
        if wait and reader is not None and reader is not threading.current_thread():
            reader.join(1.0)
            if reader.is_alive():
                for pid in self.pids():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                reader.join(2.0)
        with contextlib.suppress(Exception):
            self.flag.close()
        with contextlib.suppress(OSError):
            os.unlink(self.flag_path)
        with contextlib.suppress(IndexError, OSError):
            os.close(self._flag_fd.pop())  # lets go of the flag's lock (see ``_sweep``)


def _answer(callback: Callable[[Reply], None], reply: Reply) -> None:
    try:
        callback(reply)
    except Exception:  # noqa: BLE001 - a bug in a callback must not stop the lane's reader
        import traceback

        traceback.print_exc()


def _exit_detail(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit status {code}"


class LaneTicket:
    """``Attempt.handle`` in process mode: the lane it was sent to and its token there."""

    __slots__ = ("lane", "token")

    def __init__(self, lane: Lane, token: int) -> None:
        self.lane = lane
        self.token = token


#: Seconds ``shutdown_workers`` (and so interpreter exit) waits for lanes still being cleaned up.
CLOSE_WAIT = 5.0

#: Threads cleaning up killed or discarded lanes.
closing_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def in_background(target: Callable[..., None], name: str, *args: Any) -> None:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    closing_threads.add(thread)
    thread.start()


def _release_sentinel(process: Any) -> None:
    """Close a dead worker's sentinel pipe now rather than whenever its objects are
    collected (loky's Popen has no ``close``; it registers a finalizer that closes it)."""
    from multiprocessing import util

    popen = getattr(process, "_popen", None)
    if popen is None:
        return
    registry = getattr(util, "_finalizer_registry", {})
    for finalizer in list(registry.values()):
        reference = getattr(finalizer, "_weakref", None)
        if reference is not None and reference() is popen:
            finalizer()  # runs once, then unregisters itself
