"""Opening the SQLite database the same safe way everywhere, and running its migrations.

Every connection gets WAL (readers never wait for the writer), foreign keys (SQLite leaves them
off by default) and a busy timeout (so concurrent writers queue instead of failing). Connections
are per thread because sqlite3 connections must not be shared across threads mid-transaction.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from repository.migrations import MIGRATIONS

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write, for looking at a database that may be damaged, missing
    its schema or in use (`server.py --check`, the start-up's lost-database test). It still
    reads what a killed server left in the WAL."""
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
    )


class SchemaTooNew(Exception):
    """The database was written by a newer Vitrine: its schema has steps this code does not
    know, so reading or writing it could break what that version relies on."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the database is at schema version {version}, newer than this Vitrine's "
            f"{len(MIGRATIONS)}"
        )
        self.version = version


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version, one transaction per step; return that version.

    A database from a newer version is refused before anything is written (SchemaTooNew):
    there is no step down. An upgrade is logged in one INFO line with both versions, so that
    the start that changed the database can be found in the log (steps that change what users
    see log their own counts, repository.migrations)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise SchemaTooNew(version)
    first, started = version, time.monotonic()
    for number, step in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    if 0 < first < version:  # 0 is a new database: created, not upgraded
        log.info(
            "database schema upgraded from version %d to %d in %.2f s",
            first,
            version,
            time.monotonic() - started,
        )
    return version


def check_writable(conn: sqlite3.Connection) -> None:
    """Raise SQLITE_READONLY now if the database cannot be written. SQLite opens a file it may
    not write (`chmod 444`, `chattr +i`, a read-only mount) read-only without a word, and reads
    work, so a server would start, pass for healthy and then fail every login. One write, rolled
    back, asks SQLite itself: `os.access` cannot see every reason it would refuse."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"PRAGMA user_version={int(version)}")
    finally:
        conn.execute("ROLLBACK")


def server_id(conn: sqlite3.Connection) -> str:
    """This data's random id, made by its first start (migrations, v4)."""
    return str(conn.execute("SELECT value FROM server_meta WHERE key = 'server_id'").fetchone()[0])


@contextmanager
def transaction(
    conn: sqlite3.Connection, *, immediate: bool = False
) -> Iterator[sqlite3.Connection]:
    """BEGIN/COMMIT around a block; IMMEDIATE takes the write lock up front so read-then-write
    logic (stock checks) cannot be interleaved with another writer."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    """Hands each thread its own connection to one database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._lock:
            conn = connect(path)
            self._all.append(conn)
        self._local.conn = conn
        try:
            self.schema_version = migrate(conn)
            check_writable(conn)
        except BaseException:
            self.close()  # the caller never gets this object to close
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every connection, then fold the WAL into the database file.

        Operators are told that after a clean stop the database file alone is the whole
        database (docs/operations.md), and SQLite's own checkpoint at the last close fails
        without a word: on a full disk the server stopped "cleanly" and left a 4 KB
        vitrine.db that was malformed without its 2 MB -wal. So the checkpoint is asked for
        explicitly, and a WAL still holding data the database file lacks is logged as an ERROR
        saying which files belong together and why. It runs on a connection of its own, opened
        here once the others are closed: one of theirs may belong to a thread still inside a
        transaction (the similarity thread that `stop` gave up waiting for), and a checkpoint
        on it fails with "database table is locked" for no reason an operator can act on."""
        with self._lock:
            if not self._all:
                return
            for conn in self._all:
                conn.close()
            self._all.clear()
            outcome = _checkpoint(self.path)
        _report_wal_left(self.path, outcome)


@dataclass(frozen=True)
class _Checkpoint:
    """Why the WAL may still hold data after the close ("" when the checkpoint finished), and
    whether every WAL page is in the database file all the same."""

    reason: str = ""
    whole: bool = False


def _checkpoint(path: Path) -> _Checkpoint:
    """Copy the whole WAL into the database file and empty it, on a fresh connection (mode=rw:
    a database file removed meanwhile is not made anew, empty, by the close)."""
    try:
        fresh = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw",
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
        )
        with contextlib.closing(fresh) as conn:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:  # SQLITE_FULL on a full disk, SQLITE_IOERR, ...
        return _Checkpoint(f"the checkpoint failed: {exc}")
    if not busy:
        return _Checkpoint()
    reader = (
        "another process (an sqlite3 shell, a backup, `server.py --check`) was reading the database"
    )
    if 0 <= copied == frames:
        # A reader whose snapshot is the newest data holds the WAL open without needing any of
        # it: every page reached the database file, only emptying the WAL had to wait.
        return _Checkpoint(f"all {frames} WAL pages were copied, but {reader}", whole=True)
    return _Checkpoint(
        f"the checkpoint could not finish ({copied} of {frames} WAL pages copied): {reader}"
    )


def _report_wal_left(path: Path, outcome: _Checkpoint) -> None:
    """Log an ERROR when the database file alone is not the whole database after the close, a
    WARNING when it is whole but its WAL could not be emptied."""
    reason = outcome.reason
    wal = Path(f"{path}-wal")
    try:
        left = wal.stat().st_size
    except FileNotFoundError:
        left = 0
    except OSError as exc:
        left = -1
        reason = reason or f"{wal.name} cannot be examined: {exc}"
    if left == 0:
        if reason:  # SQLite's own checkpoint at the last close managed it after all
            log.warning("closing the database: %s; the WAL was emptied when it closed", reason)
        return
    if outcome.whole:
        log.warning(
            "closing the database: %s. %s is whole (it holds every change); only %s (%s) "
            "could not be emptied, and the next start on these files empties it",
            reason,
            path.name,
            wal.name,
            "size unknown" if left < 0 else f"{left} bytes",
        )
        return
    log.error(
        "the database was closed with %s still holding %s (%s): %s alone is not the whole "
        "database and may read as malformed. Back up or copy %s together with %s and %s, "
        "never %s alone, and do not delete them; the next start on these files folds the WAL in",
        wal.name,
        "data" if left < 0 else f"{left} bytes",
        reason or "SQLite left it in place",
        path.name,
        path.name,
        wal.name,
        f"{path.name}-shm",
        path.name,
    )
