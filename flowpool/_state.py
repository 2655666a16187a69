"""The loop's mutable records of the steps and the stage it is settling."""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from ._attempt import Attempt
from ._definition import Group, Step
from ._executors import Backend
from ._results import CompensationResult, StepResult, StepStatus
from ._retry import RetryDriver

__all__ = ["StageRun", "StepRun", "StepState", "tell_cancel", "with_compensation"]


class StepState(IntEnum):
    """Where a step is in its run."""

    PENDING = 0  # not dispatched yet
    RUNNING = 1  # an attempt is with a backend
    BACKOFF = 2  # waiting for its retry's wake-up timer
    FINAL = 3  # its record is written


def tell_cancel(backend: Backend, attempt: Attempt, reason: str) -> None:
    """Make ``ctx.cancelled`` true for a running attempt, wherever it runs."""
    if attempt.cancel_reason is None:
        attempt.cancel_reason = reason
        backend.cancel(attempt)


class StepRun:
    """The loop's mutable record of one step during a run."""

    __slots__ = (
        "step",
        "index",
        "group",
        "backend",
        "state",
        "attempts",
        "attempt",
        "driver",
        "first_started",
        "last_status",
        "last_error",
        "record",
    )

    def __init__(self, step: Step, index: int, group: str | None, backend: Backend) -> None:
        self.step = step
        self.index = index
        self.group = group
        self.backend = backend
        self.state = StepState.PENDING
        self.attempts = 0
        self.attempt: Attempt | None = None
        self.driver: RetryDriver | None = None
        self.first_started: float | None = None
        self.last_status = StepStatus.CANCELLED
        self.last_error: BaseException | None = None
        self.record: StepResult | None = None


class StageRun:
    """One stage being settled: a group, or a single step as a group of one."""

    __slots__ = (
        "name",
        "group",
        "members",
        "waiting",
        "active",
        "unsettled",
        "cap",
        "fail_fast",
        "cancel_reason",
        "may_queue",
    )

    def __init__(self, name: str, group: Group | None, members: list[StepRun]) -> None:
        self.name = name
        self.group = group
        self.members = members
        self.waiting = deque(members)
        self.active = 0
        self.unsettled = len(members)
        self.cap = group.max_concurrency if group is not None else None
        self.fail_fast = group.fail_fast if group is not None else False
        self.cancel_reason: str | None = None
        self.may_queue = not self.fail_fast and all(sr.step.timeout is None for sr in members)


def with_compensation(record: StepResult, compensation: CompensationResult) -> StepResult:
    """``record`` with its compensation's outcome."""
    return StepResult(
        record.name,
        record.status,
        record.value,
        record.error,
        record.attempts,
        record.started_at,
        record.finished_at,
        record.group,
        compensation,
    )
