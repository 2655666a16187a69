"""Attempts the loop gave up on while a soft backend still runs them.

Python cannot stop a thread, and Dask or a user's executor cannot stop a task:
an attempt abandoned at its timeout (or when a run stops) may still finish its
side effect later. The loop records such attempts here; once the last stage
has settled it gives them up to the stop grace to end (``await_end``), so a
late completion of a timed-out step can still be compensated, and it names
the ones still running afterwards.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._attempt import DONE, Attempt, Message
from ._clock import Clock
from ._errors import StepTimeoutError
from ._maps import item_label
from ._results import StepStatus
from ._state import StepRun, with_late_value
from ._stop import STOP_GRACE, StopScope
from ._timers import Timers

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["AbandonedAttempts", "await_abandoned", "overran"]


class AbandonedAttempts:
    """The run's abandoned attempts: those still running, and those that ended since."""

    __slots__ = ("running", "ended")

    def __init__(self) -> None:
        self.running: dict[Attempt, StepRun] = {}
        self.ended: list[tuple[Attempt, StepRun]] = []

    def left_running(self, sr: StepRun, attempt: Attempt) -> None:
        """The loop gave up on ``attempt``; unless its backend killed it, it may still run."""
        if not sr.backend.kills and attempt.started_at is not None and sr.step.subflow is None:  # a child runs nowhere
            self.running[attempt] = sr

    def ended_late(self, attempt: Attempt) -> None:
        """An outcome arrived for an attempt the loop had given up on."""
        sr = self.running.pop(attempt, None)
        if sr is not None:
            self.ended.append((attempt, sr))

    def await_end(self, inbox: queue.SimpleQueue[Message], timers: Timers, clock: Clock, scope: StopScope) -> None:
        """Wait until every abandoned attempt ended, or the stop grace passed (counted
        from its start if a stop armed it), or a second Ctrl-C came."""
        if not self.running:
            return
        start = scope.grace_started
        deadline = (start if start is not None else clock.now()) + STOP_GRACE
        while self.running and scope.interrupts < 2:
            now = clock.now()
            if now >= deadline:
                return
            received = timers.wait(inbox, deadline, now)
            if received is not None and received[0] == DONE and received[1].settled:
                self.ended_late(received[1])

    def late_completions(self) -> Iterator[tuple[StepRun, Any]]:
        """``(step run, value)`` of each timed-out step whose last attempt returned after
        it was abandoned (whatever it returned, ``None`` included)."""
        for attempt, sr in self.ended:
            record = sr.record
            if attempt.ok and sr.attempt is attempt and record is not None and record.status is StepStatus.TIMED_OUT:
                yield sr, attempt.value

    def still_running(self) -> tuple[str, ...]:
        """The steps whose abandoned attempts have not ended, in the order they were left."""
        return tuple(dict.fromkeys(_label(sr) for sr in self.running.values()))


def await_abandoned(run: _Run) -> None:
    """Once the last stage settled, and before any compensation, give abandoned
    attempts up to the stop grace to end (SPEC §16). A late completion becomes its
    step's ``late_value`` (and is compensated if the run failed)."""
    abandoned = run.abandoned
    abandoned.await_end(run.inbox, run.timers, run.clock, run.scope)
    failed = run.error is not None or bool(run.scope.interrupts)
    for sr, value in abandoned.late_completions():
        record = sr.record
        assert record is not None
        sr.record = sr.run.records[record.name] = with_late_value(record, value)
        if sr.run is not run:
            continue  # a subflow's step: its frame has ended; the late value is only recorded
        if failed and sr.step.compensate is not None:
            run.compensator.pending.append(sr)
    abandoned.ended.clear()
    run.still_running = abandoned.still_running()
    if run.still_running:
        import logging  # only when something is left running

        logging.getLogger("flowpool").warning(
            "flowpool: run %s of %r: abandoned attempt(s) of %s still running after the stop grace; "
            "their side effects may still happen (use executor='process' to stop them for real)",
            run.run_id,
            run.name,
            ", ".join(map(repr, run.still_running)),
        )


def overran(run: _Run, sr: StepRun, attempt: Attempt) -> bool:
    """An attempt whose outcome the loop took only after its timeout had passed (the loop
    was late: a loaded machine, a slow listener) ran past it: it is ``TIMED_OUT`` as if
    its timer had fired first, and what it returned is a late value (SPEC §16)."""
    timeout = sr.step.timeout
    started, finished = attempt.started_at, attempt.finished_at
    if timeout is None or sr.child is not None or started is None or finished is None or finished - started <= timeout:
        return False
    error = StepTimeoutError(sr.step.name, timeout, attempt.number)
    error.add_note("Where it hung: unknown (it returned after its timeout had passed, before the loop stopped it)")
    if attempt.ok:
        run.abandoned.ended.append((attempt, sr))  # its late value (compensated if the run fails)
    run.on_outcome(sr, attempt, StepStatus.TIMED_OUT, None, error)
    return True


def _label(sr: StepRun) -> str:
    """A step's name, or ``"{map}[{key!r}]"`` for a map's item; inside a subflow, under its
    path from the top (``"sub/x"``, ``"orders['k']/x"``), as compensations name it."""
    label = _own_label(sr)
    frame = sr.run
    while frame is not None and frame.unit is not None:
        label = f"{_own_label(frame.unit)}/{label}"
        frame = frame.unit.run
    return label


def _own_label(sr: StepRun) -> str:
    return sr.step.name if sr.item_index is None else item_label(sr.step.name, sr.key if sr.key is not None else 0)
