"""Verdicts: pure functions of outcomes (an attempt's error, a group's members)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._errors import StepCancelledError, StepTimeoutError
from ._results import GroupStatus, StepResult, StepStatus

if TYPE_CHECKING:
    from ._definition import Group

__all__ = [
    "cannot_pass",
    "check_tolerance",
    "group_error",
    "group_verdict",
    "may_retry",
    "retry_matches",
    "stage_verdict",
    "status_of",
    "stops_group_early",
    "tally_verdict",
]


def status_of(error: BaseException | None) -> StepStatus:
    """The status an attempt that raised ``error`` ends with."""
    if isinstance(error, StepCancelledError):
        return StepStatus.CANCELLED
    if isinstance(error, StepTimeoutError):
        return StepStatus.TIMED_OUT
    return StepStatus.FAILED


def group_verdict(
    statuses: Sequence[StepStatus],
    required: Sequence[bool],
    *,
    fail_fast: bool = False,
    min_successes: int | None = None,
    optional: Sequence[bool] | None = None,
) -> GroupStatus:
    """The verdict on a group whose members all settled.

    - default: the group fails only when no member completed;
    - ``fail_fast``: any member that did not complete fails the group;
    - ``min_successes=k``: the group fails when fewer than k members completed;
    - a required member that did not complete fails the group in every mode;
    - an optional member that did not complete is left out of the verdict and of
      the group's status (a group whose members all did so is PARTIAL);
    - a skipped member (its ``when`` was false) is left out too (a group whose
      members were all skipped is SKIPPED).
    """
    if len(statuses) != len(required) or (optional is not None and len(optional) != len(statuses)):
        raise ValueError("statuses, required and optional must have the same length")
    flags = optional if optional is not None else [False] * len(statuses)
    if StepStatus.SKIPPED in statuses or any(flags):
        kept = [
            (status, is_required)
            for status, is_required, is_optional in zip(statuses, required, flags, strict=True)
            if status is not StepStatus.SKIPPED and (not is_optional or status is StepStatus.COMPLETED)
        ]
        if not kept:
            skipped_only = all(status is StepStatus.SKIPPED for status in statuses)
            return GroupStatus.SKIPPED if skipped_only else GroupStatus.PARTIAL
        statuses = [status for status, _ in kept]
        required = [is_required for _, is_required in kept]
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


def stops_group_early(status: StepStatus, *, fail_fast: bool, optional: bool = False) -> bool:
    """Whether a member that ended with ``status`` cancels the rest of its group
    (an optional member never does)."""
    return fail_fast and not optional and status not in (StepStatus.COMPLETED, StepStatus.SKIPPED)


def group_error(group: str, policy: str, records: Sequence[StepResult], required: Sequence[bool]) -> BaseException:
    """The error of a failed group: its members' errors, and why the policy failed it.

    ``records`` are the members' records and ``required`` their ``required`` options,
    in declaration order.
    """
    errors: list[Exception] = []
    for record in records:
        if record.status is StepStatus.COMPLETED:
            continue
        error = record.error or StepCancelledError(record.name, "not completed")
        errors.append(error if isinstance(error, Exception) else StepCancelledError(record.name, repr(error)))
    completed = sum(1 for record in records if record.ok)
    why = f"{completed} of {len(records)} members completed; policy: {policy}"
    missing = [
        record.name for record, is_required in zip(records, required, strict=True) if is_required and not record.ok
    ]
    if missing:
        why += f"; required member(s) did not complete: {', '.join(missing)}"
    return ExceptionGroup(f"group {group!r} failed ({why})", errors)


def stage_verdict(
    name: str,
    group: Group | None,
    records: Sequence[StepResult],
    stop_error: BaseException | None,
    *,
    optional: bool = False,
) -> tuple[GroupStatus | None, BaseException | None]:
    """``(group verdict, error)`` of a stage whose members all settled.

    The verdict is None for a single step, which fails the run unless it
    completed or is ``optional``. The error is what the stage fails the run with,
    or None: a run that was stopped (``stop_error``: its timeout, Ctrl-C) fails at
    the stage it was in, whatever that stage's own verdict.
    """
    if group is None:
        record = records[0]
        if record.status not in (StepStatus.COMPLETED, StepStatus.SKIPPED) and not optional:
            return None, stop_error or record.error or StepCancelledError(name, "not completed")
        return None, stop_error
    required = [member.required for member in group.members]
    optional_members = [member.optional for member in group.members]
    if group.tolerated_failures is not None:
        # The tolerance replaces the default rule; required members still fail the group.
        # Skipped members, and optional ones that did not complete, are left out.
        counted = [
            record
            for record, is_optional in zip(records, optional_members, strict=True)
            if record.status is not StepStatus.SKIPPED and (not is_optional or record.ok)
        ]
        missing_required = any(
            is_required and not record.ok and record.status is not StepStatus.SKIPPED
            for record, is_required in zip(records, required, strict=True)
        )
        if missing_required:
            verdict = GroupStatus.FAILED
        elif not counted:
            skipped = all(record.status is StepStatus.SKIPPED for record in records)
            verdict = GroupStatus.SKIPPED if skipped else GroupStatus.PARTIAL
        else:
            completed = sum(1 for record in counted if record.ok)
            verdict = tally_verdict(completed, len(counted), tolerated_failures=group.tolerated_failures)
    else:
        verdict = group_verdict(
            [record.status for record in records],
            required,
            fail_fast=group.fail_fast,
            min_successes=group.min_successes,
            optional=optional_members,
        )
    if verdict is GroupStatus.FAILED:
        return verdict, stop_error or group_error(group.name, group.policy, records, required)
    return verdict, stop_error


def retry_matches(retry_on: Any, error: BaseException | None) -> bool:
    """Whether a failure may be retried under a step's ``retry_on``: an exception
    class or a tuple of them (``isinstance``, never called), or a predicate.

    Raises:
        Exception: whatever the predicate raised (the step then fails, unretried).
    """
    if retry_on is None:
        return True
    if error is None:
        return False  # a tenacity policy's rejected value: nothing to match
    if isinstance(retry_on, type | tuple):
        return isinstance(error, retry_on)
    return bool(retry_on(error))


def may_retry(
    status: StepStatus, *, retries: int, custom: bool, attempt_told_to_stop: bool, stage_stopping: bool
) -> bool:
    """Whether an attempt that ended with ``status`` (not a plain success) may be retried.

    Never a cancelled attempt, nor one that was told to stop (a timed-out one still
    may), nor once its group failed fast or the run is stopping (``stage_stopping``).
    """
    if not (custom or retries > 0) or status is StepStatus.CANCELLED:
        return False
    if attempt_told_to_stop and status is not StepStatus.TIMED_OUT:
        return False
    return not stage_stopping


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
