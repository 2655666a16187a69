"""Process mode: isolated worker processes ("lanes") with hard timeouts.

When one worker of a loky (or stdlib) process pool dies, the whole pool
breaks: every in-flight future fails and the other workers are killed. So
flowpool gives each concurrency slot its own worker process, a *lane* (``_lane``),
and sends it one attempt at a time, plus one queued behind it when work waits::

    ProcessBackend (per run)          LanePool (per process, shared by runs)
    ────────────────────────          ──────────────────────────────────────
    waiting attempts ── pump ──▶ acquire() ─▶ Lane: 1 worker, a socket pair to it
                                      ▲           │ send_attempt: the payload, written by the sender
    reader callback ◀─────────────────┼───────────┘ the worker: run_attempt → envelope bytes
      decode → inbox (DONE)            release(lane)   ← reused by later attempts and runs
    stop(attempt): kill the lane's process tree; the lane is replaced
                  (at a timeout, first ``where_it_hung``: the worker dumps its stack)
    worker's log records ─▶ ``_logs.LogReceiver`` ─▶ the parent's loggers (drained before DONE)

A kill or a crash therefore only ever hits its own attempt. Each lane records
what its worker already holds (``_lanestore.LaneStore``: functions, run inputs,
earlier values), so a payload carries only what is new to it; large values go
once to the run's spool file and a worker reads one only when a step reads it.
Lanes start once and are reused across stages and runs; idle lanes close after
``IDLE_TIMEOUT`` seconds, and ``shutdown_workers()`` (also run at interpreter
exit) kills them all.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import threading
import weakref
from collections.abc import Callable

from .._attempt import DONE, STARTED, Attempt, hung_note, take_back
from .._errors import CallNotPicklableError, NotStartedError, WorkerCrashedError
from . import _lanestore, _logs, _worker
from ._lane import CLOSE_WAIT, Lane, LaneTicket, Reply, closing_threads, in_background

__all__ = ["IDLE_TIMEOUT", "LanePool", "ProcessBackend", "shutdown_workers"]

#: Seconds an idle lane is kept for later attempts and runs before it is closed.
IDLE_TIMEOUT = 300.0

#: Test hook: called with (step, lane number, payload bytes) for every payload sent to a lane.
on_payload: Callable[[str, int, int], None] | None = None

#: Seconds a timed-out attempt's worker is given to dump its stack before it is killed.
STACK_WAIT = 0.25

#: Attempts a lane may hold: one running, and one queued behind it when all lanes are busy.
LANE_DEPTH = 2


class LanePool:
    """The process's lanes, shared by every process-mode run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: collections.deque[Lane] = collections.deque()
        self._all: set[Lane] = set()
        self._numbers = 0
        self._waiters: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()
        self._reaper: threading.Thread | None = None
        self._reaper_stop = threading.Event()

    def pids(self) -> set[int]:
        """The pids of every live lane's worker (kept on purpose for reuse)."""
        with self._lock:
            lanes = list(self._all)
        return {pid for lane in lanes for pid in lane.pids()}

    def acquire(self, backend: ProcessBackend) -> Lane | None:
        """An idle ready lane, or None: a new lane is then started for ``backend``, which
        is offered it first (``offer(lane, requested=True)``) or told it failed."""
        with self._lock:
            while self._idle:
                lane = self._idle.pop()  # most recently used: warm caches, lets old ones idle out
                if not lane.broken:
                    return lane
            self._numbers += 1
            number = self._numbers
        self._start_lane(number, backend)
        return None

    def _start_lane(self, number: int, requester: ProcessBackend) -> None:
        lane = Lane(self, number)
        lane.requester = weakref.ref(requester)
        with self._lock:
            self._all.add(lane)
            self._ensure_reaper()
        lane.start(lambda reply: self._on_ping(lane, reply))

    def _on_ping(self, lane: Lane, reply: Reply) -> None:
        requester = lane.requester() if lane.requester is not None else None
        lane.requester = None
        if reply.crash is not None:
            self.discard(lane)
            if requester is not None:
                requester.lane_failed(reply.crash)
            return
        lane.ready = True
        if requester is not None and requester.offer(lane, requested=True):
            return
        self.release(lane)

    def release(self, lane: Lane) -> None:
        """Give a lane back; a run waiting for one gets it first."""
        if lane.broken:
            self.discard(lane)
            return
        with self._lock:
            waiters = list(self._waiters)
        for backend in waiters:
            if backend.offer(lane, requested=False):
                return
        with self._lock:
            lane.idle_since = _now()
            self._idle.append(lane)
            lane.send_forgotten()  # what ended while it was busy

    def discard(self, lane: Lane) -> None:
        with self._lock:
            self._all.discard(lane)
            with contextlib.suppress(ValueError):
                self._idle.remove(lane)
        # Waiting for the worker to exit (its reader reaps it): off this thread.
        in_background(lane.close, "flowpool-lane-close", True)

    def waiting(self, backend: ProcessBackend, waits: bool) -> None:
        """Record whether ``backend`` has work waiting for a lane."""
        with self._lock:
            if waits:
                self._waiters.add(backend)
            else:
                self._waiters.discard(backend)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper_stop.clear()
            self._reaper = threading.Thread(target=self._reap, name="flowpool-lane-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while not self._reaper_stop.wait(min(IDLE_TIMEOUT / 4, 30.0)):
            cutoff = _now() - IDLE_TIMEOUT
            with self._lock:
                old = [lane for lane in self._idle if lane.idle_since < cutoff]
                for lane in old:
                    self._idle.remove(lane)
                    self._all.discard(lane)
                if not self._all:
                    self._reaper = None
                    return
            for lane in old:
                lane.close(wait=True)

    def shutdown(self) -> None:
        """Close every lane of this process: idle ones cleanly, busy ones by a kill."""
        with self._lock:
            idle = set(self._idle)
            lanes = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._reaper_stop.set()
            reaper = self._reaper
        clean = [lane for lane in lanes if lane in idle and lane.ready]
        for lane in clean:
            lane.ask_to_stop()  # all of them first: they exit side by side
        for lane in lanes:
            if lane in clean:
                lane.close(wait=True)  # an idle worker exits cleanly (its interpreter's own clean-up runs)
            else:
                lane.kill(wait=True)
        # Lanes killed or discarded earlier are still being cleaned up on background threads.
        # Let them finish: at interpreter exit a daemon thread is frozen wherever it is, and
        # one frozen before its worker is reaped or its flag file removed leaves them behind.
        # (A clean-up may start another: a kill's ends the lane's attempt, whose callback discards it.)
        deadline = _now() + CLOSE_WAIT
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(max(0.0, deadline - _now()))
        while _now() < deadline:
            busy = [
                thread for thread in closing_threads if thread.is_alive() and thread is not threading.current_thread()
            ]
            if not busy:
                break
            busy[0].join(max(0.0, deadline - _now()))

    def size(self) -> int:
        """How many lanes are alive."""
        with self._lock:
            return len(self._all)

    def forget(self, sessions: list[int]) -> None:
        """These runs ended: every lane's worker drops their values, an idle one now, a
        busy one with its next payload (or when it goes idle)."""
        if not sessions:
            return
        with self._lock:
            lanes = list(self._all)
        for lane in lanes:
            lane.store.forget(sessions)
        with self._lock:
            for lane in self._idle:
                lane.send_forgotten()


def _now() -> float:
    from .._clock import SYSTEM_CLOCK

    return SYSTEM_CLOCK.now()


_POOL = LanePool()


def shutdown_workers() -> None:
    """Kill flowpool's worker processes now (they would close after being idle anyway)."""
    _POOL.shutdown()


# Runs before multiprocessing's exit hook (an ``atexit`` one), which joins child processes
# that still run: ours kills them first, so a hung step never delays interpreter exit.
threading._register_atexit(shutdown_workers)  # type: ignore[attr-defined]


class ProcessBackend:
    """A run's view of the lanes: at most ``max_workers`` attempts running at once.

    When every lane is busy and work waits, each lane also gets one attempt
    queued behind its running one (``LANE_DEPTH``), so a worker never idles
    while its result travels back and the next call travels out. A queued
    attempt has not started: its timeout is armed when the one before it ends,
    and if the lane is killed or crashes it is quietly sent to another lane.
    """

    kind = "process"
    kills = True
    in_process = False

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._lock = threading.RLock()
        self._waiting: collections.deque[Attempt] = collections.deque()
        self._lanes: dict[Attempt, Lane] = {}  # every attempt handed to a lane
        self._own: dict[Lane, list[Attempt]] = {}  # our lanes, and what each holds (running first)
        self._calls: dict[Attempt, _lanestore.Call] = {}
        self._starting = 0  # lanes being started on our behalf
        self._packer = _lanestore.CallPacker(spool_dir=tempfile.gettempdir(), split_trace=True)
        self._closed = False

    def submit(self, attempt: Attempt) -> None:
        try:
            call = self._packer.prepare(attempt.fn, attempt.ctx, attempt.args)
        except Exception as error:  # noqa: BLE001 - reported as this attempt's failure
            attempt.fail_unstarted(CallNotPicklableError(attempt.step, f"{type(error).__name__}: {error}"))
            return
        call.settings = _logs.worker_settings()  # the parent's levels (and sys.argv) at submission
        with self._lock:
            self._calls[attempt] = call
            self._waiting.append(attempt)
        self._pump()

    def _pump(self) -> None:
        with self._lock:
            while not self._closed and self._waiting:
                if self._waiting[0].settled:  # given up on while it waited
                    self._calls.pop(self._waiting.popleft(), None)
                    continue
                if len(self._own) + self._starting < self._max_workers:
                    if self._starting >= len(self._waiting):
                        break  # enough lanes are already starting for what waits
                    lane = _POOL.acquire(self)
                    if lane is None:
                        self._starting += 1
                    else:
                        self._start(self._waiting.popleft(), lane)
                    continue
                # Every lane is busy or starting. What the starting lanes will not take may
                # queue behind a running attempt, unless it may be cancelled before it
                # starts (a fail-fast group).
                if len(self._waiting) <= self._starting or not self._waiting[0].may_queue:
                    break
                queue_on = next(
                    (lane for lane, held in self._own.items() if len(held) < LANE_DEPTH and not lane.broken), None
                )
                if queue_on is None:
                    break
                self._start(self._waiting.popleft(), queue_on)
            _POOL.waiting(self, bool(self._waiting) and not self._closed)

    def offer(self, lane: Lane, requested: bool) -> bool:
        """A lane is free (``requested``: the one started for us): take it if work waits."""
        with self._lock:
            if requested:
                self._starting -= 1
            if self._closed or not self._waiting or len(self._own) >= self._max_workers:
                return False
            self._start(self._waiting.popleft(), lane)
        self._pump()
        return True

    def lane_failed(self, detail: str) -> None:
        """A lane started for us never came up: fail one waiting attempt instead of hanging."""
        with self._lock:
            self._starting -= 1
            attempt = self._waiting.popleft() if self._waiting else None
            if attempt is not None:
                self._calls.pop(attempt, None)
        if attempt is not None:
            attempt.try_claim()
            attempt.fail_unstarted(
                WorkerCrashedError(attempt.step, attempt.number, f"a worker process could not start: {detail}")
            )
        self._pump()

    def _start(self, attempt: Attempt, lane: Lane) -> None:
        # Called with the lock held.
        attempt.try_claim()  # from now on the loop cannot withdraw it; a requeued one is claimed already
        token = lane.next_token()
        held = self._own.setdefault(lane, [])
        try:
            call = self._calls[attempt]
            payload = lane.payload(call)
            hook = on_payload
            if hook is not None:
                hook(call.step, lane.number, len(payload))
            lane.send_attempt(payload, token, bool(held), lambda reply: self._finished(attempt, lane, reply))
        except Exception:  # noqa: BLE001 - the lane broke (its worker died): this attempt never started
            lane.broken = True
            if not held:
                del self._own[lane]
                _POOL.discard(lane)
            self._waiting.appendleft(attempt)  # it goes to another lane
            return
        held.append(attempt)
        self._lanes[attempt] = lane
        attempt.handle = LaneTicket(lane, token)
        if len(held) == 1:
            self._mark_running(attempt)
        if attempt.cancel_reason is not None:
            _worker.write_cancel(lane.flag, token, attempt.cancel_reason)

    @staticmethod
    def _mark_running(attempt: Attempt) -> None:
        # Cancelled while it was queued: the worker skips it unless it had already begun.
        attempt.quiet_start = attempt.cancel_reason is not None
        attempt.started_at = attempt.clock.now()
        if attempt.notify_start:
            attempt.inbox.put((STARTED, attempt))

    def _finished(self, attempt: Attempt, lane: Lane, reply: Reply) -> None:
        # Called by the lane's reader thread; ``reply.data`` is None if the worker died.
        envelope = reply.data
        crashed = envelope is None
        with self._lock:
            if self._lanes.get(attempt) is not lane:
                return  # it never started there and was sent to another lane
            held = self._own.get(lane, [])
            if crashed or lane.broken:
                lane.broken = True
                # What was queued behind the running attempt and never started goes to
                # another lane (or is dropped, if the loop gave up on it meanwhile). One
                # the worker had started is reported crashed by its own callback.
                started = lane.started_token()
                kept = held[:1]
                for queued in held[1:]:
                    ticket = queued.handle
                    if isinstance(ticket, LaneTicket) and ticket.token <= started:
                        kept.append(queued)
                        continue
                    del self._lanes[queued]
                    if queued.settled:
                        self._calls.pop(queued, None)
                    else:
                        self._waiting.appendleft(queued)  # (at most one is queued per lane)
                held[:] = kept
                requeued = attempt not in held
                if requeued and not held:
                    self._own.pop(lane, None)
            else:
                requeued = False
            if not requeued:
                del self._lanes[attempt]
                self._calls.pop(attempt, None)
                if attempt in held:
                    held.remove(attempt)
                if held and not lane.broken:
                    self._mark_running(held[0])
                if not held:
                    self._own.pop(lane, None)
            idle = not held
        if not requeued:
            if envelope is None:
                attempt.error = WorkerCrashedError(attempt.step, attempt.number, reply.crash or "it died")
            else:
                attempt.ok, attempt.value, attempt.error = _worker.decode(envelope, attempt.step)
                attempt.never_started = isinstance(attempt.error, NotStartedError)
                if attempt.ok:
                    self._packer.remember(attempt.value, envelope)
            attempt.finished_at = attempt.clock.now()
            _logs.receiver().drain()  # the attempt's log records are handled before its end is reported
            attempt.inbox.put((DONE, attempt))
        if lane.broken:
            if idle:
                _POOL.discard(lane)
        elif idle:
            _POOL.release(lane)
        self._pump()

    def cancel(self, attempt: Attempt) -> None:
        """Tell an attempt (through its lane's flag) that it should stop, or not start."""
        ticket = attempt.handle
        if isinstance(ticket, LaneTicket) and attempt.cancel_reason is not None:
            lane = ticket.lane
            if not lane.broken:
                with contextlib.suppress(ValueError):
                    _worker.write_cancel(lane.flag, ticket.token, attempt.cancel_reason)

    def withdraw(self, attempt: Attempt) -> bool:
        if not take_back(self._lock, self._waiting, attempt):
            return False
        with self._lock:
            self._calls.pop(attempt, None)
        return True

    def stop(self, attempt: Attempt) -> None:
        if self.withdraw(attempt):
            return
        with self._lock:
            lane = self._lanes.get(attempt)
            running = lane is not None and self._own.get(lane, [None])[0] is attempt
            if lane is not None and running:
                # Marked under the lock: an attempt that ends before the kill below must not
                # hand the lane back (``_finished`` checks it), or another run's attempt
                # could start on it and be killed instead.
                lane.broken = True
        if lane is None:
            return
        if running:
            lane.kill()  # the callbacks send what was queued behind it elsewhere
            _logs.receiver().drain()  # what it logged before it was killed is handled before its end
        else:
            self.cancel(attempt)  # queued behind another: the worker will skip it

    def where_it_hung(self, attempt: Attempt) -> str:
        """Ask the worker running ``attempt`` for its stack, waiting at most ``STACK_WAIT`` s."""
        with self._lock:
            lane = self._lanes.get(attempt)
            running = lane is not None and self._own.get(lane, [None])[0] is attempt
        ticket = attempt.handle
        if lane is None or not running or not isinstance(ticket, LaneTicket):
            return "Where it hung: unknown (the attempt was not running on a worker)"
        for pid in lane.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, _logs.STACK_SIGNAL)
        stack = _logs.receiver().wait_stack(lane.number, ticket.token, STACK_WAIT)
        if stack is None:
            return f"Where it hung: unknown (the worker process did not dump its stack within {STACK_WAIT:g} s)"
        return hung_note(stack)

    def check_capacity(self, step: str) -> None:
        """Nothing to check: the lane pool bounds its own work."""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            lanes = [(lane, list(held)) for lane, held in self._own.items()]
        _POOL.waiting(self, False)
        _POOL.forget(self._packer.sessions)
        self._packer.close()
        for attempt in waiting:
            attempt.try_claim()
        for lane, held in lanes:
            if any(attempt.settled for attempt in held):  # the loop gave up: leave nothing running
                lane.kill()
