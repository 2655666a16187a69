"""Subflows: a ``Flow`` run as a step (or as a map's item) by the same settle loop.

An attempt of a subflow step is a child run, a *frame* of the run's loop: it
shares the run's inbox, timers, clock and backends, and has its own stages,
records, policies, stop scope and compensations. The loop never waits inside
a child: a child's life is a generator (``frame_body``) that yields
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

from . import _always, _stopping
from . import _logcontext as logcontext
from ._attempt import DONE, STARTED, Attempt
from ._errors import StepCancelledError, StepTimeoutError
from ._finish import run_result
from ._maps import item_label
from ._record import replace
from ._recorder import RunRecorder
from ._results import CompensationResult, FlowResult, FlowStatus, StepResult, StepStatus
from ._sequence import run_stages
from ._timers import TimerKind
from ._undo_plan import plan, refresh_units

if TYPE_CHECKING:
    from ._journal import RecordedRun
    from ._journal_writer import JournalRecorder
    from ._runner import _Run
    from ._state import StepRun

__all__ = ["ScopedRecorder", "SubflowBackend", "advance", "in_frame", "scoped_view"]


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
        child = new_child(parent, sr, attempt, child_input)
        attempt.handle = child
        sr.child = child
        start(child)

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


def new_child(parent: _Run, sr: StepRun, attempt: Attempt, child_input: Any) -> _Run:
    """A frame for one attempt of the subflow step ``sr``."""
    flow = sr.step.subflow
    assert flow is not None
    child = type(parent)(flow, child_input, None, None, sr.step.timeout, None, parent.clock, parent=parent)
    child.unit, child.attempt = sr, attempt
    path = (*parent.events.prefix, sr.step.name)
    tags = None if sr.item_index is None else {"item": sr.key, "index": sr.item_index}
    child.events = parent.events.nested(path, tags or parent.events.tags)
    journal = parent.recorder.journal
    if journal is not None:  # the child's records go to the run's journal, under its path
        label = sr.step.name if sr.item_index is None else item_label(sr.step.name, sr.key or 0)
        prefix = f"{getattr(parent.recorder, 'prefix', '')}{label}/"
        # A retried or resumed child may complete again what an earlier attempt undid.
        again = attempt.number > 1 or parent.resumed is not None or getattr(parent.recorder, "again", False)
        child.recorder = ScopedRecorder(journal, parent.run_id, prefix, again)
        if parent.resumed is not None and prefix not in parent.restoring:
            parent.restoring.add(prefix)  # a resumed run's first attempt of it continues inside it
            child.resumed = scoped_view(parent.resumed, prefix)
    else:
        child.recorder = RunRecorder(None, parent.run_id)
    if parent.tracer is not None:
        child.run_span = parent.spans.get(attempt)  # the child's stages nest under the attempt
        child.spans = parent.spans
        child.compensator.spans = (parent.tracer, child.stage_spans)
    return child


def start(frame: _Run) -> None:
    """Start a subflow frame: it runs until it first waits."""
    frame.started_at = frame.clock.now()
    if frame.timeout is not None:
        frame.deadline = frame.timers.push(frame.started_at + frame.timeout, TimerKind.DEADLINE, frame)
    frame.body = frame_body(frame)
    advance(frame)


def frame_body(frame: _Run) -> Generator[None, None, None]:
    """A subflow's whole life: its stages, its own compensations, its always-stages."""
    yield from run_stages(frame)
    if frame.error is not None:
        frame.scope.compensating = True
        yield from frame.compensator.run_in_frame()
    yield from _always.run_always(frame)


def _child_input(parent: _Run, sr: StepRun, attempt: Attempt) -> Any:
    """``input(ctx)`` when the step gives one, else the map's item, else the parent's input."""
    make = sr.step.input
    if make is not None:
        ctx = attempt.ctx
        token = logcontext.enter(ctx.run_id, ctx.flow, ctx.step, ctx.attempt, sr.key, ctx._path)
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
    if frame.deadline is not None:  # its run timeout no longer holds it (nor its frame)
        frame.timers.drop(frame.deadline)
        frame.deadline = None
    result = frame.result = run_result(frame)
    attempt = frame.attempt
    assert attempt is not None
    step = attempt.step
    if result.status is FlowStatus.COMPLETED:
        attempt.ok = True
        attempt.value = dict(result.values)
        frame.attempt = None  # kept to be undone as a unit, it holds no attempt (contexts, tickets)
        for sr in frame.compensator.pending:
            sr.attempt = sr.driver = None
    elif frame.scope.cancelled:
        frame.verdict = StepStatus.CANCELLED
        attempt.error = StepCancelledError(step, attempt.cancel_reason or "cancelled")
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
    stops like a run does, compensates itself and ends ``CANCELLED``. A child that had
    already failed (it is compensating) or whose stages are over (in its always-stages)
    has settled its outcome: what it runs is told to stop, and it ends with that outcome
    (completed, it is undone as a unit if the parent fails; SPEC §5)."""
    if frame.body is None:
        return
    if frame.error is None and frame.always_from is None:
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
    if frame.deadline is not None:
        frame.timers.drop(frame.deadline)
        frame.deadline = None
    # Its compensations are abandoned too: each one that had not ended is named (SPEC §5).
    compensator = frame.compensator
    ended = {*compensator.compensated, *compensator.not_compensated}
    for _, _, jobs in plan(compensator, False):
        for job in jobs:
            if job.label not in ended:
                compensator.give_up(job)
    refresh_units(compensator)
    frame.result = run_result(frame)


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


class ScopedRecorder(RunRecorder):
    """A subflow's journal writes: its steps, groups, maps and compensations named under
    its path from the top (``"sub/x"``, ``"orders['k']/x"``), in the run's journal. The
    run's own records (its start, failure and end) are the top run's to write.

    ``again``: the child is a retry, or runs in a resumed run (or inside such a child), so
    an earlier attempt of it may have undone what it completes: each completion clears the
    compensation recorded under its name, in the same transaction (else resume would take
    it as undone and run it once more)."""

    __slots__ = ("prefix", "again")

    def __init__(self, journal: JournalRecorder, run_id: str, prefix: str, again: bool = False) -> None:
        super().__init__(journal, run_id)
        self.prefix = prefix
        self.again = again
        self.failure_recorded = True  # a child's failure is its step's, not the run's

    def attempt_started(self, step: str, attempt: int) -> None:
        super().attempt_started(self.prefix + step, attempt)

    def attempt_finished(self, attempt: Attempt, status: StepStatus) -> None:
        journal = self.journal
        if journal is not None:
            started, finished = attempt.started_at, attempt.finished_at
            seconds = finished - started if started is not None and finished is not None else None
            journal.attempt_finished(self.run_id, self.prefix + attempt.step, attempt.number, status.value, seconds)

    def step_finished(self, record: StepResult) -> None:
        name = self.prefix + record.name
        super().step_finished(replace(record, name=name, subflow=None))
        if self.again and self.journal is not None and record.status is StepStatus.COMPLETED:
            self.journal.compensation_forgotten(self.run_id, name)

    def item_finished(self, map_name: str, index: int, key: str | int, status: StepStatus, *row: Any) -> None:
        name = self.prefix + map_name
        super().item_finished(name, index, key, status, *row)
        if self.again and self.journal is not None and status is StepStatus.COMPLETED:
            self.journal.compensation_forgotten(self.run_id, item_label(name, key))

    def group_finished(self, group: str, status: str) -> None:
        super().group_finished(self.prefix + group, status)

    def compensation_started(self, step: str) -> None:
        super().compensation_started(self.prefix + step)

    def compensation_finished(self, step: str, outcome: CompensationResult | None, position: int | None) -> None:
        super().compensation_finished(self.prefix + step, outcome, position)

    def end(self, result: FlowResult) -> None:
        return None


def scoped_view(recorded: RecordedRun, prefix: str) -> RecordedRun:
    """What the journal recorded inside the subflow at ``prefix``, named as the child names
    it: a resumed run's child restores its completed steps and items instead of running
    them again. Steps and map items the child had undone (it failed and compensated
    itself) run again."""
    import dataclasses  # a journal's RecordedRun is a dataclass; the journal imported it already

    size = len(prefix)
    undone = {name for name, (state, _, _) in recorded.compensations.items() if state == "compensated"}
    return dataclasses.replace(
        recorded,
        phase="running",
        outcome=None,
        failed_stage=None,
        error=None,
        steps={
            name[size:]: step for name, step in recorded.steps.items() if name.startswith(prefix) and name not in undone
        },
        groups={name[size:]: status for name, status in recorded.groups.items() if name.startswith(prefix)},
        compensations={},
        compensation_order=(),
        items={
            name[size:]: [row for row in rows if item_label(name, row[1]) not in undone]
            for name, rows in recorded.items.items()
            if name.startswith(prefix)
        },
    )
