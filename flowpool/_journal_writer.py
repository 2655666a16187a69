"""The writing side of a journal: what the settle loop records, buffered, and committed
by ``flush`` (in the caller's thread) or behind the loop by a writer thread (``hand_off``)."""

from __future__ import annotations

import json
import pickle
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Any

from ._clock import SYSTEM_CLOCK
from ._errors import FlowDefinitionError
from ._journal_commits import ATTEMPT_FINISHED, Batch, CommitQueue
from ._journal_records import RecordedRun, fingerprint
from ._journal_schema import ITEMS_TABLE
from ._journal_text import error_text, portable_error, value_text
from ._results import CompensationResult, FlowResult, FlowStatus, StepResult, StepStatus

if TYPE_CHECKING:
    from ._definition import Flow
    from ._journal import Journal

__all__ = ["JournalRecorder"]

_STEP_FINISHED = (
    "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A completed step without an error (one whose value is None: _journal_commits).
_COMPLETED = (
    "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES (?, ?, 'completed', ?, ?, ?, NULL, NULL, ?, ?, ?)"
)
_COMPLETED_STATUS = StepStatus.COMPLETED


class JournalRecorder:
    """The writing side of a ``Journal``: what the settle loop records (from its own
    thread only), buffered; and ``recorded``, what resume reads back, unpickled.

    What is recorded is committed by ``flush`` (in the caller's thread, durable when it
    returns) or, handed over by ``hand_off``, by a thread of the journal's own that
    commits behind the loop (``_journal_commits``): the loop records and moves on while
    SQLite writes.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.path = journal.path
        #: The buffers below and the batches handed over.
        self._lock = threading.Lock()
        self._commits = CommitQueue(journal.path, journal._db, journal._lock, self._lock)
        self._warned_values: set[str] = set()
        self._dirty = False
        self._items_table = False
        # Run id → its steps that completed with None (their rows are made at the commit).
        self._done: dict[str, list[StepResult]] = {}
        # Insertion-ordered: statement kinds run in the order they were first recorded.
        self._pending: dict[str, list[tuple[Any, ...]]] = {}
        # Starts of attempts not yet handed over: one that ends before the next hand-off
        # is written once, by its end (most attempts of short steps).
        self._starts: dict[tuple[str, str, int], float] = {}
        # The end of each step's latest attempt, not yet handed over. A step's only attempt
        # is recorded by the step's own row (same times and status), which usually
        # comes before the next hand-off: then the attempt has no row of its own.
        self._ends: dict[tuple[str, str], tuple[Any, ...]] = {}
        # Attempts whose start is handed over (so will be committed) and whose end is
        # not: their end gets a row.
        self._open: set[tuple[str, str, int]] = set()

    def recorded(self, run_id: str) -> RecordedRun:
        """Everything recorded about ``run_id``, values and errors unpickled (for resume).

        Unpickling can run code: use it only on a journal you trust.
        """
        return self._journal._recorded(run_id, unpickle=True)

    # ── writing (from the settle loop's thread) ─────────────────────────────────

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        # Buffered: statements of one kind go to SQLite together (executemany) at the commit.
        with self._lock:
            self._pending.setdefault(sql, []).append(args)
            self._dirty = True

    @property
    def dirty(self) -> bool:
        """True when records wait to be handed over or committed."""
        return self._dirty

    def _take(self, now: float) -> Batch | None:
        """What was recorded, as a batch handed over at ``now`` (holding ``_lock``)."""
        if not self._dirty:
            return None
        batch = Batch(now, self._done, self._pending, self._starts, self._ends)
        self._done, self._pending, self._starts, self._ends = {}, {}, {}, {}
        self._open.update(batch.starts)  # their start will be committed: so must their end
        self._dirty = False
        return batch

    def hand_off(self) -> None:
        """Have what was recorded committed soon, by the journal's writer thread.

        Raises:
            JournalError: the writer thread could not commit earlier records (they are
                kept, and committed again by the next commit), or a commit failed.
        """
        self._commits.hand_off(self._take)

    def flush(self) -> None:
        """Commit what was recorded and handed over, in one transaction (durable when this returns)."""
        self._commits.flush(self._take)

    def stop(self) -> None:
        """No more records: the writer thread ends (the journal is closing)."""
        self._commits.stop()

    def begin_run(self, run_id: str, flow: Flow, run_input: Any, layout: list[list[Any]]) -> None:
        """Record a new run (committed at once)."""
        try:
            input_data = pickle.dumps(run_input)
        except Exception as error:  # noqa: BLE001 - any pickling failure means the same
            raise FlowDefinitionError(
                f"a journaled run needs an input that can be pickled: {error}", flow=flow.name, argument="input"
            ) from None
        self._write(
            "INSERT INTO runs (run_id, flow, fingerprint, input, input_text, layout, status, phase, started_at, "
            "wall_offset) VALUES (?, ?, ?, ?, ?, ?, 'running', 'stages', ?, ?)",
            (
                run_id,
                flow.name,
                fingerprint(flow),
                input_data,
                value_text(run_input),
                _layout_text(flow, layout),
                time.time(),
                # The system clock's, until the run ends with its own: a run that dies
                # keeps one, for the times in its steps' rows.
                SYSTEM_CLOCK.wall() - SYSTEM_CLOCK.now(),
            ),
        )
        self.flush()

    def reopen_run(self, run_id: str) -> None:
        """A resumed run starts again: forget attempts that never ended."""
        self._write("DELETE FROM attempts WHERE run_id = ? AND finished_at IS NULL", (run_id,))
        self.flush()

    def attempt_started(self, run_id: str, step: str, attempt: int) -> None:
        with self._lock:
            self._starts[(run_id, step, attempt)] = time.time()
            self._dirty = True

    def attempt_finished(self, run_id: str, step: str, attempt: int, status: str, seconds: float | None) -> None:
        """An attempt ended after ``seconds`` (one row, whether or not its start was recorded)."""
        now = time.time()
        key = (run_id, step, attempt)
        started = None if seconds is None else now - seconds
        row = (run_id, step, attempt, started, now, status)
        with self._lock:
            self._starts.pop(key, None)  # its end is the whole record
            earlier = self._ends.pop((run_id, step), None)
            if earlier is not None:  # a step's earlier attempt has its own row
                self._rows(ATTEMPT_FINISHED).append(earlier)
            if key in self._open:  # its start has a row: so must its end
                self._open.discard(key)
                self._rows(ATTEMPT_FINISHED).append(row)
            else:
                self._ends[(run_id, step)] = row
            self._dirty = True

    def step_finished(self, run_id: str, record: StepResult) -> None:
        # The commonest record, a step that completed with None, is kept as it is until
        # the commit makes its row (no row object while the run goes on).
        done = record.status is _COMPLETED_STATUS and record.value is None and record.error is None
        sql, row = ("", None) if done else self._step_row(run_id, record)
        with self._lock:
            if self._ends:
                end = self._ends.pop((run_id, record.name), None)
                # The step's row records its only attempt (a StepStatus equals its value).
                if end is not None and not (record.attempts == end[2] == 1 and record.status == end[5]):
                    self._rows(ATTEMPT_FINISHED).append(end)
            if row is None:
                records = self._done.get(run_id)
                if records is None:
                    records = self._done[run_id] = []
                records.append(record)
            else:
                self._rows(sql).append(row)
            self._dirty = True

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows waiting for ``sql`` (holding ``_lock``)."""
        rows = self._pending.get(sql)
        if rows is None:
            rows = self._pending[sql] = []
        return rows

    def _step_row(self, run_id: str, record: StepResult) -> tuple[str, tuple[Any, ...]]:
        times = (record.started_at, record.finished_at)
        if record.status is _COMPLETED_STATUS and record.error is None:
            # The commonest record: its NULLs are written in the statement, not bound
            # (binding None costs sqlite3 as much as several other values).
            value = record.value
            data = self._pickled(record.name, value)
            kept = int(data is not None)
            return _COMPLETED, (run_id, record.name, data, value_text(value), kept, record.attempts, *times)
        completed = record.status is StepStatus.COMPLETED
        data = self._pickled(record.name, record.value) if completed else None
        return _STEP_FINISHED, (
            run_id,
            record.name,
            record.status.value,
            data,
            value_text(record.value) if completed else None,
            int(completed and (record.value is None or data is not None)),
            portable_error(record.error),
            error_text(record.error),
            record.attempts,
            *times,
        )

    def _pickled(self, step: str, value: Any) -> bytes | None:
        """``value`` pickled, or None (with a warning, once a step) when it cannot be."""
        if value is None:
            return None
        try:
            return pickle.dumps(value)
        except Exception as error:  # noqa: BLE001 - the step completes; resume runs it again
            if step not in self._warned_values:
                self._warned_values.add(step)
                warnings.warn(
                    f"flowpool journal: the value of step {step!r} cannot be pickled ({error}); "
                    f"a resumed run will execute this step again",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return None

    def item_finished(
        self,
        run_id: str,
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
        """A map's item settled: its status, and its value if it completed."""
        if not self._items_table:
            self._items_table = True
            self._write(ITEMS_TABLE, ())
        data: bytes | None = None
        kept = 0
        if status is StepStatus.COMPLETED:
            try:
                data = pickle.dumps(value)
                kept = 1
            except Exception as problem:  # noqa: BLE001 - the item completes; resume runs it again
                if map_name not in self._warned_values:
                    self._warned_values.add(map_name)
                    warnings.warn(
                        f"flowpool journal: a value of map {map_name!r} cannot be pickled ({problem}); "
                        f"a resumed run will execute that item again",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        self._write(
            "INSERT OR REPLACE INTO items (run_id, map, idx, key, status, value, value_kept, error, error_text, "
            "attempts, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                map_name,
                index,
                json.dumps(key),
                status.value,
                data,
                kept,
                portable_error(error),
                error_text(error),
                attempts,
                started_at,
                finished_at,
            ),
        )

    def group_finished(self, run_id: str, group: str, status: str) -> None:
        self._write("INSERT OR REPLACE INTO groups VALUES (?, ?, ?)", (run_id, group, status))

    def compensating(self, run_id: str, outcome: str, failed_stage: str | None, error: BaseException | None) -> None:
        """The run failed (or was interrupted) and enters its compensation phase."""
        self._write(
            "UPDATE runs SET phase = 'compensating', outcome = ?, failed_stage = ?, error = ?, error_text = ? "
            "WHERE run_id = ?",
            (outcome, failed_stage, portable_error(error), error_text(error), run_id),
        )
        self.flush()

    def compensation_forgotten(self, run_id: str, step: str) -> None:
        """``step`` completed again after an earlier attempt of its subflow undid it: its
        compensation row no longer says anything (committed with the completion)."""
        self._write("DELETE FROM compensations WHERE run_id = ? AND step = ?", (run_id, step))

    def compensation_started(self, run_id: str, step: str) -> None:
        self._write(
            "INSERT INTO compensations (run_id, step, state, attempts, started_at) VALUES (?, ?, 'running', 0, ?) "
            "ON CONFLICT (run_id, step) DO UPDATE SET state = 'running', started_at = excluded.started_at",
            (run_id, step, time.time()),
        )
        self.flush()

    def compensation_finished(
        self, run_id: str, step: str, result: CompensationResult | None, position: int | None
    ) -> None:
        state = "abandoned" if result is None else result.status
        self._write(
            "UPDATE compensations SET state = ?, error = ?, error_text = ?, attempts = ?, finished_at = ?, "
            "position = ? WHERE run_id = ? AND step = ?",
            (
                state,
                portable_error(result.error) if result is not None else None,
                error_text(result.error) if result is not None else None,
                result.attempts if result is not None else 0,
                time.time(),
                position,
                run_id,
                step,
            ),
        )
        self.flush()

    def end_run(self, result: FlowResult) -> None:
        """Record how the run ended (committed at once), and its wall offset: the run's
        step times are on its clock; the offset turns them into wall-clock times."""
        error = result.error if result.status is not FlowStatus.CANCELLED else None
        self._write(
            "UPDATE runs SET status = ?, finished_at = ?, failed_stage = ?, error = ?, error_text = ?, "
            "wall_offset = ? WHERE run_id = ?",
            (
                result.status.value,
                time.time(),
                result.failed_stage,
                portable_error(error),
                error_text(error),
                result.wall_offset,
                result.run_id,
            ),
        )
        self.flush()
        with self._lock:  # attempts abandoned still running: their end, if any, is not awaited
            self._open = {key for key in self._open if key[0] != result.run_id}


def _layout_text(flow: Flow, layout: list[list[Any]]) -> str:
    """``layout`` as JSON; a batch running one flow many times passes the same list
    (``_recorder.layout``), made into text once."""
    known = _LAYOUT_TEXTS.get(flow)
    if known is not None and known[0] is layout:
        return known[1]
    text = json.dumps(layout)
    _LAYOUT_TEXTS[flow] = (layout, text)
    return text


_LAYOUT_TEXTS: weakref.WeakKeyDictionary[Flow, tuple[list[list[Any]], str]] = weakref.WeakKeyDictionary()
