"""Any ``concurrent.futures.Executor`` the user hands over, used as is and never shut down.

In-process executors (``ThreadPoolExecutor`` and subclasses) run the attempt
record itself, so ``ctx.cancelled`` and the real start time work as in
flowpool's own pool. Other executors (process pools, clusters) receive a
picklable call; the attempt's start is then known only as its submission, so
timeouts there count from submission.
"""

from __future__ import annotations

import concurrent.futures
import functools
from types import MappingProxyType
from typing import Any

from .._attempt import DONE, Attempt
from .._context import Context
from .._errors import FlowpoolError

__all__ = ["ExecutorBackend", "call_detached"]


class ExecutorRefusedError(FlowpoolError):
    """The user's executor did not run an attempt (it was shut down or cancelled it)."""

    def __init__(self, step: str, detail: str) -> None:
        self.step = step
        self.detail = detail
        super().__init__(f"the executor did not run step {step!r}: {detail}")


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
    )


class ExecutorBackend:
    """Submits attempts to a user-supplied executor; completion via done-callbacks."""

    kind = "executor"
    kills = False

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._in_process = isinstance(executor, concurrent.futures.ThreadPoolExecutor)
        self.in_process = self._in_process
        self.start_is_submission = not self._in_process

    def submit(self, attempt: Attempt) -> None:
        try:
            if self._in_process:
                future = self._executor.submit(attempt.execute)
            else:
                attempt.started_at = attempt.clock.now()
                ctx = detached_context(attempt.ctx)
                future = self._executor.submit(call_detached, attempt.fn, ctx, attempt.args)
        except Exception as error:  # noqa: BLE001 - shut down, or the call could not be pickled
            attempt.fail_unstarted(ExecutorRefusedError(attempt.step, f"{type(error).__name__}: {error}"))
            return
        attempt.handle = future
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
        if future.cancelled():
            if attempt.claim:  # not withdrawn by the loop
                attempt.fail_unstarted(ExecutorRefusedError(attempt.step, "the executor cancelled it"))
            return
        error = future.exception()
        if error is None:
            attempt.value = future.result()
            attempt.ok = True
        else:
            attempt.error = error
        attempt.finished_at = attempt.clock.now()
        attempt.inbox.put((DONE, attempt))

    def cancel(self, attempt: Attempt) -> None:
        """In-process contexts read ``attempt.cancel_reason`` directly: nothing to send."""

    def withdraw(self, attempt: Attempt) -> bool:
        if self._in_process:
            return attempt.try_claim()
        future = attempt.handle
        if future is not None and future.cancel():
            attempt.try_claim()
            return True
        return False

    def stop(self, attempt: Attempt) -> None:
        # Nothing can stop a call inside someone else's executor; the loop ignores its outcome.
        if self._in_process and attempt.started_at is None:
            attempt.try_claim()
        elif attempt.handle is not None:
            attempt.handle.cancel()

    def close(self) -> None:
        """The executor is the user's to manage: nothing to do."""
