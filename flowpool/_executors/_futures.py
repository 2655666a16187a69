"""Any ``concurrent.futures.Executor`` the user hands over, used as is and never shut down.

In-process executors (``ThreadPoolExecutor`` and subclasses) run the attempt
record itself, so ``ctx.cancelled`` and the real start time work as in
flowpool's own pool. Other executors (process pools, clusters) receive a
picklable call; the attempt's start is then known only as the moment flowpool
hands it over, which it does only when a worker is free (``_max_workers``), so
timeouts there count from then. An attempt given up on keeps its worker until it
ends, so it keeps its slot until then too.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import threading
from types import MappingProxyType
from typing import Any

from .._attempt import DONE, STARTED, Attempt, take_back
from .._context import Context
from .._errors import ExecutorRefusedError

__all__ = ["ExecutorBackend", "call_detached"]


def call_detached(fn: Any, ctx: Context, args: tuple[Any, ...]) -> Any:
    """What a remote worker runs: the step function with a plain context."""
    ctx.results = MappingProxyType(dict(ctx.results))  # read-only there too
    return fn(ctx, *args)


def detached_context(ctx: Context) -> Context:
    """A copy of ``ctx`` that can be pickled (no cancel scope, plain results dict)."""
    return Context(
        input=ctx.input,
        flow=ctx.flow,
        run_id=ctx.run_id,
        step=ctx.step,
        attempt=ctx.attempt,
        results=dict(ctx.results),
        outcome=ctx.outcome,
    )


class ExecutorBackend:
    """Submits attempts to a user-supplied executor; completion via done-callbacks.

    A process pool (anything with ``_max_workers`` that is not a thread pool) gets at
    most that many attempts at a time, so that an attempt is sent when a worker is
    free and its timeout counts from then, not while it would wait in the pool.
    """

    kind = "executor"
    kills = False

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._in_process = isinstance(executor, concurrent.futures.ThreadPoolExecutor)
        self.in_process = self._in_process
        capacity = getattr(executor, "_max_workers", None)
        self._capacity = capacity if isinstance(capacity, int) and capacity > 0 else None
        self._lock = threading.Lock()
        self._waiting: collections.deque[Attempt] = collections.deque()
        self._sent = 0

    def submit(self, attempt: Attempt) -> None:
        if self._in_process:
            try:
                future = self._executor.submit(attempt.execute)
            except Exception as error:  # noqa: BLE001 - shut down: reported as this attempt's failure
                attempt.fail_unstarted(ExecutorRefusedError(attempt.step, f"{type(error).__name__}: {error}"))
                return
            attempt.handle = future
            future.add_done_callback(functools.partial(self._settled, attempt))
            return
        with self._lock:
            self._waiting.append(attempt)
        self._pump()

    def _pump(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or (self._capacity is not None and self._sent >= self._capacity):
                    return
                attempt = self._waiting.popleft()
                if not attempt.try_claim():
                    continue
                self._sent += 1
            try:
                ctx = detached_context(attempt.ctx)
                future = self._executor.submit(call_detached, attempt.fn, ctx, attempt.args)
            except Exception as error:  # noqa: BLE001 - shut down, or the call could not be pickled
                with self._lock:
                    self._sent -= 1
                attempt.fail_unstarted(ExecutorRefusedError(attempt.step, f"{type(error).__name__}: {error}"))
                continue
            attempt.handle = future
            attempt.started_at = attempt.clock.now()
            if attempt.notify_start:
                attempt.inbox.put((STARTED, attempt))
            future.add_done_callback(functools.partial(self._settled, attempt))

    def _settled(self, attempt: Attempt, future: concurrent.futures.Future[Any]) -> None:
        if self._in_process:
            if attempt.finished_at is not None or not attempt.claim:
                return  # it ran and posted its own outcome, or the loop withdrew it
            if future.cancelled():
                attempt.fail_unstarted(ExecutorRefusedError(attempt.step, "the executor cancelled it"))
            else:
                error = future.exception()
                attempt.fail_unstarted(error or ExecutorRefusedError(attempt.step, "it returned without running"))
            return
        self._release(attempt)
        if future.cancelled():
            attempt.fail_unstarted(ExecutorRefusedError(attempt.step, "the executor cancelled it"))
        else:
            error = future.exception()
            if error is None:
                attempt.value = future.result()
                attempt.ok = True
            else:
                attempt.error = error
            attempt.finished_at = attempt.clock.now()
            attempt.inbox.put((DONE, attempt))
        self._pump()

    def _release(self, attempt: Attempt) -> None:
        with self._lock:
            if attempt.handle is not None and attempt.handle is not _RELEASED:
                self._sent -= 1
                attempt.handle = _RELEASED

    def cancel(self, attempt: Attempt) -> None:
        """In-process contexts read ``attempt.cancel_reason`` directly; others cannot be told."""

    def withdraw(self, attempt: Attempt) -> bool:
        if self._in_process:
            return attempt.try_claim()
        return take_back(self._lock, self._waiting, attempt)

    def stop(self, attempt: Attempt) -> None:
        # Nothing can stop a call inside someone else's executor; the loop ignores its outcome.
        if self._in_process:
            if attempt.started_at is None:
                attempt.try_claim()
            return
        if self.withdraw(attempt):
            return
        future = attempt.handle
        if isinstance(future, concurrent.futures.Future):
            future.cancel()  # if it has not started; its done-callback then frees its slot
        # One that runs on keeps its slot until it ends (``_settled``): the next attempt
        # would otherwise wait in the pool behind it while its own timeout counts (SPEC §5).

    def where_it_hung(self, attempt: Attempt) -> str:
        """The stack of the thread running ``attempt`` (in-process executors only)."""
        if self._in_process:
            return attempt.where_it_hung()
        return "Where it hung: unknown (the attempt runs in an executor that cannot report its stack)"

    def check_capacity(self, step: str) -> None:
        """Nothing to check: the user's executor bounds its own work."""

    def close(self) -> None:
        """The executor is the user's to manage; attempts still waiting here never start."""
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for attempt in waiting:
            attempt.try_claim()


_RELEASED: Any = object()
