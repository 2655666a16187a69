"""Why a step (or a map) was skipped, for the progress view, the summary and the timeline.

A result says only ``SKIPPED``, for two different reasons: the step's condition
(``when``) was false, or the flow had stopped before the step's stage started (a
stage failed, the run timed out or was interrupted). The definition tells which
steps have a condition; what the run did so far tells whether it had stopped: a
skipped step with ``when`` in a stage the run reached was skipped by its
condition, every other skipped step was not reached.

``SkipReasons`` follows a run stage by stage, from its events (live) or from its
result (``skip_reasons``).
"""

from __future__ import annotations

from collections.abc import Sequence

from flowpool import Flow, FlowResult, GroupStatus, Map, Step, StepStatus
from flowpool._definition import Always, Group
from flowpool._options import callable_name

__all__ = ["PATH_SEPARATOR", "SkipReasons", "condition_reason", "definition_at", "skip_reasons", "subflow_at"]

#: Between the names of an event's path on screen (a single right-pointing angle quote):
#: a step inside the subflow ``orders`` is ``orders \u203a charge``.
PATH_SEPARATOR = " \u203a "

# A top-level step that ends like this stops the flow (unless it is optional).
_STOPPING = frozenset({StepStatus.FAILED.value, StepStatus.TIMED_OUT.value, StepStatus.CANCELLED.value})


def definition_at(flow: Flow, path: Sequence[str]) -> Step | Group | Map | None:
    """What an event's ``path`` names in ``flow``'s definition: the step, group or map
    at its end, found through the subflows along it; None when there is no such path."""
    found: Step | Group | Map | None = None
    current: Flow | None = flow
    for name in path:
        if current is None:
            return None
        found = _named(current, name)
        current = found.subflow if isinstance(found, Step | Map) else None
    return found


def subflow_at(flow: Flow, path: Sequence[str]) -> Flow | None:
    """The flow whose stages an event at ``path + (name,)`` belongs to: ``flow`` itself
    for ``()``, else the subflow named by ``path``; None when there is none."""
    if not path:
        return flow
    found = definition_at(flow, path)
    return found.subflow if isinstance(found, Step | Map) else None


def _named(flow: Flow, name: str) -> Step | Group | Map | None:
    for stage in flow.stages:
        if stage.name == name:
            return stage
        if isinstance(stage, Group):
            for member in stage.members:
                if member.name == name:
                    return member
    return None


def condition_reason(step: Step) -> str:
    """``when is_weekday was false``."""
    assert step.when is not None
    return f"when {callable_name(step.when)} was false"


class SkipReasons:
    """Follows one run of ``flow``: told how each stage ended (``saw``), it says why a
    step or map that was just skipped was skipped (``reason``)."""

    def __init__(self, flow: Flow) -> None:
        #: Step or map name → its definition (a map by its step, which holds ``when``).
        self.steps: dict[str, Step] = {}
        #: Names of stages whose failure does not stop the flow (optional steps and maps).
        self.harmless: set[str] = set()
        for stage in flow.stages:
            if isinstance(stage, Map):
                self.steps[stage.name] = stage.step
                if stage.step.optional:
                    self.harmless.add(stage.name)
            elif isinstance(stage, Group):
                self.steps.update((member.name, member) for member in stage.members)
            else:
                self.steps[stage.name] = stage
                if stage.optional or isinstance(stage, Always):
                    self.harmless.add(stage.name)
        #: The stage at which the flow stopped, once it has.
        self.stopped_at: str | None = None

    def saw(self, name: str, status: str, *, stage: bool = True) -> None:
        """A top-level step (``step_finished``) or a group or map (``group_finished``)
        ended with ``status``; ``stage=False`` for a group's member, which never stops
        the flow by itself (its group's verdict does)."""
        if self.stopped_at is not None or not stage or name in self.harmless:
            return
        if status in _STOPPING or status == GroupStatus.FAILED.value:
            self.stopped_at = name

    def stop(self, before: str | None = None) -> None:
        """The flow stopped although no stage failed (Ctrl-C between two stages)."""
        if self.stopped_at is None:
            self.stopped_at = before or ""

    def reason(self, name: str) -> str:
        """Why the step or map ``name``, just skipped, was skipped."""
        if self.stopped_at is not None:
            return f"the flow stopped at stage {self.stopped_at!r}" if self.stopped_at else "the flow stopped before it"
        step = self.steps.get(name)
        if step is not None and step.when is not None:
            return condition_reason(step)
        return "not run"


def skip_reasons(flow: Flow, result: FlowResult) -> dict[str, str]:
    """Name → why it was skipped, for every skipped step and map of ``result``, a run
    of ``flow``.

    A run that stopped with no stage failing (Ctrl-C between two stages) is taken
    to have stopped after the last stage that ran anything: a stage before the
    interrupt whose steps were all skipped by their conditions is then reported as
    not reached, which the result cannot tell apart.
    """
    stages = [stage for stage in flow.stages if not isinstance(stage, Always)]
    outcomes: list[list[tuple[str, str]]] = []  # per stage: (name, status) of its steps, or the map
    for stage in stages:
        if isinstance(stage, Map):
            mapped = result.maps.get(stage.name)
            outcomes.append([(stage.name, mapped.status.value if mapped is not None else "skipped")])
        else:
            members = stage.members if isinstance(stage, Group) else (stage,)
            outcomes.append([(m.name, result.steps[m.name].status.value) for m in members if m.name in result.steps])
    follow = SkipReasons(flow)
    if result.failed_stage is None and not result.ok:
        ran = [i for i, found in enumerate(outcomes) if any(status != "skipped" for _, status in found)]
        last_ran = ran[-1] if ran else -1
    else:
        last_ran = len(stages)
    reasons: dict[str, str] = {}
    for position, (stage, found) in enumerate(zip(stages, outcomes, strict=True)):
        if position > last_ran:
            follow.stop()
        reasons.update((name, follow.reason(name)) for name, status in found if status == "skipped")
        if isinstance(stage, Group):
            group = result.groups.get(stage.name)
            follow.saw(stage.name, group.status.value if group is not None else "skipped")
        else:
            follow.saw(stage.name, found[0][1] if found else "skipped")
        if result.failed_stage == stage.name:
            follow.stop(stage.name)  # whatever its status says (a stage failed by the run's deadline)
    return reasons
