"""One lane of process mode: a single-worker process, its cancel flag, and what it holds.

``_process`` shares lanes between runs (``LanePool``) and sends attempts to them
(``ProcessBackend``); this module is one lane on its own: starting its worker,
what a payload for it carries (``_lanestore.LaneStore``), killing it with every
process it started, and closing it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _lanestore, _logs, _sweep, _worker

if TYPE_CHECKING:
    from ._process import LanePool, ProcessBackend

__all__ = ["CLOSE_WAIT", "Lane", "LaneTicket", "in_background", "closing_threads"]


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


class Lane:
    """One single-worker loky executor, its worker's pid and its cancel flag."""

    def __init__(self, pool: LanePool, number: int) -> None:
        import loky

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
        self.executor = loky.ProcessPoolExecutor(
            max_workers=1,
            initializer=_worker.init_worker,
            initargs=(os.getpid(), number, _logs.receiver().address),
        )
        self.ready = False
        self.broken = False
        self.requester: weakref.ref[ProcessBackend] | None = None
        self.processes: list[Any] = []  # loky's process objects, to close their pipes
        self.idle_since = 0.0
        self.tokens = 0
        self.store = _lanestore.LaneStore()  # what the worker holds: a new lane starts empty
        self._kill_claim = [True]  # popped by the first kill()

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
        return list(getattr(self.executor, "_processes", {}).keys())

    def payload(self, call: _lanestore.Call) -> bytes:
        """What to send this lane's worker for ``call``: only what it does not hold yet."""
        return self.store.payload(call)

    def send_forgotten(self) -> None:
        """Have an idle worker drop the values of runs that ended now, not with its next
        payload (maybe ``IDLE_TIMEOUT`` later). Called with the pool's lock held while the
        lane is idle, so the drop goes out before any later payload."""
        if self.broken or not self.ready:
            return
        sessions = self.store.take_forgotten()
        if sessions:
            with contextlib.suppress(Exception):  # a dead worker holds nothing
                self.executor.submit(_worker.forget_sessions, self.store.key, sessions)

    def kill(self, wait: bool = False) -> None:
        """Kill the worker and every process it started; the lane is done.

        The SIGKILLs go out before this returns; loky's clean-up (which reaps the
        worker and releases its semaphores) finishes on a background thread so the
        settle loop is not held, unless ``wait``. Only the first call kills.
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
        # Only the descendants are waited for here: reaping the worker ourselves would
        # leave loky polling for an exit code it can no longer read.
        if wait:
            self._finish_kill(descendants)
            return
        in_background(self._finish_kill, "flowpool-lane-kill", descendants)

    def _finish_kill(self, descendants: list[Any]) -> None:
        import psutil

        with contextlib.suppress(Exception):
            psutil.wait_procs(descendants, timeout=2.0)
        self.close(wait=True)

    def close(self, wait: bool = False) -> None:
        self.broken = True
        processes = self.processes or list(getattr(self.executor, "_processes", {}).values())
        with contextlib.suppress(Exception):
            self.executor.shutdown(wait=wait, kill_workers=not wait)
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=1.0 if wait else 0)
                if process.exitcode is not None:
                    _release_sentinel(process)
        with contextlib.suppress(Exception):
            self.flag.close()
        with contextlib.suppress(OSError):
            os.unlink(self.flag_path)
        with contextlib.suppress(IndexError, OSError):
            os.close(self._flag_fd.pop())  # lets go of the flag's lock (see ``_sweep``)


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
    """Close a dead loky worker's sentinel pipe now rather than whenever its objects are
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
