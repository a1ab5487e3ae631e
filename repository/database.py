"""Opening the SQLite database the same safe way everywhere, and running its migrations.

Every connection gets WAL (readers never wait for the writer), foreign keys (SQLite leaves them
off by default) and a busy timeout (so concurrent writers queue instead of failing). Connections
are per thread because sqlite3 connections must not be shared across threads mid-transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repository.migrations import MIGRATIONS

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


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version, one transaction per step; return that version."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
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
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
