"""flowpool's own thread pool: daemon threads, a shared work queue, no futures.

Python cannot stop a thread, so a timed-out attempt is *abandoned*: the loop
stops waiting for it and this pool starts a replacement thread so the run
keeps its capacity. The abandoned thread retires when its call finally
returns. Threads are daemons, so a hung call never keeps the interpreter
from exiting (the stdlib pool joins its threads at exit).
"""

from __future__ import annotations

import queue
import threading

from .._attempt import Attempt
from .._errors import FlowpoolError

__all__ = ["MAX_ABANDONED_THREADS", "ThreadBackend", "AbandonedThreadsError"]

#: How many abandoned (still running) attempts one process may carry before flowpool
#: refuses to start more threads: a step that keeps hanging must not pile them up.
MAX_ABANDONED_THREADS = 256

_abandoned_lock = threading.Lock()
_abandoned_count = 0


class AbandonedThreadsError(FlowpoolError):
    """Too many timed-out thread-mode attempts are still running in this process."""

    def __init__(self, step: str, count: int) -> None:
        self.step = step
        self.count = count
        super().__init__(
            f"step {step!r} was not started: {count} timed-out thread-mode attempts are still "
            f"running in this process (Python cannot stop a thread). Run steps that hang with "
            f"executor='process', where a timeout kills the worker."
        )


def abandoned_threads() -> int:
    """How many abandoned attempts are still running in this process."""
    return _abandoned_count


def _change_abandoned(delta: int) -> None:
    global _abandoned_count
    with _abandoned_lock:
        _abandoned_count += delta


_STOP = None


class ThreadBackend:
    """Runs attempts on up to ``max_workers`` daemon threads of its own."""

    kind = "thread"
    kills = False
    in_process = True
    start_is_submission = False

    def __init__(self, max_workers: int, name: str = "flowpool") -> None:
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # live threads that serve the queue (abandoned ones excluded)
        self._idle = 0  # threads waiting for work
        self._queued = 0  # attempts submitted and not yet taken by a thread
        self._closed = False

    def submit(self, attempt: Attempt) -> None:
        if self._closed:
            raise RuntimeError("the thread backend is closed")
        # One token popped by whoever is first: the worker when the call returns, or
        # the loop when it abandons the call (list.pop is atomic; no lock per attempt).
        attempt.handle = [True]
        with self._lock:
            self._queued += 1
            spawn = self._queued > self._idle and self._threads < self._max_workers
            if spawn:
                self._threads += 1
        self._work.put(attempt)
        if spawn:
            self._spawn()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._name}-worker", daemon=True)
        thread.start()

    def _serve(self) -> None:
        work = self._work
        lock = self._lock
        while True:
            with lock:
                self._idle += 1
            attempt = work.get()
            with lock:
                self._idle -= 1
                if attempt is not _STOP:
                    self._queued -= 1
            if attempt is _STOP:
                return
            attempt.execute()
            try:
                attempt.handle.pop()
            except IndexError:
                # The loop abandoned this call and a replacement thread took our place.
                _change_abandoned(-1)
                return

    def withdraw(self, attempt: Attempt) -> bool:
        return attempt.try_claim()

    def stop(self, attempt: Attempt) -> None:
        if attempt.started_at is None and attempt.try_claim():
            return  # it never started: nothing is running
        try:
            attempt.handle.pop()
        except IndexError:
            return  # its call already returned; the thread serves on
        _change_abandoned(+1)
        with self._lock:
            # The hung thread no longer counts: start a replacement if work is waiting.
            self._threads -= 1
            spawn = self._queued > self._idle and self._threads < self._max_workers
            if spawn:
                self._threads += 1
        if spawn:
            self._spawn()

    def check_capacity(self, step: str) -> None:
        """Raise if too many abandoned attempts are still running in this process."""
        count = _abandoned_count
        if count >= MAX_ABANDONED_THREADS:
            raise AbandonedThreadsError(step, count)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            live = self._threads
        for _ in range(live):
            self._work.put(_STOP)

    def cancel(self, attempt: Attempt) -> None:
        """In-process contexts read ``attempt.cancel_reason`` directly: nothing to send."""
