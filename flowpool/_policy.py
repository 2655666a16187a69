"""Group verdicts: pure functions of the members' final statuses."""

from __future__ import annotations

from collections.abc import Sequence

from ._results import GroupStatus, StepStatus

__all__ = ["group_verdict", "stops_group_early"]


def group_verdict(
    statuses: Sequence[StepStatus],
    required: Sequence[bool],
    *,
    fail_fast: bool = False,
    min_successes: int | None = None,
) -> GroupStatus:
    """The verdict on a group whose members all settled.

    - default: the group fails only when no member completed;
    - ``fail_fast``: any member that did not complete fails the group;
    - ``min_successes=k``: the group fails when fewer than k members completed;
    - a required member that did not complete fails the group in every mode.
    """
    if len(statuses) != len(required):
        raise ValueError("statuses and required must have the same length")
    completed = 0
    for status, is_required in zip(statuses, required, strict=True):
        if status is StepStatus.COMPLETED:
            completed += 1
        elif is_required:
            return GroupStatus.FAILED
    if completed == 0:
        return GroupStatus.FAILED
    if completed == len(statuses):
        return GroupStatus.COMPLETED
    if fail_fast or (min_successes is not None and completed < min_successes):
        return GroupStatus.FAILED
    return GroupStatus.PARTIAL


def stops_group_early(status: StepStatus, *, fail_fast: bool) -> bool:
    """Whether a member that ended with ``status`` cancels the rest of its group."""
    return fail_fast and status is not StepStatus.COMPLETED
