"""Step and group stages in the settle loop: running one, skipping one, its verdict.

A stage of one step is run as a group of one. ``run_stage`` makes the stage's
``StageRun``, evaluates its members' conditions (``when``), starts members up
to the group's concurrency cap, and lets the loop (``_Run.wait_once``) settle
them; ``settle_verdict`` then applies the group's policy (``_policy``).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from . import _logcontext as logcontext
from ._definition import Always, Group, Step
from ._errors import StepCancelledError
from ._policy import stage_verdict
from ._results import GroupResult, GroupStatus, StepResult, StepStatus, count_statuses
from ._state import StageRun, StepRun, StepState

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["run_stage", "skip_stage"]


def skip_stage(run: _Run, stage: Step | Group, members: tuple[Step, ...]) -> None:
    group = stage.name if isinstance(stage, Group) else None
    now = run.clock.now()
    for step in members:
        run.records[step.name] = StepResult(step.name, StepStatus.SKIPPED, group=group)
        run.events.emit("step_finished", now, step=step.name, group=group, status=StepStatus.SKIPPED)
    if isinstance(stage, Group):
        names = tuple(m.name for m in members)
        counts = {StepStatus.SKIPPED: len(members)}
        run.groups[stage.name] = GroupResult(stage.name, GroupStatus.SKIPPED, names, counts)
        run.events.emit("group_finished", now, group=stage.name, status=GroupStatus.SKIPPED)


def run_stage(run: _Run, stage: Step | Group, members: tuple[Step, ...], index: int) -> Iterator[None]:
    """Run a step or group stage to its verdict, yielding whenever the loop must wait."""
    group = stage if isinstance(stage, Group) else None
    group_name = group.name if group is not None else None
    runs = [
        StepRun(step, index + offset, group_name, run.backend_for(step), run) for offset, step in enumerate(members)
    ]
    st = StageRun(stage.name, group, runs)
    run.stage = st
    start_stage_span(run, stage.name)
    if run.resumed is not None:
        from ._resume import preload_completed

        preload_completed(run, st)
    for sr in runs:
        if sr.step.when is not None and sr.state == StepState.PENDING:
            check_condition(run, st, sr)
    while st.unsettled:
        if st.waiting:
            start_waiting(run, st)
            if not st.unsettled:
                break
        yield
    run.stage = None
    settle_verdict(run, st)
    end_stage_span(run, stage.name, run.groups[stage.name].status if group is not None else None)
    if run.error is not None:  # journaled in the same transaction as the stage's verdict
        run.recorder.run_failed(run.scope.failure_outcome(), run.failed_stage, run.error)
    run.recorder.flush()  # before any later stage starts


def check_condition(run: _Run, st: StageRun, sr: StepRun) -> None:
    """Evaluate a step's ``when`` as its stage starts: false skips it; raising fails it."""
    step = sr.step
    when = step.when
    assert when is not None
    ctx = run.context(step.name, 1)
    token = logcontext.enter(ctx.run_id, ctx.flow, step.name, 1, None, ctx._path)
    try:
        go = bool(when(ctx))
    except Exception as error:  # noqa: BLE001 - fails this step like an exception in the step
        error.add_note(f"raised by the 'when' condition of step {step.name!r}")
        run.finalize(st, sr, StepStatus.FAILED, None, error)
        return
    finally:
        logcontext.leave(token)
    if not go:
        run.finalize(st, sr, StepStatus.SKIPPED, None, None)


def settle_verdict(run: _Run, st: StageRun) -> None:
    records = [sr.record for sr in st.members if sr.record is not None]
    if any(record.status is StepStatus.COMPLETED for record in records):
        for record in records:
            if record.status is StepStatus.COMPLETED:
                run.values[record.name] = record.value
        # A fresh snapshot per stage: an abandoned attempt that still holds an older
        # view never sees the values of its siblings or of later stages.
        run.values_view = MappingProxyType(dict(run.values))
    only = next(iter(st.members)).step if st.group is None else None  # a stage of one step
    if isinstance(only, Always):
        note_always_failure(run, records[0])  # never the flow's failure
        return
    optional = only is not None and only.optional
    verdict, error = stage_verdict(st.name, st.group, records, run.scope.stop_error(), optional=optional)
    if st.group is not None and verdict is not None:
        name = st.group.name
        counts = count_statuses(record.status for record in records)
        run.groups[name] = GroupResult(name, verdict, tuple(m.name for m in st.group.members), counts)
        run.events.emit("group_finished", run.clock.now(), group=name, status=verdict)
        run.recorder.group_finished(name, verdict.value)
    if error is not None:
        run.fail(st.name, error)


def start_waiting(run: _Run, st: StageRun) -> None:
    cap = st.cap
    waiting = st.waiting
    while waiting and (cap is None or st.active < cap):
        sr = waiting.popleft()
        if sr.state != StepState.PENDING:
            continue
        if st.cancel_reason is not None:
            run.finalize(st, sr, StepStatus.CANCELLED, None, StepCancelledError(sr.step.name, st.cancel_reason))
            continue
        st.active += 1
        run.dispatch(sr)


def note_always_failure(run: _Run, record: StepResult) -> None:
    if record.ok:
        return
    import logging  # only when an always-stage fails: logging costs start-up time

    logging.getLogger("flowpool").warning(
        "flowpool: always-stage %r of flow %r ended %s: %s",
        record.name,
        run.name,
        record.status.value,
        record.error,
    )


def start_stage_span(run: _Run, name: str) -> None:
    """The stage's span, under the run's, when the program traces."""
    if run.tracer is not None and run.run_span is not None:
        run.stage_spans[name] = run.tracer.start_stage(name, run.run_span)


def end_stage_span(run: _Run, name: str, verdict: GroupStatus | None) -> None:
    """End the stage's span with its verdict (a single step's: its status)."""
    span = run.stage_spans.get(name)
    if span is not None:
        status = verdict.value if verdict is not None else run.records[name].status.value
        span.finish(status, run.error if run.failed_stage == name else None)
