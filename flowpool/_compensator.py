"""Compensation: undoing completed steps, latest first, once a run failed or stopped.

The compensator owns which completed steps have a compensation to run
(``pending``; a map's completed items through ``maps``), which ones a resumed
journal says already finished (``done``), and the outcome lists.

Compensations run stage by stage, the latest stage first; within a stage the
latest step (or item) first. A stage whose ``compensate_concurrency`` is 1
runs them one at a time: a compensation with no timeout runs in the caller's
thread when the step ran in this process; otherwise it is submitted to the
step's backend and awaited on the run's inbox through ``Timers.wait``. A
stage that allows k > 1 keeps up to k of them submitted to its backend at
once, and all of them end before an earlier stage's compensations start.
"""

from __future__ import annotations

import heapq
import itertools
import queue
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from . import _logcontext as logcontext
from ._attempt import DONE, STARTED, Attempt, Message
from ._clock import Clock
from ._context import Context, ItemCall
from ._errors import StepTimeoutError
from ._events import EventSink
from ._recorder import RunRecorder
from ._results import CompensationResult, StepResult
from ._retry import backoff_delay
from ._state import StepRun, tell_cancel, with_compensation
from ._stop import StopScope
from ._timers import Timers
from ._undo_plan import Job, MapCompensation, Plan, plan, refresh_units

if TYPE_CHECKING:
    from ._runner import _Run
    from ._tracing import RunTracer, Span


__all__ = ["Compensator"]


class Compensator:
    """The compensations of one run."""

    __slots__ = (
        "clock",
        "inbox",
        "timers",
        "scope",
        "pending",
        "maps",
        "concurrency",
        "done",
        "compensated",
        "not_compensated",
        "records",
        "spans",
        "run",
        "mailbox",
        "units",
    )

    def __init__(
        self, clock: Clock, inbox: queue.SimpleQueue[Message], timers: Timers, scope: StopScope, run: _Run
    ) -> None:
        self.clock = clock
        self.inbox = inbox
        self.timers = timers
        self.scope = scope
        #: Completed steps that have a compensation, in any order.
        self.pending: list[StepRun] = []
        #: Maps with completed items that have a compensation.
        self.maps: list[MapCompensation] = []
        #: Group name → its ``compensate_concurrency`` (1 when absent).
        self.concurrency: dict[str, int] = {}
        #: Steps whose compensation finished before a resumed run's process died.
        self.done: set[str] = set()
        self.compensated: list[str] = []
        self.not_compensated: list[str] = []
        #: The run's step records, where each compensation's outcome is written.
        self.records: dict[str, StepResult] = {}
        #: ``(tracer, stage name → stage span)`` when the program traces (``_tracing``).
        self.spans: tuple[RunTracer, dict[str, Span]] | None = None
        #: The run (or subflow frame) these compensations belong to.
        self.run = run
        #: A subflow frame's compensation messages, routed here by the loop.
        self.mailbox: deque[Message] = deque()
        #: Completed subflows compensated as units, with how to put back their new result.
        self.units: list[tuple[_Run, Callable[[Any], None]]] = []

    def undoable(self) -> bool:
        """Whether a completed run (a subflow) has anything to undo."""
        return bool(self.pending or self.maps)

    def run_all(
        self,
        records: dict[str, StepResult],
        recorder: RunRecorder,
        events: EventSink,
        context: Callable[[str, int], Context],
    ) -> None:
        """Run the pending compensations, latest stage first; a second Ctrl-C abandons the rest.

        Each outcome is written into ``records`` (or the map's ledger) and the
        journal as it comes.
        """
        self.records = records
        stages = plan(self, recorder.enabled)

        finished = self.journaled
        try:
            for number, (_, k, jobs) in enumerate(stages):
                if k > 1:
                    completed = self.run_together(jobs, k, recorder, events, context, finished)
                else:
                    completed = self.run_in_turn(jobs, recorder, events, context, finished)
                if not completed:
                    self.give_up_stages(stages[number + 1 :])
                    return
        finally:
            refresh_units(self)

    def run_in_frame(self) -> Generator[None, None, None]:
        """A subflow frame's own compensations, latest stage first: every one is handed
        to its backend (never run in the caller's thread, which the frame shares with the
        rest of the run), up to the stage's ``compensate_concurrency`` at once."""
        from ._subflows import in_frame  # the subflow module imports the runner's pieces

        run = self.run
        self.records = run.records
        stages = plan(self, False)
        try:
            for number, (_, k, jobs) in enumerate(stages):
                waits = self.together(jobs, k, run.recorder, run.events, run.context, self.journaled)
                completed = yield from in_frame(run, waits)
                if not completed:
                    self.give_up_stages(stages[number + 1 :])
                    return
        finally:
            refresh_units(self)

    def journaled(self, job: Job, outcome: CompensationResult) -> None:
        """A compensation finished: note its outcome and journal it (with its position)."""
        self.note(job, outcome)
        position = len(self.compensated) + len(self.not_compensated) - 1
        self.run.recorder.compensation_finished(job.label, outcome, position)

    def give_up_stages(self, stages: Plan) -> None:
        """A second Ctrl-C abandoned the compensations: every job of ``stages`` is given up."""
        for _, _, jobs in stages:
            for job in jobs:
                self.give_up(job)

    def note(self, job: Job, outcome: CompensationResult) -> None:
        """Write a finished compensation's outcome where its step's (or item's) record is."""
        sr = job.sr
        if sr is not None:
            record = sr.record
            assert record is not None
            sr.record = sr.run.records[job.step.name] = with_compensation(record, outcome)
        elif job.ledger is not None and job.index is not None:
            job.ledger.compensations[job.index] = outcome
        ok = outcome.ok
        (self.compensated if ok else self.not_compensated).append(job.label)
        for frame, label in job.chain:
            (frame.compensator.compensated if ok else frame.compensator.not_compensated).append(label)

    def give_up(self, job: Job) -> None:
        """A second Ctrl-C stopped the compensations before ``job``'s ended: it is abandoned."""
        abandoned = CompensationResult("abandoned")
        sr = job.sr
        if sr is not None and sr.record is not None:
            sr.record = sr.run.records[job.step.name] = with_compensation(sr.record, abandoned)
        elif job.ledger is not None and job.index is not None:
            job.ledger.compensations[job.index] = abandoned
        self.not_compensated.append(job.label)
        for frame, label in job.chain:
            frame.compensator.not_compensated.append(label)

    def run_in_turn(
        self,
        jobs: Iterator[Job],
        recorder: RunRecorder,
        events: EventSink,
        context: Callable[[str, int], Context],
        finished: Callable[[Job, CompensationResult], None],
    ) -> bool:
        """One stage's compensations one at a time; False if a second Ctrl-C abandoned the rest."""
        for job in jobs:
            if self.scope.interrupts >= 2:
                self.give_up(job)
                for rest in jobs:
                    self.give_up(rest)
                return False
            recorder.compensation_started(job.label)
            try:
                outcome = self.compensate(job, events, context)
            except KeyboardInterrupt:
                recorder.compensation_finished(job.label, None, None)
                self.give_up(job)
                for rest in jobs:
                    self.give_up(rest)
                events.emit("compensation_finished", self.clock.now(), status="abandoned", **job.fields())
                return False
            finished(job, outcome)
        return True

    def run_together(
        self,
        jobs: Iterator[Job],
        k: int,
        recorder: RunRecorder,
        events: EventSink,
        context: Callable[[str, int], Context],
        finished: Callable[[Job, CompensationResult], None],
    ) -> bool:
        """One stage's compensations, up to ``k`` at once on their backends, waiting on the
        run's inbox; False if a second Ctrl-C abandoned the rest."""
        waits = self.together(jobs, k, recorder, events, context, finished)
        try:
            wake = next(waits)
            while True:
                received = self.timers.wait(self.inbox, wake, self.clock.now())
                if received is not None:
                    self.mailbox.append(received)
                wake = next(waits)
        except StopIteration as stop:
            completed: bool = stop.value
            return completed

    def together(
        self,
        jobs: Iterator[Job],
        k: int,
        recorder: RunRecorder,
        events: EventSink,
        context: Callable[[str, int], Context],
        finished: Callable[[Job, CompensationResult], None],
    ) -> Generator[float | None, None, bool]:
        """One stage's compensations, up to ``k`` at once on their backends; each retried
        per ``compensate_retries`` after a backoff that holds no worker. Yields the time
        it next needs waking at (or None) whenever it waits for ``mailbox``; returns
        False if a second Ctrl-C abandoned the rest."""
        running: dict[Attempt, tuple[Job, float | None]] = {}  # attempt → (job, deadline)
        spans: dict[Attempt, Span] = {}  # attempt → its span, when the program traces
        retries: list[tuple[float, int, Job, int]] = []  # (when, sequence, job, next attempt number)
        sequence = itertools.count()
        exhausted = False
        clock = self.clock
        while True:
            if self.scope.interrupts >= 2:
                for attempt, (job, _) in running.items():
                    attempt.settled = True
                    tell_cancel(job.backend, attempt, "the compensations were abandoned (second Ctrl-C)")
                    job.backend.stop(attempt)
                    _finish_span(spans.pop(attempt, None), "abandoned", None, attempt, clock.now())
                    events.emit("compensation_finished", clock.now(), status="abandoned", **job.fields())
                    recorder.compensation_finished(job.label, None, None)
                    self.give_up(job)
                for _, _, job, _ in sorted(retries):
                    self.give_up(job)
                for job in jobs:
                    self.give_up(job)
                return False
            now = clock.now()
            # One at a time (k == 1) is one compensation at a time, its retries included, as
            # in run_in_turn; with k > 1 one waiting out its backoff leaves its place to others.
            while True:
                busy = len(running) + (len(retries) if k == 1 else 0)
                if retries and retries[0][0] <= now and len(running) < k:
                    _, _, job, number = heapq.heappop(retries)
                elif busy < k and not exhausted:
                    next_job = next(jobs, None)
                    if next_job is None:
                        exhausted = True
                        continue
                    job, number = next_job, 1
                    recorder.compensation_started(job.label)
                else:
                    break
                events.emit("compensation_started", now, attempt=number, **job.fields())
                submitted = self.submit(job, number, context)
                running[submitted] = (job, None)
                span = self.start_span(job, number, now)
                if span is not None:
                    spans[submitted] = span
            if not running and not retries and exhausted:
                return True
            for attempt, (job, deadline) in list(running.items()):
                if deadline is not None and deadline <= now:
                    del running[attempt]
                    attempt.settled = True
                    timeout = job.step.compensate_timeout
                    assert timeout is not None
                    tell_cancel(job.backend, attempt, f"its timeout of {timeout:g} s passed")
                    job.backend.stop(attempt)
                    error = StepTimeoutError(job.step.name, timeout, attempt.number)
                    _finish_span(spans.pop(attempt, None), "failed", error, attempt, now)
                    self._attempt_ended(job, attempt, False, error, events, retries, sequence, finished)
            wake = [deadline for _, deadline in running.values() if deadline is not None]
            if retries and len(running) < k:  # a due retry with no free slot waits for one to end
                wake.append(retries[0][0])
            try:
                yield min(wake) if wake else None
            except GeneratorExit:  # the frame was abandoned: so are its running compensations
                for attempt, (job, _) in running.items():
                    attempt.settled = True
                    tell_cancel(job.backend, attempt, "the subflow was abandoned")
                    job.backend.stop(attempt)
                    _finish_span(spans.pop(attempt, None), "abandoned", None, attempt, clock.now())
                raise
            mailbox = self.mailbox
            while mailbox:
                kind, item = mailbox.popleft()
                entry = running.get(item) if isinstance(item, Attempt) else None
                if entry is None:
                    continue  # a late outcome from the stages, or an interrupt (handled by the handler)
                job, deadline = entry
                timeout = job.step.compensate_timeout
                if kind == STARTED and timeout is not None and item.started_at is not None:
                    running[item] = (job, item.started_at + timeout)
                elif kind == DONE:
                    del running[item]
                    item.settled = True
                    end = item.finished_at if item.finished_at is not None else clock.now()
                    _finish_span(spans.pop(item, None), "compensated" if item.ok else "failed", item.error, item, end)
                    self._attempt_ended(job, item, item.ok, item.error, events, retries, sequence, finished)

    def _attempt_ended(
        self,
        job: Job,
        attempt: Attempt,
        ok: bool,
        error: BaseException | None,
        events: EventSink,
        retries: list[tuple[float, int, Job, int]],
        sequence: Iterator[int],
        finished: Callable[[Job, CompensationResult], None],
    ) -> None:
        now = self.clock.now()
        number = attempt.number
        events.emit(
            "compensation_finished",
            now,
            attempt=number,
            status="compensated" if ok else "failed",
            error=error,
            started_at=attempt.started_at,
            **job.fields(),
        )
        if ok:
            finished(job, CompensationResult("compensated", None, number))
        elif number <= job.step.compensate_retries:
            heapq.heappush(retries, (now + backoff_delay(number), next(sequence), job, number + 1))
        else:
            finished(job, CompensationResult("failed", error, number))

    def submit(self, job: Job, number: int, context: Callable[[str, int], Context]) -> Attempt:
        """Hand one compensation attempt of ``job`` to its backend."""
        compensate = job.step.compensate
        assert compensate is not None
        ctx = self._context(job, number, context)
        fn: Callable[..., Any] = compensate
        args: tuple[Any, ...] = (job.value,)
        if job.index is not None and not job.backend.in_process:
            fn, args = ItemCall(compensate), (job.value, job.item, job.index, job.key)
        # A subflow frame's compensation messages are routed back here by the loop.
        owner = self if self.run.top is not self.run else None
        attempt = Attempt(job.step.name, number, fn, args, ctx, self.inbox, self.clock, True, owner=owner)
        ctx._scope = attempt
        job.backend.submit(attempt)
        return attempt

    @staticmethod
    def _context(job: Job, number: int, context: Callable[[str, int], Context]) -> Context:
        ctx = (job.context or context)(job.step.name, number)
        if job.index is not None:
            ctx.item, ctx.index, ctx.key = job.item, job.index, job.key
        return ctx

    def compensate(self, job: Job, events: EventSink, context: Callable[[str, int], Context]) -> CompensationResult:
        """Run ``job``'s compensation, with its retries."""
        step = job.step
        compensate = step.compensate
        assert compensate is not None
        error: BaseException | None = None
        tries = step.compensate_retries + 1
        fields = job.fields()
        for number in range(1, tries + 1):
            started = self.clock.now()
            events.emit("compensation_started", started, attempt=number, **fields)
            span = self.start_span(job, number, started)
            try:
                ok, error = self.call(job, compensate, number, context)
            except KeyboardInterrupt:  # a second Ctrl-C abandoned it: its span still ends
                if span is not None:
                    span.finish("abandoned", end_time=self.clock.now())
                raise
            finished = self.clock.now()
            if span is not None:
                span.finish("compensated" if ok else "failed", error, end_time=finished)
            events.emit(
                "compensation_finished",
                finished,
                attempt=number,
                status="compensated" if ok else "failed",
                error=error,
                started_at=started,
                **fields,
            )
            if ok:
                return CompensationResult("compensated", None, number)
            if number < tries:
                self.back_off(backoff_delay(number))
        return CompensationResult("failed", error, tries)

    def start_span(self, job: Job, number: int, started: float) -> Span | None:
        """A compensation attempt's span, under its stage's, when the program traces."""
        if self.spans is None:
            return None
        tracer, stage_spans = self.spans
        parent = stage_spans.get(job.group or job.step.name)
        if parent is None:
            return None
        return tracer.start_compensation(parent, job.step.name, number, job.key, start_time=started)

    def back_off(self, seconds: float) -> None:
        """Wait before a compensation's retry; a second Ctrl-C ends the wait and abandons
        the compensations (``KeyboardInterrupt``), as it does a running compensation."""
        if self.scope.interrupts >= 2:
            raise KeyboardInterrupt
        self.scope.interruptible = True
        try:
            self.clock.sleep(seconds)
        finally:
            self.scope.interruptible = False
        if self.scope.interrupts >= 2:
            raise KeyboardInterrupt

    def call(
        self, job: Job, compensate: Callable[..., Any], number: int, context: Callable[[str, int], Context]
    ) -> tuple[bool, BaseException | None]:
        """One compensation attempt: ``(ok, error)``."""
        step = job.step
        backend = job.backend
        if backend.in_process and step.compensate_timeout is None:
            ctx = self._context(job, number, context)
            self.scope.interruptible = True
            token = logcontext.enter(ctx.run_id, ctx.flow, ctx.step, ctx.attempt, ctx.key, ctx._path)
            try:  # in the caller's thread, one at a time
                compensate(ctx, job.value)
            except Exception as error:  # noqa: BLE001 - recorded; the other compensations still run
                return False, error
            finally:
                logcontext.leave(token)
                self.scope.interruptible = False
            return True, None
        attempt = self.submit(job, number, context)
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


def _finish_span(span: Span | None, status: str, error: BaseException | None, attempt: Attempt, end: float) -> None:
    """End a concurrent compensation attempt's span (``Compensator.start_span``), if any."""
    if span is not None:
        span.finish(status, error, started_at=attempt.started_at, end_time=end)
