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


def check_tolerance(tolerated_failures: object) -> int | float | None:
    """``tolerated_failures`` if valid: None, an int >= 0 (not a bool) or a float in (0, 1).

    Raises:
        ValueError: anything else, with what is wrong.
    """
    if tolerated_failures is None:
        return None
    if isinstance(tolerated_failures, bool):
        raise ValueError(f"must be an int >= 0 or a float in (0, 1), not {tolerated_failures!r}")
    if isinstance(tolerated_failures, int):
        if tolerated_failures < 0:
            raise ValueError(f"an int count must be >= 0, not {tolerated_failures}")
        return tolerated_failures
    if isinstance(tolerated_failures, float):
        if not 0.0 < tolerated_failures < 1.0:
            raise ValueError(f"a float fraction must be in (0, 1), not {tolerated_failures!r}")
        return tolerated_failures
    raise ValueError(f"must be an int >= 0 or a float in (0, 1), not {type(tolerated_failures).__name__}")


def tally_verdict(
    completed: int,
    settled: int,
    *,
    fail_fast: bool = False,
    min_successes: int | None = None,
    tolerated_failures: int | float | None = None,
) -> GroupStatus:
    """The verdict on a map (or a group) from how many of its ``settled`` items completed.

    An empty map is COMPLETED whatever its policy; ``min_successes`` fails a map
    with fewer completed items, however many it had. ``tolerated_failures`` replaces
    the default rule: an int n fails the stage when more than n items did not
    complete; a float f when more than that fraction of the settled items did not.
    """
    if settled == 0:
        return GroupStatus.COMPLETED
    if min_successes is not None and completed < min_successes:
        return GroupStatus.FAILED  # a map's quorum is checked against the items it had
    failed = settled - completed
    if failed == 0:
        return GroupStatus.COMPLETED
    if tolerated_failures is not None:
        limit = tolerated_failures if isinstance(tolerated_failures, int) else tolerated_failures * settled
        return GroupStatus.FAILED if failed > limit else GroupStatus.PARTIAL
    if fail_fast or completed == 0:
        return GroupStatus.FAILED
    return GroupStatus.PARTIAL


def cannot_pass(
    failed: int,
    *,
    fail_fast: bool = False,
    tolerated_failures: int | float | None = None,
    size: int | None = None,
) -> bool:
    """Whether a map whose items so far include ``failed`` that did not complete can
    only end FAILED, so it should stop taking items.

    Fail fast stops at the first failure; an int tolerance when more than n failed;
    a float tolerance only when the items' number (``size``) is known and more
    than that fraction of it failed.
    """
    if failed == 0:
        return False
    if fail_fast:
        return True
    if isinstance(tolerated_failures, int):
        return failed > tolerated_failures
    if isinstance(tolerated_failures, float) and size is not None:
        return failed > tolerated_failures * size
    return False
