"""Compensation: undoing completed steps, latest first, once a run failed or stopped.

The compensator owns which completed steps have a compensation to run
(``pending``), which ones a resumed journal says already finished (``done``),
and the outcome lists. A compensation with no timeout runs in the caller's
thread when the step ran in this process; otherwise it is submitted to the
step's backend and awaited on the run's inbox through ``Timers.wait``.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from . import _logcontext as logcontext
from ._attempt import DONE, STARTED, Attempt, Message
from ._clock import Clock
from ._context import Context
from ._errors import StepTimeoutError
from ._events import EventSink
from ._recorder import RunRecorder
from ._results import CompensationResult, StepResult
from ._retry import backoff_delay
from ._state import StepRun, tell_cancel, with_compensation
from ._stop import StopScope
from ._timers import Timers

__all__ = ["Compensator"]


class Compensator:
    """The compensations of one run."""

    __slots__ = ("clock", "inbox", "timers", "scope", "pending", "done", "compensated", "not_compensated")

    def __init__(self, clock: Clock, inbox: queue.SimpleQueue[Message], timers: Timers, scope: StopScope) -> None:
        self.clock = clock
        self.inbox = inbox
        self.timers = timers
        self.scope = scope
        #: Completed steps that have a compensation, in any order.
        self.pending: list[StepRun] = []
        #: Steps whose compensation finished before a resumed run's process died.
        self.done: set[str] = set()
        self.compensated: list[str] = []
        self.not_compensated: list[str] = []

    def run_all(
        self,
        records: dict[str, StepResult],
        recorder: RunRecorder,
        events: EventSink,
        context: Callable[[str, int], Context],
    ) -> None:
        """Run the pending compensations, latest step first; a second Ctrl-C abandons the rest.

        Each outcome is written into ``records`` (and the journal) as it comes.
        """
        pending = sorted(self.pending, key=lambda sr: sr.index, reverse=True)
        if recorder.enabled:
            pending = [sr for sr in pending if sr.step.name not in self.done]
        for position, sr in enumerate(pending):
            if self.scope.interrupts >= 2:
                self.abandon(pending[position:], records)
                return
            recorder.compensation_started(sr.step.name)
            try:
                outcome = self.compensate(sr, events, context)
            except KeyboardInterrupt:
                recorder.compensation_finished(sr.step.name, None, None)
                self.abandon(pending[position:], records)
                events.emit(
                    "compensation_finished",
                    self.clock.now(),
                    step=sr.step.name,
                    group=sr.group,
                    status="abandoned",
                )
                return
            record = sr.record
            assert record is not None
            records[sr.step.name] = with_compensation(record, outcome)
            recorder.compensation_finished(sr.step.name, outcome, len(self.compensated) + len(self.not_compensated))
            if outcome.ok:
                self.compensated.append(sr.step.name)
            else:
                self.not_compensated.append(sr.step.name)

    def abandon(self, rest: list[StepRun], records: dict[str, StepResult]) -> None:
        """A second Ctrl-C stopped the compensations: ``rest`` never ran (or was cut short)."""
        for sr in rest:
            self.not_compensated.append(sr.step.name)
            record = sr.record
            if record is not None:
                records[sr.step.name] = with_compensation(record, CompensationResult("abandoned"))

    def compensate(self, sr: StepRun, events: EventSink, context: Callable[[str, int], Context]) -> CompensationResult:
        """Run ``sr``'s compensation, with its retries (on the step's value, or on the late
        value of a timed-out attempt that returned after it was abandoned)."""
        step = sr.step
        compensate = step.compensate
        record = sr.record
        assert compensate is not None and record is not None
        value = record.value if record.ok else record.late_value
        error: BaseException | None = None
        tries = step.compensate_retries + 1
        for number in range(1, tries + 1):
            started = self.clock.now()
            events.emit("compensation_started", started, step=step.name, group=sr.group, attempt=number)
            ok, error = self.call(sr, compensate, value, context(step.name, number))
            finished = self.clock.now()
            events.emit(
                "compensation_finished",
                finished,
                step=step.name,
                group=sr.group,
                attempt=number,
                status="compensated" if ok else "failed",
                error=error,
                started_at=started,
            )
            if ok:
                return CompensationResult("compensated", None, number)
            if number < tries:
                self.clock.sleep(backoff_delay(number))
        return CompensationResult("failed", error, tries)

    def call(
        self, sr: StepRun, compensate: Callable[..., Any], value: Any, ctx: Context
    ) -> tuple[bool, BaseException | None]:
        """One compensation attempt: ``(ok, error)``."""
        step = sr.step
        number = ctx.attempt
        backend = sr.backend
        if backend.in_process and step.compensate_timeout is None:
            self.scope.interruptible = True
            token = logcontext.enter(ctx.run_id, ctx.flow, ctx.step, ctx.attempt)
            try:  # in the caller's thread, one at a time
                compensate(ctx, value)
            except Exception as error:  # noqa: BLE001 - recorded; the other compensations still run
                return False, error
            finally:
                logcontext.leave(token)
                self.scope.interruptible = False
            return True, None
        attempt = Attempt(step.name, number, compensate, (value,), ctx, self.inbox, self.clock, True, owner=None)
        ctx._scope = attempt
        backend.submit(attempt)
        timeout = step.compensate_timeout
        deadline: float | None = None  # armed when the attempt starts
        while True:
            if self.scope.interrupts >= 2:  # a second Ctrl-C: stop this compensation, abandon the rest
                attempt.settled = True
                tell_cancel(backend, attempt, "the compensations were abandoned (second Ctrl-C)")
                backend.stop(attempt)
                raise KeyboardInterrupt
            now = self.clock.now()
            if deadline is not None and deadline <= now:
                attempt.settled = True
                tell_cancel(backend, attempt, f"its timeout of {timeout:g} s passed")
                backend.stop(attempt)
                assert timeout is not None
                return False, StepTimeoutError(step.name, timeout, number)
            received = self.timers.wait(self.inbox, deadline, now)
            if received is None:
                continue
            kind, item = received
            if item is not attempt:
                continue  # a late outcome from the stages, or an interrupt (handled by the handler)
            if kind == STARTED and timeout is not None and attempt.started_at is not None:
                deadline = attempt.started_at + timeout
            elif kind == DONE:
                attempt.settled = True
                return attempt.ok, attempt.error
