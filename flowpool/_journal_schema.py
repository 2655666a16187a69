"""The journal's file: its schema, format marker and version, and opening it.

A journal is created (schema and marker in one transaction) by whichever process
first opens an empty file, then switched to WAL; opening an existing journal
only reads its marker (a journal of the previous format is upgraded in place, once)
and refuses formats this flowpool does not read.
"""

from __future__ import annotations

import os
import sqlite3

from ._clock import SYSTEM_CLOCK
from ._errors import JournalError

__all__ = ["create_private", "prepare"]

_FORMAT = "flowpool-journal"
# 2: text forms of values and errors beside their pickles.
# 3: runs.wall_offset, so that results read back have wall-clock times; a value None is
#    kept as NULL (value_kept 1); new journals keep attempts WITHOUT ROWID (one B-tree, not two).
_VERSION = 3
# Journals of these versions are upgraded in place when opened; older ones are refused.
_UPGRADES = {2: ("ALTER TABLE runs ADD COLUMN wall_offset REAL",)}

#: Journals made before maps existed gain the items table when a run first records an item.
ITEMS_TABLE = """CREATE TABLE IF NOT EXISTS items (
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
    finished_at REAL,
    wall_offset REAL
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
) WITHOUT ROWID;
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
"""
_SCHEMA += ITEMS_TABLE + ";\n"


def create_private(path: str) -> None:
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


def prepare(db: sqlite3.Connection, path: str) -> None:
    """Ready a connection to ``path``; create the journal's schema in a new, empty file,
    or upgrade a journal of the previous format."""
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA synchronous = NORMAL")  # this connection only: writes nothing
    if journal_version(db, path) == _VERSION:
        return  # a journal of this format: opening it writes nothing
    # A new, empty file, or an older journal. The schema (or the upgrade) and its
    # marker are written in one transaction, so no other process ever sees tables
    # without the marker; the check is made again under the write lock, since
    # another process may have created or upgraded the journal between our look
    # and our lock.
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:  # e.g. a read-only file that needs its upgrade
        raise JournalError(f"cannot open journal {path!r} to write: {error}") from None
    try:
        version = journal_version(db, path)
        if version is None:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)", (_FORMAT, str(_VERSION)))
        elif version < _VERSION:
            for statement in _UPGRADES[version]:
                db.execute(statement)
            db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if version is None:
        use_wal(db)


def use_wal(db: sqlite3.Connection) -> None:
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
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise
        if SYSTEM_CLOCK.now() > deadline:
            return
        SYSTEM_CLOCK.sleep(0.01)


def journal_version(db: sqlite3.Connection, path: str) -> int | None:
    """The format version of a journal this flowpool reads or upgrades, None for an
    empty file (reads only).

    Raises:
        JournalError: another kind of SQLite file, or a journal format this flowpool
            does not read.
    """
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise JournalError(f"{path!r} is an SQLite file but not a flowpool journal")
    marker = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if marker.get("format") != _FORMAT:
        raise JournalError(f"{path!r} is an SQLite file but not a flowpool journal")
    try:
        version = int(marker.get("version", ""))
    except ValueError:
        raise JournalError(f"{path!r} has an unreadable journal version {marker.get('version')!r}") from None
    if version > _VERSION:
        raise JournalError(
            f"{path!r} was written by a newer flowpool (journal format v{version}; this flowpool "
            f"reads v{_VERSION}): upgrade flowpool to read it"
        )
    if version < _VERSION and version not in _UPGRADES:
        raise JournalError(
            f"{path!r} was written by an earlier development version of flowpool (journal format "
            f"v{version}; this flowpool reads v{_VERSION}): start a new journal file"
        )
    return version
