"""Always-stages: steps that run after the rest of the flow and its compensations,
whatever the outcome, with ``ctx.outcome``; their failure never changes the flow's status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import _stages
from ._definition import Always
from ._errors import StepCancelledError
from ._results import StepResult, StepStatus

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["run_always"]


def run_always(run: _Run) -> Iterator[None]:
    """Run the always-stages, in declaration order, after everything else and after
    the compensations, whatever the outcome; a second Ctrl-C abandons them. Yields
    whenever the loop must wait."""
    positions = [(index, stage) for index, stage in enumerate(run.flow.steps()) if isinstance(stage, Always)]
    if not positions:
        return
    resumed_outcome = run.resumed.outcome if run.resumed is not None else None
    run.outcome = run.scope.final_status(run.error, resumed_outcome)
    run.always_from = run.scope.interrupts
    run.scope.compensating = False  # a Ctrl-C is the loop's to handle again
    for index, step in positions:
        if run.scope.interrupts >= 2:
            error = StepCancelledError(step.name, "the always-stages were abandoned (second Ctrl-C)")
            run.records[step.name] = StepResult(step.name, StepStatus.CANCELLED, error=error)
            run.events.emit("step_finished", run.clock.now(), step=step.name, status=StepStatus.CANCELLED)
            continue
        yield from _stages.run_stage(run, step, (step,), index)
