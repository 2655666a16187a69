"""A flow's stages in order, each run or, after a failure or a stop, skipped.

The same sequence drives a top-level run (``_Run.execute`` waits between its
yields) and a subflow's frame (``_subflows.frame_body``, resumed by the loop).
Always-stages are not part of it: they run last (``_always``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import _mapstage, _stages, _stopping
from ._definition import Always, Group, Map

if TYPE_CHECKING:
    from ._runner import _Run

__all__ = ["run_stages"]


def run_stages(run: _Run) -> Iterator[None]:
    """Run the stages in order (not the always-stages), yielding whenever the loop must
    wait; a stage after a failure or a stop is skipped."""
    index = 0
    for stage in run.flow.stages:
        if isinstance(stage, Always):
            index += 1  # runs last (run_always)
            continue
        if run.scope.interrupts and run.scope.reason is None:
            _stopping.stop(run, "the run was interrupted")  # Ctrl-C arrived between stages
        stopped = run.error is not None or run.scope.reason is not None
        if isinstance(stage, Map):
            if stopped:
                _mapstage.skip_map(run, stage)
            else:
                yield from _mapstage.run_map(run, stage, index)
            index += 1  # a map takes one place in the compensation order
            continue
        members = stage.members if isinstance(stage, Group) else (stage,)
        if stopped:
            _stages.skip_stage(run, stage, members)
        else:
            yield from _stages.run_stage(run, stage, members, index)  # the one place a step or group runs
        index += len(members)
