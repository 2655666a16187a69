"""How a run ends: its ``FlowResult`` from its records, and for a top-level run the
journal's end record, the run span's end, ``flow_finished`` and, after Ctrl-C, the
``FlowInterrupted`` that carries the result."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import FlowInterrupted, StepCancelledError
from ._results import FlowResult, FlowStatus, StepResult, StepStatus

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["run_result", "finish"]


def run_result(run: _Run) -> FlowResult:
    """The run's result as it stands (a subflow's steps it never reached: cancelled)."""
    finished_at = run.clock.now()
    resumed_outcome = run.resumed.outcome if run.resumed is not None else None
    status = run.scope.final_status(run.error, resumed_outcome)
    steps = {
        step.name: run.records.get(step.name)
        or StepResult(step.name, StepStatus.CANCELLED, error=StepCancelledError(step.name, "the subflow ended"))
        for step in run.flow.steps()
    }
    error = run.scope.final_error(status, run.error)
    return FlowResult(
        name=run.name,
        run_id=run.run_id,
        status=status,
        steps=steps,
        groups=run.groups,
        maps=run.maps,
        error=error,
        failed_stage=run.failed_stage,
        compensated=tuple(run.compensator.compensated),
        not_compensated=tuple(run.compensator.not_compensated),
        started_at=run.started_at,
        finished_at=finished_at,
        wall_offset=run.wall_offset,
        still_running=run.still_running,
    )


def finish(run: _Run) -> FlowResult:
    """End a top-level run: its result journaled, its span ended, ``flow_finished`` sent;
    raise ``FlowInterrupted`` (carrying the result) if Ctrl-C stopped it."""
    result = run_result(run)
    status, error, finished_at = result.status, result.error, result.finished_at
    assert finished_at is not None
    run.recorder.end(result)
    if run.run_span is not None:
        run.run_span.finish(status.value, error if status is not FlowStatus.COMPLETED else None, end_time=finished_at)
    run.events.emit("flow_finished", finished_at, status=status, error=error)
    if status is FlowStatus.CANCELLED and run.scope.interrupts:
        assert isinstance(error, FlowInterrupted)
        error.result = result
        raise error
    return result
