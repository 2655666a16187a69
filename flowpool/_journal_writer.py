"""The writing side of a journal: what the settle loop records, buffered, and committed
by ``flush`` (in the caller's thread) or behind the loop by a writer thread (``hand_off``)."""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
import warnings
import weakref
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ._clock import SYSTEM_CLOCK
from ._errors import FlowDefinitionError, JournalError
from ._journal_records import RecordedRun, fingerprint
from ._journal_schema import ITEMS_TABLE
from ._journal_text import error_text, portable_error, value_text
from ._results import CompensationResult, FlowResult, FlowStatus, StepResult, StepStatus

if TYPE_CHECKING:
    from ._definition import Flow
    from ._journal import Journal

__all__ = ["JournalRecorder"]

# IGNORE: a resumed run's attempt may start again under the number of one that ended
# in the process that died; that one's row is kept until this attempt ends.
_ATTEMPT_STARTED = "INSERT OR IGNORE INTO attempts (run_id, step, attempt, started_at) VALUES (?, ?, ?, ?)"
_STEP_FINISHED = (
    "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A completed step without an error, and one whose value is None (kept as NULL, which
# reads back as None); the latter's rows are written many to a statement (_none_completed).
_COMPLETED = (
    "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES (?, ?, 'completed', ?, ?, ?, NULL, NULL, ?, ?, ?)"
)
_NONE_COMPLETED = (
    "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES (?, ?, 'completed', NULL, 'None', 1, NULL, NULL, ?, ?, ?)"
)
_COMPLETED_STATUS = StepStatus.COMPLETED
# Rows of steps that completed with None, 64 or 8 to a statement: one SQLite call for
# many rows, so the writer thread lets go of the GIL (and waits to take it back) less
# often. 257 parameters at most: within every SQLite's limit (999 before 3.32).
_NONE_COMPLETED_MANY = {
    size: "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES "
    + ", ".join(["(?1, ?, 'completed', NULL, 'None', 1, NULL, NULL, ?, ?, ?)"] * size)
    for size in (64, 8)
}
_ATTEMPT_FINISHED = (
    "INSERT OR REPLACE INTO attempts (run_id, step, attempt, started_at, finished_at, status) VALUES (?, ?, ?, ?, ?, ?)"
)


# Seconds without work after which the writer thread ends (the next hand-off starts another).
_WRITER_IDLE = 1.0
# A hand-off finding records handed over this many seconds ago still not committed
# commits them itself: a loop busy in Python can starve the writer thread of the GIL,
# and records must be committed within 100 ms of their completion (SPEC §11, §12).
_WRITER_LATE = 0.05


class _Batch:
    """Records handed over together: statements and their rows, attempts' starts and ends."""

    __slots__ = ("handed_at", "done", "pending", "starts", "ends")

    def __init__(
        self,
        handed_at: float,
        done: dict[str, list[StepResult]],
        pending: dict[str, list[tuple[Any, ...]]],
        starts: dict[tuple[str, str, int], float],
        ends: dict[tuple[str, str], tuple[Any, ...]],
    ) -> None:
        self.handed_at = handed_at  # SYSTEM_CLOCK
        self.done = done
        self.pending = pending
        self.starts = starts
        self.ends = ends


class JournalRecorder:
    """The writing side of a ``Journal``: what the settle loop records (from its own
    thread only), buffered; and ``recorded``, what resume reads back, unpickled.

    What is recorded is committed by ``flush`` (in the caller's thread, durable when it
    returns) or, handed over by ``hand_off``, by a thread of the journal's own that
    commits behind the loop: the loop records and moves on while SQLite writes. Whoever
    commits holds the connection's lock while taking the batches handed over and writing
    them, so batches are committed in the order they were handed over.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.path = journal.path
        #: The connection's lock (one transaction at a time, reads too). Taken before ``_lock``.
        self._db_lock = journal._lock
        self._db = journal._db
        #: The buffers below and the batches handed over.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
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
        # Handed over, not yet committed, oldest first.
        self._batches: list[_Batch] = []
        # When the oldest batch not yet committed was handed over (SYSTEM_CLOCK), or None.
        self._behind_since: float | None = None
        self._writer: threading.Thread | None = None
        # Why the writer thread could not commit (its batches wait for the next commit).
        self._failure: JournalError | None = None
        self._closed = False

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

    def _take(self, now: float) -> None:
        """Move what was recorded into a batch of its own (holding ``_lock``)."""
        if not self._dirty:
            return
        batch = _Batch(now, self._done, self._pending, self._starts, self._ends)
        self._done, self._pending, self._starts, self._ends = {}, {}, {}, {}
        self._open.update(batch.starts)  # their start will be committed: so must their end
        self._batches.append(batch)
        if self._behind_since is None:
            self._behind_since = now
        self._dirty = False

    def hand_off(self) -> None:
        """Have what was recorded committed soon, by the journal's writer thread (or at
        once, here, if what was handed over before is late: see ``_WRITER_LATE``).

        Raises:
            JournalError: the writer thread could not commit earlier records (they are
                kept, and committed again by the next commit), or this commit failed.
        """
        now = SYSTEM_CLOCK.now()
        with self._lock:
            failure, self._failure = self._failure, None
            if failure is not None:
                raise failure
            behind = self._behind_since
            if behind is None or now - behind <= _WRITER_LATE:
                if self._dirty:
                    self._take(now)
                    if self._writer is None:
                        self._writer = threading.Thread(target=self._write_behind, name="flowpool-journal", daemon=True)
                        self._writer.start()
                    else:
                        self._work.notify()
                return
        # Waiting for the connection lets the writer thread finish; the rest is committed here.
        self.flush()

    def flush(self) -> None:
        """Commit what was recorded and handed over, in one transaction (durable when this returns)."""
        with self._db_lock:
            with self._lock:
                self._take(SYSTEM_CLOCK.now())
                batches, self._batches = self._batches, []
            self._commit(batches)
            with self._lock:
                self._failure = None  # what the writer thread could not commit is committed now

    def _write_behind(self) -> None:
        """The writer thread: commit what is handed over until idle for ``_WRITER_IDLE`` seconds."""
        while True:
            with self._lock:
                while not self._batches:
                    if self._closed or (not self._work.wait(_WRITER_IDLE) and not self._batches):
                        self._writer = None
                        return
            with self._db_lock:
                with self._lock:
                    batches, self._batches = self._batches, []
                try:
                    self._commit(batches)
                except JournalError as error:
                    with self._lock:
                        self._failure = error
                        self._writer = None
                    return

    def _commit(self, batches: list[_Batch]) -> None:
        """Write ``batches`` in one transaction (holding the connection's lock); if that
        fails, they go back to the front of the queue and nothing recorded is lost."""
        if not batches:
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for batch in batches:
                for run_id, records in batch.done.items():
                    _none_completed(db, run_id, records)
                if batch.starts:
                    db.executemany(_ATTEMPT_STARTED, [(*key, at) for key, at in batch.starts.items()])
                if batch.ends:
                    db.executemany(_ATTEMPT_FINISHED, batch.ends.values())
                for sql, rows in batch.pending.items():
                    if sql is ITEMS_TABLE:
                        db.execute(sql)
                        continue
                    db.executemany(sql, rows)
            db.execute("COMMIT")
            with self._lock:
                self._behind_since = self._batches[0].handed_at if self._batches else None
        except BaseException as error:  # an interrupt too: never leave a transaction open
            if db.in_transaction:
                db.execute("ROLLBACK")
            with self._lock:
                self._batches[:0] = batches
            if isinstance(error, sqlite3.Error):
                raise JournalError(f"cannot write to journal {self.path!r}: {error}") from None
            raise

    def stop(self) -> None:
        """No more records: the writer thread ends (the journal is closing)."""
        with self._lock:
            self._closed = True
            writer = self._writer
            self._work.notify()
        if writer is not None and writer is not threading.current_thread():
            writer.join()

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
                self._rows(_ATTEMPT_FINISHED).append(earlier)
            if key in self._open:  # its start has a row: so must its end
                self._open.discard(key)
                self._rows(_ATTEMPT_FINISHED).append(row)
            else:
                self._ends[(run_id, step)] = row
            self._dirty = True

    def step_finished(self, run_id: str, record: StepResult) -> None:
        # The commonest record, a step that completed with None, is kept as it is until
        # the commit makes its row (no row object while the run goes on).
        done = record.status is _COMPLETED_STATUS and record.value is None and record.error is None
        sql, row = (_NONE_COMPLETED, None) if done else self._step_row(run_id, record)
        with self._lock:
            if self._ends:
                end = self._ends.pop((run_id, record.name), None)
                # The step's row records its only attempt (a StepStatus equals its value).
                if end is not None and not (record.attempts == end[2] == 1 and record.status == end[5]):
                    self._rows(_ATTEMPT_FINISHED).append(end)
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


def _none_completed(db: sqlite3.Connection, run_id: str, records: list[StepResult]) -> None:
    """Write the rows of ``run_id``'s steps that completed with None."""
    start, count = 0, len(records)
    for size, sql in _NONE_COMPLETED_MANY.items():
        while count - start >= size:
            db.execute(sql, [run_id, *chain.from_iterable(map(_ROW_FIELDS, records[start : start + size]))])
            start += size
    if start < count:
        db.executemany(_NONE_COMPLETED, [(run_id, *_ROW_FIELDS(record)) for record in records[start:]])


_ROW_FIELDS = attrgetter("name", "attempts", "started_at", "finished_at")


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
