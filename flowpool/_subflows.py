"""Subflows: a ``Flow`` run as a step (or as a map's item) by the same settle loop.

An attempt of a subflow step is a child run, a *frame* of the run's loop: it
shares the run's inbox, timers, clock and backends, and has its own stages,
records, policies, stop scope and compensations. The loop never waits inside
a child: a child's life is a generator (``_Run.frame_body``) that yields
whenever it waits, and the one loop in the caller's thread resumes it when a
message or a timer for it arrived (``_Run.wait_once`` routes each to its
frame). So a child holds no worker while its own steps run, and a map of
10,000 subflows on two workers cannot deadlock.

When a child's body ends, ``conclude`` turns its ``FlowResult`` into the
outcome of the parent's attempt and posts it to the inbox like a worker would:
the parent then retries, times out, fails fast and compensates it like any
step. A child that failed has compensated its own completed steps by then; a
completed child keeps its frame so that, when the parent fails later, its
compensations run as a unit at its place (``_compensator``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

from . import _logcontext as logcontext
from . import _stopping
from ._attempt import DONE, STARTED, Attempt
from ._errors import StepCancelledError, StepTimeoutError
from ._results import FlowStatus, StepStatus
from ._timers import TimerKind

if TYPE_CHECKING:
    from ._runner import _Run
    from ._state import StepRun

__all__ = ["SubflowBackend", "advance", "in_frame"]


class SubflowBackend:
    """The backend of subflow steps: submitting an attempt starts a child frame."""

    kind = "subflow"
    kills = False  # a stopped child ends itself (after compensating): its outcome still comes
    in_process = True

    def submit(self, attempt: Attempt) -> None:
        sr: StepRun = attempt.owner
        parent: _Run = sr.run
        sr.child = None
        attempt.started_at = parent.clock.now()
        if attempt.notify_start:
            attempt.inbox.put((STARTED, attempt))
        try:
            child_input = _child_input(parent, sr, attempt)
        except Exception as error:  # noqa: BLE001 - fails this attempt like an exception in a step
            error.add_note(f"raised by the 'input' of subflow step {sr.step.name!r}")
            attempt.fail_unstarted(error)
            return
        child = parent.child(sr, attempt, child_input)
        attempt.handle = child
        sr.child = child
        child.start()

    def withdraw(self, attempt: Attempt) -> bool:
        return False  # a child starts as soon as it is submitted

    def cancel(self, attempt: Attempt) -> None:
        if attempt.handle is not None:
            stop_from_outside(cast("_Run", attempt.handle), attempt.cancel_reason or "cancelled")

    def stop(self, attempt: Attempt) -> None:
        if attempt.handle is not None:
            abandon(cast("_Run", attempt.handle))

    def where_it_hung(self, attempt: Attempt) -> str:
        return "Where it hung: a subflow; its steps' results say which of them ran"

    def check_capacity(self, step: str) -> None:
        return None

    def close(self) -> None:
        return None


def _child_input(parent: _Run, sr: StepRun, attempt: Attempt) -> Any:
    """``input(ctx)`` when the step gives one, else the map's item, else the parent's input."""
    make = sr.step.input
    if make is not None:
        ctx = attempt.ctx
        token = logcontext.enter(ctx.run_id, ctx.flow, ctx.step, ctx.attempt, sr.key)
        try:
            return make(ctx)
        finally:
            logcontext.leave(token)
    if sr.item_index is not None:
        return sr.item
    return parent.input


def advance(frame: _Run) -> None:
    """Resume a child frame until it waits again; conclude it when its body ends."""
    body = frame.body
    if body is None:
        return
    try:
        next(body)
    except StopIteration:
        frame.body = None
        conclude(frame)


def conclude(frame: _Run) -> None:
    """The child ended: its result becomes the outcome of the parent's attempt."""
    result = frame.result = frame.build_result()
    attempt = frame.attempt
    assert attempt is not None
    step = attempt.step
    if result.status is FlowStatus.COMPLETED:
        attempt.ok = True
        attempt.value = dict(result.values)
    elif attempt.cancel_reason is not None:
        frame.verdict = StepStatus.CANCELLED
        attempt.error = StepCancelledError(step, attempt.cancel_reason)
    elif frame.scope.timed_out:
        assert frame.timeout is not None
        frame.verdict = StepStatus.TIMED_OUT
        attempt.error = StepTimeoutError(step, frame.timeout, attempt.number)
        attempt.error.add_note(f"subflow {frame.name!r} was stopped at its timeout and compensated itself")
    else:
        frame.verdict = StepStatus.FAILED  # whatever failed inside: the step failed
        attempt.error = result.error
    attempt.finished_at = frame.clock.now()
    attempt.inbox.put((DONE, attempt))


def stop_from_outside(frame: _Run, reason: str) -> None:
    """The parent stops a running child (fail fast, its run's timeout, Ctrl-C): the child
    stops like a run does, compensates itself and ends ``CANCELLED``."""
    if frame.body is None:
        return
    frame.scope.cancelled = True
    if frame.scope.reason is None:
        _stopping.stop(frame, reason)
    frame.top.woken.append(frame)


def abandon(frame: _Run) -> None:
    """The parent gave up on a child (a second Ctrl-C): what it runs is abandoned and it
    compensates nothing more."""
    body = frame.body
    if body is None:
        return
    frame.scope.reason = frame.scope.reason or "the subflow was abandoned"
    _stopping.abandon_running(frame)
    frame.body = None
    body.close()
    frame.result = frame.build_result()


def in_frame(frame: _Run, waits: Generator[float | None, None, Any]) -> Generator[None, None, Any]:
    """Drive ``waits`` (which yields when it next needs waking, or None) inside a frame:
    arm a wake-up timer for that time and yield to the loop. Returns what ``waits`` returns."""
    try:
        wake = next(waits)
        while True:
            if wake is not None:
                frame.timers.push(wake, TimerKind.WAKE, frame)
            yield
            wake = next(waits)
    except StopIteration as stop:
        return stop.value
