"""Committing a journal's records: the batches the loop hands over, and the writer
thread that commits them behind it.

    loop (JournalRecorder)                        CommitQueue
    ──────────────────────                        ───────────
    hand_off ── take a batch ──▶ batches ──▶ writer thread: BEGIN … COMMIT, all that waits
    flush ───── take a batch ──▶ batches ──▶ committed in the caller's thread (after the
                                             writer thread's commit), durable on return

Whoever commits holds the connection's lock while taking the batches and writing them,
so batches are committed in the order they were handed over.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from itertools import chain
from operator import attrgetter
from typing import Any

from ._clock import SYSTEM_CLOCK
from ._errors import JournalError
from ._journal_schema import ITEMS_TABLE
from ._results import StepResult

__all__ = ["ATTEMPT_FINISHED", "Batch", "CommitQueue"]

# IGNORE: a resumed run's attempt may start again under the number of one that ended
# in the process that died; that one's row is kept until this attempt ends.
ATTEMPT_STARTED = "INSERT OR IGNORE INTO attempts (run_id, step, attempt, started_at) VALUES (?, ?, ?, ?)"
ATTEMPT_FINISHED = (
    "INSERT OR REPLACE INTO attempts (run_id, step, attempt, started_at, finished_at, status) VALUES (?, ?, ?, ?, ?, ?)"
)
# A step that completed with None (kept as NULL, which reads back as None).
_NONE_COMPLETED = (
    "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES (?, ?, 'completed', NULL, 'None', 1, NULL, NULL, ?, ?, ?)"
)
# Rows of steps that completed with None, 64 or 8 to a statement: one SQLite call for
# many rows, so the writer thread lets go of the GIL (and waits to take it back) less
# often. 257 parameters at most: within every SQLite's limit (999 before 3.32).
_NONE_COMPLETED_MANY = {
    size: "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
    "attempts, started_at, finished_at) VALUES "
    + ", ".join(["(?1, ?, 'completed', NULL, 'None', 1, NULL, NULL, ?, ?, ?)"] * size)
    for size in (64, 8)
}

# Seconds without work after which the writer thread ends (the next hand-off starts another).
_WRITER_IDLE = 1.0
# A hand-off finding records handed over this many seconds ago still not committed
# commits them itself: a loop busy in Python can starve the writer thread of the GIL,
# and records must be committed within 100 ms of their completion (SPEC §11, §12).
_WRITER_LATE = 0.05


class Batch:
    """Records handed over together: steps that completed with None (run id → records),
    statements and their rows, attempts' starts and ends."""

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


#: Takes what was recorded as a batch handed over at the given time (None: nothing was),
#: called holding the queue's lock.
Take = Callable[[float], "Batch | None"]


class CommitQueue:
    """The batches of one journal not yet committed, oldest first, and the thread that
    commits them (started when needed, gone after ``_WRITER_IDLE`` seconds without work).

    Args:
        path: the journal's file, for messages.
        db: the journal's connection.
        db_lock: the connection's lock (one transaction at a time, reads too), taken
            before ``lock``.
        lock: the lock of the recorder's buffers, which guards this queue too: taking a
            batch and queueing it is one step.
    """

    def __init__(self, path: str, db: sqlite3.Connection, db_lock: threading.RLock, lock: threading.Lock) -> None:
        self.path = path
        self._db = db
        self._db_lock = db_lock
        self._lock = lock
        self._work = threading.Condition(lock)
        self._batches: list[Batch] = []
        # When the oldest batch not yet committed was handed over (SYSTEM_CLOCK), or None.
        self._behind_since: float | None = None
        self._writer: threading.Thread | None = None
        # Why the writer thread could not commit (its batches wait for the next commit).
        self._failure: JournalError | None = None
        self._closed = False

    def _queue(self, batch: Batch | None) -> bool:
        if batch is None:
            return False
        self._batches.append(batch)
        if self._behind_since is None:
            self._behind_since = batch.handed_at
        return True

    def hand_off(self, take: Take) -> None:
        """Have ``take``'s batch committed soon, by the writer thread (or at once, here,
        if what was handed over before is late: see ``_WRITER_LATE``).

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
                if self._queue(take(now)):
                    if self._writer is None:
                        self._writer = threading.Thread(target=self._write_behind, name="flowpool-journal", daemon=True)
                        self._writer.start()
                    else:
                        self._work.notify()
                return
        # Waiting for the connection lets the writer thread finish; the rest is committed here.
        self.flush(take)

    def flush(self, take: Take) -> None:
        """Commit ``take``'s batch and all handed over before it, in one transaction
        (durable when this returns)."""
        with self._db_lock:
            with self._lock:
                self._queue(take(SYSTEM_CLOCK.now()))
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

    def _commit(self, batches: list[Batch]) -> None:
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
                    db.executemany(ATTEMPT_STARTED, [(*key, at) for key, at in batch.starts.items()])
                if batch.ends:
                    db.executemany(ATTEMPT_FINISHED, batch.ends.values())
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
