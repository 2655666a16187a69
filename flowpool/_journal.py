"""Durable runs: an embedded SQLite journal that a crashed batch can resume from.

The settle loop records into a ``Journal`` from its own thread only. Writes are
buffered; while they keep arriving the loop hands them, at most every 10 ms
(``_recorder.COMMIT_EVERY``), to the journal's writer thread, which commits all
that waits in one transaction while the loop goes on. At the end of each stage
and around each compensation the loop commits itself and waits for it — always
before any later stage or compensation starts.

What a journal holds::

    meta          format marker and schema version
    runs          run id, flow, fingerprint, pickled input, status, phase, times,
                  the failure (stage, pickled error), the step layout
    steps         final record of each step: status, pickled value, error, attempts
    attempts      each attempt's start and end (a step's only attempt: its steps row)
    groups        group verdicts
    compensations each compensation's start and end

Trust: values and errors are pickled so that resume can restore them, so a
journal is as trusted as the code that wrote it. Beside each pickle the journal
keeps a short text form (the value's ``repr``, the error's type and message);
listing and inspecting runs (``runs()``, ``summary()``, ``flowpool runs``) read
only those and never unpickle. Only ``recorded()`` and ``result()`` (and so
resume) load pickles. The file is created readable by its owner only.

Where each part lives::

    _journal.py          Journal: opening a journal and reading it
    _journal_schema.py   the schema, format marker and version check; creating the file
    _journal_writer.py   JournalRecorder: what the settle loop writes, and when it commits
    _journal_commits.py  CommitQueue: the batches handed over, and the writer thread
    _journal_records.py  RecordedRun as read back; build_result; the definition's fingerprint
    _journal_text.py     pickles of errors, and the text forms beside pickles
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._errors import JournalError
from ._journal_records import RecordedRun, RecordedStep, build_result, fingerprint
from ._journal_schema import create_private, prepare
from ._journal_text import error_from_text, load_error
from ._journal_writer import JournalRecorder
from ._results import FlowResult, StepStatus

__all__ = ["Journal", "JournalRecorder", "JournalRun", "RecordedRun", "RecordedStep", "build_result", "fingerprint"]


@dataclass(frozen=True, slots=True)
class JournalRun:
    """One run as the journal knows it. ``status`` is ``"running"`` until it ends;
    times are seconds since the epoch."""

    run_id: str
    flow: str
    status: str
    started_at: float
    finished_at: float | None


class Journal:
    """An embedded SQLite journal of runs: list them, and read what they recorded.

    Pass it (or a path) as ``Flow.run(journal=...)`` to record a run in it;
    ``runs()`` and ``summary()`` are safe on any journal, ``result()`` unpickles.

    Args:
        path: the journal file; created if missing.

    Raises:
        JournalError: the file is not a journal, or is corrupt.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._recorder: JournalRecorder | None = None
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as error:
            raise JournalError(f"cannot open journal {self.path!r}: {error}") from None
        try:
            prepare(self._db, self.path)
        except JournalError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise JournalError(f"{self.path!r} is not a flowpool journal or is corrupt: {error}") from None

    # ── reading ─────────────────────────────────────────────────────────────────

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as error:
                raise JournalError(f"journal {self.path!r} cannot be read (corrupt?): {error}") from None

    def runs(self) -> list[JournalRun]:
        """Every run in the journal, oldest first."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT run_id, flow, status, started_at, finished_at FROM runs ORDER BY started_at, rowid"
            ).fetchall()
        return [JournalRun(*row) for row in rows]

    def _recorded(self, run_id: str, *, unpickle: bool) -> RecordedRun:
        # Without ``unpickle`` only the text forms are read: values are their repr (a
        # str), errors RemoteError stand-ins carrying the original type's name and message.
        value, error = ("value", "error") if unpickle else ("value_text", "error_text")
        run_input = "input" if unpickle else "input_text"
        with self._reading() as db:
            row = db.execute(
                f"SELECT flow, fingerprint, {run_input}, status, phase, outcome, failed_stage, {error} FROM runs "
                "WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise JournalError(f"journal {self.path!r} has no run {run_id!r}")
            steps = db.execute(
                f"SELECT step, status, {value}, value_kept, {error}, attempts, started_at, finished_at FROM steps "
                "WHERE run_id = ?",
                (run_id,),
            ).fetchall()
            groups = dict(db.execute("SELECT grp, status FROM groups WHERE run_id = ?", (run_id,)).fetchall())
            compensations = db.execute(
                f"SELECT step, state, {error}, attempts FROM compensations WHERE run_id = ? "
                "ORDER BY position IS NULL, position",
                (run_id,),
            ).fetchall()
            try:
                # Items keep no text form of their values (it would cost every item): without
                # ``unpickle`` an item's value is None.
                item_value = "value" if unpickle else "NULL"
                item_rows = db.execute(
                    f"SELECT map, idx, key, status, {item_value}, value_kept, {error}, attempts, started_at, "
                    "finished_at "
                    "FROM items WHERE run_id = ? ORDER BY map, idx",
                    (run_id,),
                ).fetchall()
            except sqlite3.OperationalError:  # a journal from before maps: no items table
                item_rows = []
        load = load_error if unpickle else error_from_text
        items: dict[str, list[tuple[Any, ...]]] = {}
        for map_name, index, key_text, item_status, stored, kept, item_error, attempts, started, finished in item_rows:
            loaded = None if unpickle else stored
            usable = bool(kept)
            if usable and unpickle:
                try:
                    loaded = pickle.loads(stored)
                except Exception:  # noqa: BLE001 - a class that no longer imports: run the item again
                    usable = False
            items.setdefault(map_name, []).append(
                (
                    index,
                    json.loads(key_text),
                    StepStatus(item_status),
                    loaded,
                    usable,
                    load(item_error),
                    attempts,
                    started,
                    finished,
                )
            )
        flow, fp, input_data, status, phase, outcome, failed_stage, run_error = row
        recorded_steps: dict[str, RecordedStep] = {}
        for name, step_status, stored, kept, step_error, attempts, started, finished in steps:
            loaded = None if unpickle else stored
            usable = bool(kept)
            if usable and unpickle:
                try:
                    loaded = None if stored is None else pickle.loads(stored)  # None is kept as NULL
                except Exception:  # noqa: BLE001 - a class that no longer imports: run the step again
                    usable = False
            recorded_steps[name] = RecordedStep(
                name, StepStatus(step_status), loaded, usable, load(step_error), attempts, started, finished
            )
        if unpickle:
            try:
                input_data = pickle.loads(input_data) if input_data is not None else None
            except Exception as problem:  # noqa: BLE001 - any unpickling failure means the same
                raise JournalError(f"the input of run {run_id!r} cannot be loaded: {problem}") from None
        return RecordedRun(
            run_id,
            flow,
            fp,
            input_data,
            status,
            phase,
            outcome,
            failed_stage,
            load(run_error),
            recorded_steps,
            groups,
            {name: (state, load(err), attempts) for name, state, err, attempts in compensations},
            tuple(name for name, state, _, _ in compensations if state in ("compensated", "failed")),
            items,
        )

    def result(self, run_id: str) -> FlowResult:
        """The recorded ``FlowResult`` of a finished run, its values and errors unpickled.

        Unpickling can run code: a journal is as trusted as the code that wrote it.
        To look at a journal from elsewhere, use ``summary``.

        Raises:
            JournalError: unknown run id, or the run has not finished (resume it).
        """
        return self._checked(run_id, lambda: self._result(self.recorder.recorded(run_id)))

    def summary(self, run_id: str) -> FlowResult:
        """The recorded ``FlowResult`` of a finished run, built from text only.

        Nothing is unpickled, so this is safe on any journal: each value is its stored
        ``repr`` (a ``str``, truncated) and each error a ``RemoteError`` carrying the
        original type's name and message.

        Raises:
            JournalError: unknown run id, or the run has not finished (resume it).
        """
        return self._checked(run_id, lambda: self._result(self._recorded(run_id, unpickle=False)))

    def _checked(self, run_id: str, build: Callable[[], FlowResult]) -> FlowResult:
        try:
            return build()
        except (ValueError, TypeError, KeyError) as error:  # e.g. a status no flowpool writes
            raise JournalError(f"run {run_id!r} in journal {self.path!r} is corrupt: {error}") from None

    def _result(self, recorded: RecordedRun) -> FlowResult:
        run_id = recorded.run_id
        if recorded.status == "running":
            raise JournalError(
                f"run {run_id!r} has not finished (its process may have died): resume it with Flow.resume"
            )
        with self._reading() as db:
            layout_text, started_at, finished_at, wall_offset = db.execute(
                "SELECT layout, started_at, finished_at, wall_offset FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            order = [
                row[0]
                for row in db.execute(
                    "SELECT step FROM compensations WHERE run_id = ? AND position IS NOT NULL ORDER BY position",
                    (run_id,),
                ).fetchall()
            ]
        layout = json.loads(layout_text)
        return build_result(recorded, layout, order, started_at, finished_at, wall_offset)

    @property
    def recorder(self) -> JournalRecorder:
        """The writing side, for flowpool's runner (one per journal)."""
        with self._lock:
            if self._recorder is None:
                self._recorder = JournalRecorder(self)
            return self._recorder

    def close(self) -> None:
        """Commit what was recorded and close the file."""
        recorder = self._recorder
        try:
            with self._lock:
                try:
                    if recorder is not None:
                        recorder.flush()
                finally:
                    self._db.close()
        finally:
            if recorder is not None:
                recorder.stop()  # outside the lock: its writer thread may be waiting for it

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"
