"""Durable runs: an embedded SQLite journal that a crashed batch can resume from.

The settle loop records into a ``Journal`` from its own thread only. Writes are
buffered and committed in one transaction whenever the loop is about to wait
(so completions that arrive together share a transaction), at the end of each
stage, and around each compensation — always before any later stage or
compensation starts.

What a journal holds::

    meta          format marker and schema version
    runs          run id, flow, fingerprint, pickled input, status, phase, times,
                  the failure (stage, pickled error), the step layout
    steps         final record of each step: status, pickled value, error, attempts
    attempts      each attempt's start and end
    groups        group verdicts
    compensations each compensation's start and end

Trust: values and errors are pickled so that resume can restore them, so a
journal is as trusted as the code that wrote it. Beside each pickle the journal
keeps a short text form (the value's ``repr``, the error's type and message);
listing and inspecting runs (``runs()``, ``summary()``, ``flowpool runs``) read
only those and never unpickle. Only ``recorded()`` and ``result()`` (and so
resume) load pickles. The file is created readable by its owner only.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import reprlib
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._clock import SYSTEM_CLOCK
from ._errors import FlowDefinitionError, JournalError, RemoteError, StepCancelledError
from ._maps import MapResult
from ._results import (
    CompensationResult,
    FlowResult,
    FlowStatus,
    GroupResult,
    GroupStatus,
    StepResult,
    StepStatus,
    count_statuses,
)

if TYPE_CHECKING:
    from ._definition import Flow

__all__ = ["Journal", "JournalRun", "fingerprint"]

_FORMAT = "flowpool-journal"
# 2: text forms of values and errors beside their pickles.
_VERSION = 2

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    input BLOB,
    input_text TEXT,
    layout TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL,
    outcome TEXT,
    failed_stage TEXT,
    error BLOB,
    error_text TEXT,
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    value BLOB,
    value_text TEXT,
    value_kept INTEGER NOT NULL,
    error BLOB,
    error_text TEXT,
    attempts INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL,
    status TEXT,
    PRIMARY KEY (run_id, step, attempt)
);
CREATE TABLE groups (
    run_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (run_id, grp)
);
CREATE TABLE compensations (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    error BLOB,
    error_text TEXT,
    attempts INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL,
    position INTEGER,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS items (
    run_id TEXT NOT NULL,
    map TEXT NOT NULL,
    idx INTEGER NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    value BLOB,
    value_kept INTEGER NOT NULL,
    error BLOB,
    error_text TEXT,
    attempts INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, map, idx)
);
"""

#: Journals made before maps existed gain the items table when a run first records an item.
_ITEMS_TABLE = """CREATE TABLE IF NOT EXISTS items (
    run_id TEXT NOT NULL,
    map TEXT NOT NULL,
    idx INTEGER NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    value BLOB,
    value_kept INTEGER NOT NULL,
    error BLOB,
    error_text TEXT,
    attempts INTEGER NOT NULL,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (run_id, map, idx)
)"""


@dataclass(frozen=True, slots=True)
class JournalRun:
    """One run as the journal knows it. ``status`` is ``"running"`` until it ends;
    times are seconds since the epoch."""

    run_id: str
    flow: str
    status: str
    started_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """A step's final record as stored (``value_kept`` False: its value could not be pickled)."""

    name: str
    status: StepStatus
    value: Any
    value_kept: bool
    error: BaseException | None
    attempts: int
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """What ``Flow.resume`` needs to know about a run."""

    run_id: str
    flow: str
    fingerprint: str
    input: Any
    status: str
    phase: str
    outcome: str | None
    failed_stage: str | None
    error: BaseException | None
    steps: Mapping[str, RecordedStep]
    groups: Mapping[str, str]
    compensations: Mapping[str, tuple[str, BaseException | None, int]]
    compensation_order: tuple[str, ...] = ()
    #: map name → rows ``(index, key, status, value, value_kept, error, attempts, started_at, finished_at)``.
    items: Mapping[str, list[tuple[Any, ...]]] = field(default_factory=dict)


def fingerprint(flow: Flow) -> str:
    """A hash of the definition's structure (``describe_structure``): names, stage kinds
    and order, options and policies — not the module its functions come from."""
    from ._definition import describe_structure

    text = json.dumps(describe_structure(flow), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def portable_error(error: BaseException | None) -> bytes | None:
    """Pickle an error so that it loads back; one that cannot becomes a ``RemoteError``."""
    if error is None:
        return None
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - described in plain data instead
        import traceback

        text = "".join(traceback.format_exception(error))
        return pickle.dumps(RemoteError(type(error).__qualname__, str(error), text))


# Text forms stay short: enough to recognise a value or an error in a listing.
_TEXT_LIMIT = 300
_SHORT = reprlib.Repr()
_SHORT.maxlevel = 4
_SHORT.maxstring = _SHORT.maxother = _TEXT_LIMIT
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 12


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


def value_text(value: Any) -> str:
    """The short text form kept beside a pickled value: its ``repr``, truncated."""
    try:
        return _clip(_SHORT.repr(value))
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the record
        return f"<{type(value).__qualname__} object (its repr failed)>"


def error_text(error: BaseException | None) -> str | None:
    """The short text form kept beside a pickled error: its type's name and message, as JSON."""
    if error is None:
        return None
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the record
        message = "(its message could not be read)"
    return json.dumps({"type": type(error).__qualname__, "message": _clip(message)})


def _error_from_text(text: str | None) -> BaseException | None:
    """A stand-in for a recorded error, built from its text form only (never unpickled)."""
    if text is None:
        return None
    try:
        shown = json.loads(text)
        return RemoteError(str(shown["type"]), str(shown["message"]), "")
    except (ValueError, KeyError, TypeError):
        return RemoteError("error", _clip(text), "")


def _create_private(path: str) -> None:
    """Create a missing journal file readable and writable by its owner only.

    SQLite gives the ``-wal`` and ``-shm`` files it creates later the same mode.
    An existing file is left as it is (its mode is the user's choice).
    """
    if path in ("", ":memory:"):
        return  # SQLite's private in-memory or temporary databases: no file of ours
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise JournalError(f"cannot create journal {path!r}: {error.strerror or error}") from None
    os.close(fd)


def _load_error(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        error: BaseException = pickle.loads(data)
    except Exception as problem:  # noqa: BLE001 - a class that no longer imports
        return RemoteError(type(problem).__name__, f"the recorded error could not be loaded: {problem}", "")
    return error


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
        _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as error:
            raise JournalError(f"cannot open journal {self.path!r}: {error}") from None
        try:
            self._prepare()
        except JournalError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise JournalError(f"{self.path!r} is not a flowpool journal or is corrupt: {error}") from None

    def _prepare(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA synchronous = NORMAL")  # this connection only: writes nothing
        if self._is_journal():
            return  # an existing journal: opening it writes nothing
        # A new, empty file. The schema and its marker are created in one transaction,
        # so no other process ever sees tables without the marker; the check is made
        # again under the write lock, since another process may have created the
        # journal between our look and our lock.
        db.execute("BEGIN IMMEDIATE")
        try:
            created = not self._is_journal()
            if created:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)", (_FORMAT, str(_VERSION)))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if created:
            self._use_wal()

    def _use_wal(self) -> None:
        """Switch a journal just created to WAL (persistent: done once, by its creator).

        The switch needs the file to itself and SQLite does not wait for that: other
        processes that opened the new journal at the same moment hold it for a
        moment, so try again for a while. Connections opened meanwhile notice the
        switch at their next transaction. A journal left in rollback mode (held for
        longer than that) still works, with less concurrency.
        """
        deadline = SYSTEM_CLOCK.now() + 30.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error):
                    raise
            if SYSTEM_CLOCK.now() > deadline:
                return
            SYSTEM_CLOCK.sleep(0.01)

    def _is_journal(self) -> bool:
        """True for a complete journal of this format, False for an empty file (reads only).

        Raises:
            JournalError: another kind of SQLite file, or a journal format this flowpool
                does not read.
        """
        db = self._db
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return False
        if "meta" not in tables:
            raise JournalError(f"{self.path!r} is an SQLite file but not a flowpool journal")
        marker = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if marker.get("format") != _FORMAT:
            raise JournalError(f"{self.path!r} is an SQLite file but not a flowpool journal")
        try:
            version = int(marker.get("version", ""))
        except ValueError:
            raise JournalError(f"{self.path!r} has an unreadable journal version {marker.get('version')!r}") from None
        if version > _VERSION:
            raise JournalError(
                f"{self.path!r} was written by a newer flowpool (journal format v{version}; this flowpool "
                f"reads v{_VERSION}): upgrade flowpool to read it"
            )
        if version < _VERSION:
            raise JournalError(
                f"{self.path!r} was written by an earlier development version of flowpool (journal format "
                f"v{version}; this flowpool reads v{_VERSION}): start a new journal file"
            )
        return True

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
                item_rows = db.execute(
                    f"SELECT map, idx, key, status, {value}, value_kept, {error}, attempts, started_at, finished_at "
                    "FROM items WHERE run_id = ? ORDER BY map, idx",
                    (run_id,),
                ).fetchall()
            except sqlite3.OperationalError:  # a journal from before maps: no items table
                item_rows = []
        load_error = _load_error if unpickle else _error_from_text
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
                    load_error(item_error),
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
                    loaded = pickle.loads(stored)
                except Exception:  # noqa: BLE001 - a class that no longer imports: run the step again
                    usable = False
            recorded_steps[name] = RecordedStep(
                name, StepStatus(step_status), loaded, usable, load_error(step_error), attempts, started, finished
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
            load_error(run_error),
            recorded_steps,
            groups,
            {name: (state, load_error(err), attempts) for name, state, err, attempts in compensations},
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
            layout_text, started_at, finished_at = db.execute(
                "SELECT layout, started_at, finished_at FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            order = [
                row[0]
                for row in db.execute(
                    "SELECT step FROM compensations WHERE run_id = ? AND position IS NOT NULL ORDER BY position",
                    (run_id,),
                ).fetchall()
            ]
        layout = json.loads(layout_text)
        return build_result(recorded, layout, order, started_at, finished_at)

    @property
    def recorder(self) -> JournalRecorder:
        """The writing side, for flowpool's runner (one per journal)."""
        with self._lock:
            if self._recorder is None:
                self._recorder = JournalRecorder(self)
            return self._recorder

    def close(self) -> None:
        """Commit what was recorded and close the file."""
        with self._lock:
            try:
                if self._recorder is not None:
                    self._recorder.flush()
            finally:
                self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"


class JournalRecorder:
    """The writing side of a ``Journal``: what the settle loop records (from its own
    thread only), buffered and committed at ``flush``; and ``recorded``, what resume
    reads back, unpickled."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.path = journal.path
        self._lock = journal._lock
        self._db = journal._db
        self._warned_values: set[str] = set()
        self._dirty = False
        self._items_table = False
        # Insertion-ordered: statement kinds run in the order they were first recorded.
        self._pending: dict[str, list[tuple[Any, ...]]] = {}

    def recorded(self, run_id: str) -> RecordedRun:
        """Everything recorded about ``run_id``, values and errors unpickled (for resume).

        Unpickling can run code: use it only on a journal you trust.
        """
        return self._journal._recorded(run_id, unpickle=True)

    # ── writing (from the settle loop's thread) ─────────────────────────────────

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        # Buffered: statements of one kind go to SQLite together (executemany) at flush.
        with self._lock:
            self._pending.setdefault(sql, []).append(args)
            self._dirty = True

    @property
    def dirty(self) -> bool:
        """True when records wait to be committed."""
        return self._dirty

    def flush(self) -> None:
        """Commit what was recorded since the last flush, in one transaction."""
        with self._lock:
            if not self._dirty:
                return
            pending, self._pending = self._pending, {}
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                for sql, rows in pending.items():
                    if sql is _ITEMS_TABLE:
                        db.execute(sql)
                        continue
                    db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException as error:  # an interrupt too: never leave a transaction open
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._pending = pending  # nothing recorded is lost (we hold the lock: no newer rows)
                if isinstance(error, sqlite3.Error):
                    raise JournalError(f"cannot write to journal {self.path!r}: {error}") from None
                raise
            self._dirty = False

    def begin_run(self, run_id: str, flow: Flow, run_input: Any, layout: list[list[Any]]) -> None:
        """Record a new run (committed at once)."""
        try:
            input_data = pickle.dumps(run_input)
        except Exception as error:  # noqa: BLE001 - any pickling failure means the same
            raise FlowDefinitionError(
                f"a journaled run needs an input that can be pickled: {error}", flow=flow.name, argument="input"
            ) from None
        self._write(
            "INSERT INTO runs (run_id, flow, fingerprint, input, input_text, layout, status, phase, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'running', 'stages', ?)",
            (
                run_id,
                flow.name,
                fingerprint(flow),
                input_data,
                value_text(run_input),
                json.dumps(layout),
                time.time(),
            ),
        )
        self.flush()

    def reopen_run(self, run_id: str) -> None:
        """A resumed run starts again: forget attempts that never ended."""
        self._write("DELETE FROM attempts WHERE run_id = ? AND finished_at IS NULL", (run_id,))
        self.flush()

    def attempt_started(self, run_id: str, step: str, attempt: int) -> None:
        self._write(
            # IGNORE: in one flush, the row of an attempt that already ended must win.
            "INSERT OR IGNORE INTO attempts (run_id, step, attempt, started_at) VALUES (?, ?, ?, ?)",
            (run_id, step, attempt, time.time()),
        )

    def attempt_finished(self, run_id: str, step: str, attempt: int, status: str, seconds: float | None) -> None:
        """An attempt ended after ``seconds`` (one row, whether or not its start was recorded)."""
        now = time.time()
        self._write(
            "INSERT OR REPLACE INTO attempts (run_id, step, attempt, started_at, finished_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, step, attempt, None if seconds is None else now - seconds, now, status),
        )

    def step_finished(self, run_id: str, record: StepResult) -> None:
        value: bytes | None = None
        text: str | None = None
        kept = 0
        if record.status is StepStatus.COMPLETED:
            text = value_text(record.value)
            try:
                value = pickle.dumps(record.value)
                kept = 1
            except Exception as error:  # noqa: BLE001 - the step completes; resume runs it again
                if record.name not in self._warned_values:
                    self._warned_values.add(record.name)
                    warnings.warn(
                        f"flowpool journal: the value of step {record.name!r} cannot be pickled ({error}); "
                        f"a resumed run will execute this step again",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        self._write(
            "INSERT OR REPLACE INTO steps (run_id, step, status, value, value_text, value_kept, error, error_text, "
            "attempts, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                record.name,
                record.status.value,
                value,
                text,
                kept,
                portable_error(record.error),
                error_text(record.error),
                record.attempts,
                record.started_at,
                record.finished_at,
            ),
        )

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
            self._write(_ITEMS_TABLE, ())
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
        """Record how the run ended (committed at once)."""
        error = result.error if result.status is not FlowStatus.CANCELLED else None
        self._write(
            "UPDATE runs SET status = ?, finished_at = ?, failed_stage = ?, error = ?, error_text = ? WHERE run_id = ?",
            (
                result.status.value,
                time.time(),
                result.failed_stage,
                portable_error(error),
                error_text(error),
                result.run_id,
            ),
        )
        self.flush()


def build_result(
    recorded: RecordedRun,
    layout: list[list[Any]],
    compensation_order: list[str],
    started_at: float | None,
    finished_at: float | None,
) -> FlowResult:
    """A ``FlowResult`` from journal records. ``layout`` lists ``[step, group]`` pairs in
    declaration order."""
    steps: dict[str, StepResult] = {}
    groups: dict[str, GroupResult] = {}
    members: dict[str, list[str]] = {}
    compensated: list[str] = []
    not_compensated: list[str] = []
    maps: dict[str, MapResult] = {}
    for entry in layout:
        name, group = entry[0], entry[1]
        if entry[2:] == ["map"]:
            mapped = maps[name] = _recorded_map(name, recorded)
            groups[name] = GroupResult(name, mapped.status, (), mapped.counts)
            continue
        if group is not None:
            members.setdefault(group, []).append(name)
        record = recorded.steps.get(name)
        compensation = None
        comp = recorded.compensations.get(name)
        if comp is not None and comp[0] in ("compensated", "failed"):
            compensation = CompensationResult(comp[0], comp[1], comp[2])
        if record is None:
            steps[name] = StepResult(name, StepStatus.SKIPPED, group=group)
            continue
        steps[name] = StepResult(
            name,
            record.status,
            record.value if record.status is StepStatus.COMPLETED else None,
            record.error,
            record.attempts,
            record.started_at,
            record.finished_at,
            group,
            compensation,
        )
    for name in compensation_order:
        state = recorded.compensations.get(name, ("", None, 0))[0]
        (compensated if state == "compensated" else not_compensated).append(name)
    for name, (state, _, _) in recorded.compensations.items():
        if state not in ("compensated",) and name not in not_compensated:
            not_compensated.append(name)
    for group, names in members.items():
        status = recorded.groups.get(group)
        counts = count_statuses(steps[name].status for name in names)
        groups[group] = GroupResult(group, GroupStatus(status) if status else GroupStatus.SKIPPED, tuple(names), counts)
    error = recorded.error
    status = FlowStatus(recorded.status) if recorded.status != "running" else FlowStatus.FAILED
    if status is FlowStatus.CANCELLED and error is None:
        from ._errors import FlowInterrupted

        error = FlowInterrupted(recorded.flow)
    if status is not FlowStatus.COMPLETED and error is None:
        error = StepCancelledError("", "the run did not complete")
    result = FlowResult(
        name=recorded.flow,
        run_id=recorded.run_id,
        status=status,
        steps=steps,
        groups=groups,
        maps=maps,
        error=error if status is not FlowStatus.COMPLETED else None,
        failed_stage=recorded.failed_stage,
        compensated=tuple(compensated),
        not_compensated=tuple(not_compensated),
        started_at=started_at,
        finished_at=finished_at,
    )
    if isinstance(result.error, KeyboardInterrupt):
        result.error.result = result  # type: ignore[attr-defined]
    return result


def _recorded_map(name: str, recorded: RecordedRun) -> MapResult:
    """A map's ``MapResult`` from its recorded items and verdict (an unrecorded one is SKIPPED)."""
    from ._maps import MapLedger

    status = recorded.groups.get(name)
    rows = recorded.items.get(name, [])
    keyed = any(not isinstance(row[1], int) or row[1] != row[0] for row in rows)
    ledger = MapLedger(name, keyed=keyed)
    for index, key, item_status, value, _, item_error, attempts, started, finished in rows:
        while len(ledger) < index:  # an item that never settled before the process died
            ledger.take(f"\x00unsettled-{len(ledger)}" if keyed else None)
        ledger.take(key if keyed else None)
        ledger.settle(index, item_status, value, item_error, attempts, started, finished)
    return MapResult(name, GroupStatus(status) if status else GroupStatus.SKIPPED, ledger)
