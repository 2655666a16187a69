"""Stopping work in the settle loop: cancelling a stage, withdrawing, abandoning.

A stage is cancelled when its group fails fast, its map stops early or its
items could not be produced: nothing new starts, unstarted attempts are taken
back, running ones see ``ctx.cancelled``. A run is stopped by its timeout or
Ctrl-C: the same, plus killing what a backend can kill and, for the rest, the
stop grace (``STOP_GRACE``) after which running attempts are abandoned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._attempt import Attempt
from ._errors import StepCancelledError
from ._results import StepStatus
from ._state import StageRun, StepRun, StepState, tell_cancel
from ._stop import STOP_GRACE
from ._timers import TimerKind
from ._tracing import end_attempt_span

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["abandon_running", "cancel_stage", "on_interrupt", "stop", "withdrawn"]


def cancel_stage(run: _Run, st: StageRun, reason: str, withdraw: bool = True) -> None:
    """No new work in this stage; running attempts see ``ctx.cancelled``. Attempts a
    backend still holds unstarted are taken back, unless ``withdraw`` is False (a
    map's items that were handed over count as started)."""
    st.cancel_reason = reason
    for sr in tuple(st.members):
        if sr.state == StepState.PENDING:
            run.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, reason))
        elif sr.state == StepState.BACKOFF:
            run.finalize(st, sr, sr.last_status, None, sr.last_error)
        elif sr.state == StepState.RUNNING:
            attempt = sr.attempt
            assert attempt is not None
            tell_cancel(sr.backend, attempt, reason)
            if withdraw and sr.backend.withdraw(attempt):
                withdrawn(run, st, sr, attempt, reason)


def withdrawn(run: _Run, st: StageRun, sr: StepRun, attempt: Attempt, reason: str) -> None:
    """``attempt`` never started and never will: it does not count as an attempt."""
    attempt.settled = True
    sr.attempts -= 1
    if run.spans:
        end_attempt_span(run, attempt, StepStatus.CANCELLED, None)
    if sr.attempts:
        run.finalize(st, sr, sr.last_status, None, sr.last_error)
    else:
        run.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, reason))


def stop(run: _Run, reason: str) -> None:
    """Stop the run: nothing new starts, running work is killed or told to stop."""
    run.scope.reason = reason
    st = run.stage
    if st is None:
        return
    if st.cancel_reason is None:
        cancel_stage(run, st, reason)
    else:
        for sr in st.members:
            if sr.state == StepState.RUNNING and sr.attempt is not None:
                tell_cancel(sr.backend, sr.attempt, reason)
    soft = False
    for sr in tuple(st.members):
        if sr.state != StepState.RUNNING or sr.child is not None:
            continue  # a subflow stops itself, with a grace of its own for its soft work
        if sr.backend.kills:
            abandon(run, st, sr, reason)
        else:
            soft = True
    if soft and not run.scope.grace_armed:
        run.scope.grace_armed = True
        run.scope.grace_started = now = run.clock.now()
        run.timers.push(now + STOP_GRACE, TimerKind.GRACE, run)


def abandon(run: _Run, st: StageRun, sr: StepRun, reason: str) -> None:
    attempt = sr.attempt
    assert attempt is not None
    tell_cancel(sr.backend, attempt, reason)
    if sr.backend.withdraw(attempt):
        withdrawn(run, st, sr, attempt, reason)
        return
    attempt.settled = True
    sr.backend.stop(attempt)
    run.abandoned.left_running(sr, attempt)
    if attempt.finished_at is None:
        attempt.finished_at = run.clock.now()
    if run.spans:
        end_attempt_span(run, attempt, StepStatus.CANCELLED, StepCancelledError(sr.step.name, reason))
    run.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, reason))


def abandon_running(run: _Run, subflows: bool = True) -> None:
    """Give up on the stage's running attempts; running subflows too unless ``subflows``
    is False (the stop grace passed: a subflow's own grace abandons its soft work, and it
    still compensates itself)."""
    st = run.stage
    if st is None or run.scope.reason is None:
        return
    for sr in tuple(st.members):
        if sr.state == StepState.RUNNING and (subflows or sr.child is None):
            abandon(run, st, sr, run.scope.reason)


def on_interrupt(run: _Run) -> None:
    if run.scope.reason is None:
        stop(run, "the run was interrupted")
    else:
        abandon_running(run)  # a second Ctrl-C: no more grace
