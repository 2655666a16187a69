"""A definition's structure as plain data, for the journal's fingerprint.

The structure names the flow, its stages' kinds and order, step and group names,
options and policies, not the functions (nor the module they come from): the
same file run as a script or loaded as a TARGET fingerprints the same.
"""

from __future__ import annotations

from typing import Any

from ._definition import GROUP_OPTIONS, Always, Flow, Group, Map, Step
from ._options import Option

__all__ = ["describe_structure"]


def _option_structure(holder: Step | Group, options: tuple[Option, ...]) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for spec in options:
        value = getattr(holder, spec.name)
        if spec.fingerprint is not None and (spec.fingerprint_default or value != spec.default):
            described[spec.name] = spec.fingerprint(value)
    return described


def _step_structure(step: Step) -> dict[str, Any]:
    described = {"name": step.name, **_option_structure(step, step.OPTIONS)}
    child = step.subflow
    if child is not None:
        described["subflow"] = describe_structure(child)
    return described


def _map_structure(stage: Map) -> dict[str, Any]:
    return {
        "map": stage.name,
        "keyed": stage.key is not None,
        "fail_fast": stage.fail_fast,
        "min_successes": stage.min_successes,
        "tolerated_failures": stage.tolerated_failures,
        "max_concurrency": stage.max_concurrency,
        "compensate_concurrency": stage.compensate_concurrency,
        "step": _step_structure(stage.step),
    }


def describe_structure(flow: Flow) -> dict[str, Any]:
    """The definition's structure as JSON-ready data: names, stage kinds and order,
    options and policies, not the functions (nor the module they come from).

    The journal fingerprints it, to tell whether a run can be resumed with this
    definition.
    """
    stages: list[dict[str, Any]] = []
    for stage in flow.stages:
        if isinstance(stage, Group):
            stages.append(
                {
                    "group": stage.name,
                    **_option_structure(stage, GROUP_OPTIONS),
                    "members": [_step_structure(member) for member in stage.members],
                }
            )
        elif isinstance(stage, Map):
            stages.append(_map_structure(stage))
        elif isinstance(stage, Always):
            stages.append({"always": _step_structure(stage)})
        else:
            stages.append({"step": _step_structure(stage)})
    return {"flow": flow.name, "stages": stages}
