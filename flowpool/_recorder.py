"""What a run writes to its journal, in one place.

Without ``journal=`` every method does nothing, so the loop never asks whether
a journal is there; with one, the writes go to the journal's ``JournalRecorder`` (imported only for
typing here: a plain run never loads the journal, sqlite3 or pickle).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ._attempt import Attempt
from ._definition import Flow, Group, Step
from ._results import CompensationResult, FlowResult, StepResult, StepStatus

if TYPE_CHECKING:
    from ._journal import JournalRecorder

__all__ = ["COMMIT_EVERY", "RunRecorder"]

#: While records keep arriving, the loop hands them to the journal's writer thread at most
#: this often (seconds on the run's clock): a commit costs far more than the rows in it,
#: and a record still waits no longer than this before its commit starts (the contract
#: allows 100 ms from completion to commit).
COMMIT_EVERY = 0.01


class RunRecorder:
    """The journal writes of one run (``run_id``); no-ops when ``journal`` is None."""

    __slots__ = ("journal", "run_id", "failure_recorded", "next_commit", "ended", "ended_status", "started")

    def __init__(self, journal: JournalRecorder | None, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        #: The journal knows the run failed (it is written once).
        self.failure_recorded = False
        #: The earliest time (the run's clock) of the loop's next commit.
        self.next_commit = 0.0
        #: The latest attempt that ended, and its status, not yet passed to the journal:
        #: if its step's record comes next and says the same (the step's only attempt),
        #: that record is the attempt's, and the attempt needs no row of its own.
        self.ended: Attempt | None = None
        self.ended_status = StepStatus.COMPLETED
        #: ``(step, attempt)`` of attempts whose start is recorded: their end goes to the
        #: journal at once (which writes it if their start was committed).
        self.started: set[tuple[str, int]] = set()

    @property
    def enabled(self) -> bool:
        return self.journal is not None

    def begin(self, flow: Flow, run_input: Any, resumed: bool) -> None:
        journal = self.journal
        if journal is None:
            return
        if resumed:
            journal.reopen_run(self.run_id)
        else:
            journal.begin_run(self.run_id, flow, run_input, layout(flow))

    def flush(self) -> None:
        if self.journal is not None:
            if self.ended is not None:
                self.pass_ended()
            self.journal.flush()

    @property
    def dirty(self) -> bool:
        """Writes are waiting for the next flush."""
        return self.journal is not None and self.journal.dirty

    def commit_due(self) -> float | None:
        """When the loop must commit the writes waiting (the run's clock), or None: none wait."""
        journal = self.journal
        if journal is None:
            return None
        if self.ended is not None:
            self.pass_ended()
        if not journal.dirty:
            return None
        return self.next_commit

    def commit(self, now: float) -> None:
        """The loop's commit at ``now``, made by the journal's writer thread while the loop
        goes on; writes that arrive in the next ``COMMIT_EVERY`` seconds wait for the one
        after it."""
        if self.journal is not None:
            if self.ended is not None:
                self.pass_ended()
            self.journal.hand_off()
            self.next_commit = now + COMMIT_EVERY

    def attempt_started(self, step: str, attempt: int) -> None:
        if self.journal is not None:
            self.started.add((step, attempt))
            self.journal.attempt_started(self.run_id, step, attempt)

    def attempt_finished(self, attempt: Attempt, status: StepStatus) -> None:
        if self.journal is not None:
            if self.ended is not None:
                self.pass_ended()
            self.ended = attempt
            self.ended_status = status
            if self.started:
                key = (attempt.step, attempt.number)
                if key in self.started:  # its start has a row: the journal decides
                    self.started.discard(key)
                    self.pass_ended()

    def pass_ended(self) -> None:
        """Pass the attempt that ended last to the journal (it has a row of its own unless
        the journal sees its step's record first)."""
        attempt, self.ended = self.ended, None
        if attempt is None or self.journal is None:
            return
        started, finished = attempt.started_at, attempt.finished_at
        seconds = finished - started if started is not None and finished is not None else None
        self.journal.attempt_finished(self.run_id, attempt.step, attempt.number, self.ended_status.value, seconds)

    def step_finished(self, record: StepResult) -> None:
        journal = self.journal
        if journal is not None:
            attempt = self.ended
            if attempt is not None:
                if (
                    attempt.number == record.attempts == 1
                    and self.ended_status is record.status
                    and attempt.step == record.name
                ):
                    self.ended = None  # the step's row is its only attempt's record
                else:
                    self.pass_ended()
            journal.step_finished(self.run_id, record)

    def item_finished(
        self,
        map_name: str,
        index: int,
        key: str | int,
        status: StepStatus,
        value: Any,
        error: BaseException | None,
        attempts: int,
        started_at: float | None,
        finished_at: float | None,
    ) -> None:
        if self.journal is not None:
            self.journal.item_finished(
                self.run_id, map_name, index, key, status, value, error, attempts, started_at, finished_at
            )

    def group_finished(self, group: str, status: str) -> None:
        if self.journal is not None:
            self.journal.group_finished(self.run_id, group, status)

    def run_failed(self, outcome: str, failed_stage: str | None, error: BaseException | None) -> None:
        """Journal that the run failed (once): a resume then only compensates."""
        if self.journal is None or self.failure_recorded:
            return
        self.failure_recorded = True
        self.journal.compensating(self.run_id, outcome, failed_stage, error)

    def compensation_started(self, step: str) -> None:
        if self.journal is not None:
            self.journal.compensation_started(self.run_id, step)

    def compensation_finished(self, step: str, outcome: CompensationResult | None, position: int | None) -> None:
        if self.journal is not None:
            self.journal.compensation_finished(self.run_id, step, outcome, position)

    def end(self, result: FlowResult) -> None:
        if self.journal is not None:
            if self.ended is not None:
                self.pass_ended()
            self.journal.end_run(result)


def layout(flow: Flow) -> list[list[Any]]:
    """``[step, group]`` pairs in declaration order, as the journal keeps them (the same
    list for the same stages: do not change it)."""
    stages = flow.stages
    known = _LAYOUTS.get(flow)
    if known is not None and known[0] is stages:
        return known[1]
    out: list[list[Any]] = []
    for stage in flow.stages:
        if isinstance(stage, Group):
            out.extend([member.name, stage.name] for member in stage.members)
        elif isinstance(stage, Step):
            out.append([stage.name, None])
        else:  # a map: its items are journaled in their own table
            out.append([stage.name, None, "map"])
    _LAYOUTS[flow] = (stages, out)
    return out


# A batch runs one flow many times. Stages are immutable and adding one replaces the
# tuple, so the same tuple means the same layout.
_LAYOUTS: weakref.WeakKeyDictionary[Flow, tuple[tuple[Any, ...], list[list[Any]]]] = weakref.WeakKeyDictionary()
