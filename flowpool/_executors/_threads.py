"""Thread mode: daemon threads shared by every run of the process, no futures.

    ThreadBackend (one per run)            SharedThreads (one per process)
    ───────────────────────────            ───────────────────────────────
    submit ─▶ a free slot of the run? ──▶ work queue ──▶ daemon thread: attempt.execute()
              no: held in the run's deque        ▲              │ posts DONE to the run's inbox
    slot freed ─▶ next held attempt ─────────────┘ ◀────────────┘ then frees the run's slot

Each run keeps its own limit (``max_workers``) and shares nothing with other
runs but warm threads: a run never waits for a thread to be started when an
earlier run left idle ones, and idle threads exit after ``IDLE_TIMEOUT``.

Python cannot stop a thread, so a timed-out attempt is *abandoned*: the loop
stops waiting for it, its run gets its slot back at once, and the pool starts
a replacement thread if work is waiting; the abandoned thread retires when its
call finally returns. Threads are daemons, so a hung call never keeps the
interpreter from exiting (the stdlib pool joins its threads at exit). At most
``MAX_ABANDONED_THREADS`` abandoned calls may pile up before new attempts are
refused with an error that says why.
"""

from __future__ import annotations

import collections
import queue
import threading

from .._attempt import Attempt
from .._errors import AbandonedThreadsError

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_ABANDONED_THREADS",
    "AbandonedThreadsError",
    "SharedThreads",
    "ThreadBackend",
    "ThreadTicket",
]

#: How many abandoned (still running) attempts one process may carry before flowpool
#: refuses to start more: a step that keeps hanging must not pile up threads.
MAX_ABANDONED_THREADS = 256

#: Seconds an idle shared thread waits for work before it exits.
IDLE_TIMEOUT = 60.0


class ThreadTicket:
    """``Attempt.handle`` in thread mode: the run's backend, and a one-element token that
    whoever is first pops: the worker when the call returns, or the loop when it abandons it."""

    __slots__ = ("backend", "token")

    def __init__(self, backend: ThreadBackend, token: list[bool]) -> None:
        self.backend = backend
        self.token = token


class SharedThreads:
    """The process's daemon threads; they run whatever attempt the work queue holds."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._idle_timeout = idle_timeout
        self._work: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # threads serving the queue (abandoned ones excluded)
        self._idle = 0  # threads waiting for work
        self._queued = 0  # attempts in the queue, not yet taken
        self.abandoned = 0  # calls the loop gave up on that still run

    def put(self, attempt: Attempt) -> None:
        """Queue ``attempt``; start a thread if none is idle to take it."""
        with self._lock:
            self._queued += 1
            spawn = self._queued > self._idle
            if spawn:
                self._threads += 1
        self._work.put(attempt)
        if spawn:
            threading.Thread(target=self._serve, name="flowpool-worker", daemon=True).start()

    def _serve(self) -> None:
        work = self._work
        lock = self._lock
        while True:
            with lock:
                self._idle += 1
            try:
                attempt = work.get(timeout=self._idle_timeout)
            except queue.Empty:
                with lock:
                    self._idle -= 1
                    if self._queued <= self._idle:  # nothing waits that another thread won't take
                        self._threads -= 1
                        return
                continue
            with lock:
                self._idle -= 1
                self._queued -= 1
                if attempt is None:  # retire_idle() asked one idle thread to go
                    self._threads -= 1
                    return
            attempt.execute()
            ticket = attempt.handle
            assert isinstance(ticket, ThreadTicket)
            try:
                ticket.token.pop()
            except IndexError:
                # The loop abandoned this call: its run got its slot back and a
                # replacement thread took our place.
                with lock:
                    self.abandoned -= 1
                return
            ticket.backend.slot_freed()
            # Idle, this frame must not hold the last attempt (its context, its run's
            # values) until the next one or the idle timeout.
            del attempt, ticket

    def abandon(self) -> None:
        """A thread is stuck in an abandoned call: stop counting it, replace it if needed."""
        with self._lock:
            self.abandoned += 1
            self._threads -= 1
            spawn = self._queued > self._idle
            if spawn:
                self._threads += 1
        if spawn:
            threading.Thread(target=self._serve, name="flowpool-worker", daemon=True).start()

    def retire_idle(self) -> None:
        """Ask the threads that are idle now to exit (busy ones keep serving)."""
        with self._lock:
            count = self._idle
            self._queued += count  # a retire request is queued work, so put() stays right
        for _ in range(count):
            self._work.put(None)

    def counts(self) -> dict[str, int]:
        """Threads, idle threads, queued attempts and abandoned calls, for diagnostics."""
        with self._lock:
            return {"threads": self._threads, "idle": self._idle, "queued": self._queued, "abandoned": self.abandoned}


SHARED = SharedThreads()


def abandoned_threads() -> int:
    """How many abandoned attempts are still running in this process."""
    return SHARED.abandoned


class ThreadBackend:
    """One run's view of the shared threads: at most ``max_workers`` attempts at once."""

    kind = "thread"
    kills = False
    in_process = True

    def __init__(self, max_workers: int, threads: SharedThreads = SHARED) -> None:
        self._max_workers = max_workers
        self._threads = threads
        self._lock = threading.Lock()
        self._running = 0  # attempts handed to the shared threads and not finished
        self._held: collections.deque[Attempt] = collections.deque()
        self._closed = False

    def submit(self, attempt: Attempt) -> None:
        if self._closed:
            raise RuntimeError("the thread backend is closed")
        # The token is popped by whoever is first: the worker when the call returns,
        # or the loop when it abandons the call (list.pop is atomic; no lock per attempt).
        attempt.handle = ThreadTicket(self, [True])
        with self._lock:
            if self._running >= self._max_workers:
                self._held.append(attempt)
                return
            self._running += 1
        self._threads.put(attempt)

    def slot_freed(self) -> None:
        """An attempt of this run finished or was abandoned: start the next held one."""
        with self._lock:
            if not self._held:
                self._running -= 1
                return
            attempt = self._held.popleft()
        self._threads.put(attempt)

    def cancel(self, attempt: Attempt) -> None:
        """In-process contexts read ``attempt.cancel_reason`` directly: nothing to send."""

    def withdraw(self, attempt: Attempt) -> bool:
        # A withdrawn attempt that is still held or queued returns at once when a
        # thread reaches it, and frees its slot then.
        return attempt.try_claim()

    def stop(self, attempt: Attempt) -> None:
        if attempt.started_at is None and attempt.try_claim():
            return  # it never started: nothing is running
        ticket = attempt.handle
        assert isinstance(ticket, ThreadTicket)
        try:
            ticket.token.pop()
        except IndexError:
            return  # its call already returned; the thread serves on
        self._threads.abandon()
        self.slot_freed()

    def where_it_hung(self, attempt: Attempt) -> str:
        """The stack of the thread running ``attempt``."""
        return attempt.where_it_hung()

    def check_capacity(self, step: str) -> None:
        """Raise if too many abandoned attempts are still running in this process."""
        count = self._threads.abandoned
        if count >= MAX_ABANDONED_THREADS:
            raise AbandonedThreadsError(step, count)

    def close(self) -> None:
        """Attempts still held never start; the shared threads stay for later runs."""
        with self._lock:
            self._closed = True
            held = list(self._held)
            self._held.clear()
        for attempt in held:
            attempt.try_claim()
