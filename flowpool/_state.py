"""The loop's mutable records of the steps and the stage it is settling."""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Collection
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ._attempt import Attempt, Message
from ._clock import Clock
from ._context import Context, ItemCall, OutcomeCall
from ._definition import Group, Map, Step
from ._executors import Backend
from ._record import replace
from ._results import CompensationResult, StepResult, StepStatus
from ._retry import Decision, RetryDriver, default_retrying

if TYPE_CHECKING:
    from ._maps import ItemFeeder, MapLedger

__all__ = ["MapRun", "StageRun", "StepRun", "StepState", "tell_cancel", "with_compensation", "with_late_value"]


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
        "timer",
        "item",
        "item_index",
        "key",
        "call",
        "run",
        "child",
    )

    def __init__(self, step: Step, index: int, group: str | None, backend: Backend, run: Any = None) -> None:
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
        self.timer: list[Any] | None = None  # the current attempt's timeout, while armed
        # A map's item (item_index is None for a step): what its context and events name.
        self.item: Any = None
        self.item_index: int | None = None
        self.key: str | int | None = None
        self.call: ItemCall | None = None  # how the item travels to a backend elsewhere
        #: The run (or subflow frame) this step belongs to: where its messages are handled.
        self.run: Any = run
        #: A subflow step's child run (its current or last attempt's), else None.
        self.child: Any = None

    def new_attempt(
        self, ctx: Context, inbox: queue.SimpleQueue[Message], clock: Clock, notify_start: bool, may_queue: bool
    ) -> Attempt:
        """The attempt numbered ``ctx.attempt``, now this step's current one."""
        step = self.step
        fn: Any = step.fn
        args: tuple[Any, ...] = ()
        index = self.item_index
        if index is not None:
            ctx.item, ctx.index, ctx.key = self.item, index, self.key
            if self.call is not None:
                fn, args = self.call, (self.item, index, self.key)
        if ctx.outcome is not None and not self.backend.in_process:
            fn, args = OutcomeCall(fn), (*args, ctx.outcome)  # an always-stage's ctx.outcome
        attempt = Attempt(step.name, ctx.attempt, fn, args, ctx, inbox, clock, notify_start, owner=self)
        ctx._scope = attempt
        attempt.may_queue = may_queue
        self.attempt = attempt
        return attempt

    def decide(self, status: StepStatus, value: Any, error: BaseException | None, real_time: bool) -> Decision:
        """What the step's retry policy says after an attempt ended with ``status``."""
        driver = self.driver
        if driver is None:
            step = self.step
            retrying = step.retry if step.retry is not None else default_retrying(step.retries)
            # tenacity measures delays with time.monotonic: tell it the start only in real time.
            driver = self.driver = RetryDriver(step.name, retrying, self.first_started if real_time else None)
        return driver.decide(status is StepStatus.COMPLETED, value, error)

    def result(self, status: StepStatus, value: Any, error: BaseException | None, finished: float | None) -> StepResult:
        """The step's final record (``value`` is kept only for a completed step)."""
        ran = bool(self.attempts)
        return StepResult(
            self.step.name,
            status,
            value if status is StepStatus.COMPLETED else None,
            error,
            self.attempts,
            self.first_started if ran else None,
            finished if ran else None,
            self.group,
            subflow=self.child.result if self.child is not None else None,
        )


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

    members: Collection[StepRun]

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

    def settle(self, sr: StepRun) -> None:
        """``sr`` is final: it no longer holds a slot, and one fewer member is unsettled."""
        if sr.state in (StepState.RUNNING, StepState.BACKOFF):
            self.active -= 1
        sr.state = StepState.FINAL
        self.unsettled -= 1


class MapRun(StageRun):
    """A map stage being settled. ``members`` holds only the items in flight (in a
    dict, so that a settled one leaves in O(1)); what settled items did is in
    ``ledger``. Items are taken from ``feeder`` only while fewer than ``cap`` are
    in flight, so none is ever taken and left unstarted by the loop itself."""

    __slots__ = (
        "stage",
        "position",
        "ledger",
        "feeder",
        "problem",
        "size",
        "failed",
        "stopped_early",
        "items",
        "backend",
        "call",
        "restored",
        "units",
    )

    members: dict[StepRun, None]
    cap: int

    def __init__(self, stage: Map, position: int, ledger: MapLedger, limit: int, backend: Backend) -> None:
        super().__init__(stage.name, None, [])
        self.members = {}
        self.stage = stage
        self.position = position
        self.ledger = ledger
        self.cap = limit
        self.feeder: ItemFeeder | None = None
        #: What went wrong producing the items (``items(ctx)``, iteration, a key), if anything.
        self.problem: BaseException | None = None
        self.size: int | None = None
        self.failed = 0
        self.stopped_early = False
        # Kept only for a map with a compensation: the compensation's ctx.item.
        self.items: list[Any] | None = [] if stage.step.compensate is not None else None
        self.backend = backend
        self.call = None if backend.in_process else ItemCall(stage.step.fn)
        #: A resumed run: key → (value, attempts, started_at, finished_at) of items recorded completed.
        self.restored: dict[Any, tuple[Any, int, float | None, float | None]] | None = None
        #: A map of subflows: index → the frame of each completed item that has something to undo.
        self.units: dict[int, Any] = {}
        may_stop = stage.fail_fast or stage.tolerated_failures is not None
        self.may_queue = not may_stop and stage.step.timeout is None


def with_compensation(record: StepResult, compensation: CompensationResult) -> StepResult:
    """``record`` with its compensation's outcome."""
    return replace(record, compensation=compensation)


def with_late_value(record: StepResult, value: Any) -> StepResult:
    """``record`` of a timed-out step whose abandoned attempt returned ``value`` later."""
    return replace(record, late_value=value)
