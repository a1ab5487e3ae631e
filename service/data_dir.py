"""The data directory: its layout, the lock that keeps it to one server, and the refusals of a
directory whose parts do not belong together.

Start-up and `server.py --check` ask the same questions here, so they refuse in the same
sentence, one that says what to do (docs/operations.md lists each refusal): serving such a
directory would lose data quietly."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from repository import images as image_repo
from repository.blobstore import (
    BlobAuthenticationFailed,
    BlobError,
    BlobNotFound,
    BlobStore,
    load_or_create_key,
)
from repository.database import Database, connect_read_only
from repository.migrations import MIGRATIONS
from service.similarity import INDEX_DIR
from util.config import Setting

log = logging.getLogger("vitrine.server")


#: The --data-dir the sentences below name unless told (`DataDirError.naming`) otherwise.
DATA_DIR = Setting("--data-dir")


class DataDirError(Exception):
    """The data directory cannot be served as it stands; the message says why and what to do.

    One that blames the setting is worded only where it is reported (`naming`): the code that
    finds the fault does not know whether the path came from --data-dir or VITRINE_DATA_DIR,
    and a sentence naming the flag would send the user looking for a flag nobody typed."""

    def __init__(self, message: str | Callable[[Setting], str]) -> None:
        self._sentence = message if callable(message) else None
        super().__init__(message(DATA_DIR) if callable(message) else message)

    def naming(self, setting: Setting) -> str:
        """The message, with the data directory named as `setting` gave it."""
        return self._sentence(setting) if self._sentence is not None else str(self)


class DataDirPathError(DataDirError):
    """--data-dir names something that cannot be a data directory: a bad argument."""


class DataDirBusy(DataDirError):
    """Another process (a running server) holds the data directory."""


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory, owner-only. A path that is a file or lies under a folder we
    may not write is the operator's to fix, so it is told in a sentence, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except FileExistsError:
        raise not_a_directory(path) from None
    except OSError as exc:
        reason = exc.strerror
        raise DataDirPathError(
            lambda given: (
                f"cannot use {given.shown(path)} as the data directory: {reason}; "
                # "choose another VITRINE_DATA_DIR or --data-dir, or fix": one "or" per choice
                f"choose another {given.either}{',' if given.env else ''} or fix its permissions."
            )
        ) from None
    return path


def not_a_directory(path: Path) -> DataDirPathError:
    return DataDirPathError(
        lambda given: f"{given.shown(path)} is not a directory; choose another {given.either}."
    )


DB_FILE = "vitrine.db"
BLOB_DIR = "blobs"
BLOB_KEY_FILE = "blob.key"
LOCK_FILE = "server.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of the process.

    Two servers on one directory would each sweep the other's in-flight blobs; the kernel
    drops the lock when the process dies, even by SIGKILL, so a crash never leaves it stale.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(
            lambda given: (
                f"Another Vitrine server is using {data_dir}; stop it "
                f"first or choose another {given.either}."
            )
        ) from None
    return fd


def open_blob_store(data_dir: Path) -> BlobStore:
    return BlobStore(data_dir / BLOB_DIR, load_or_create_key(data_dir / BLOB_KEY_FILE))


def database_version(path: Path) -> int:
    """The schema version of the database at `path`, 0 if it is missing, empty or was never
    migrated. Read-only, and through the WAL a killed server leaves: a server killed right
    after its first start has its schema only there, and must not pass for a lost database.
    Raises sqlite3.DatabaseError if the file is not a readable database."""
    if not path.exists():
        return 0
    conn = connect_read_only(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def signs_of_use(data_dir: Path) -> list[str]:
    """What shows that a data directory has held images: blob files, and the key that reads
    them (created only once the database is, so never left alone by a first start)."""
    found = []
    blob_files = sum(1 for p in (data_dir / BLOB_DIR).glob("??/*") if p.is_file())
    if blob_files:
        found.append(f"{blob_files} files in {BLOB_DIR}/")
    if (data_dir / BLOB_KEY_FILE).exists():
        found.append(BLOB_KEY_FILE)
    return found


def lost_database(data_dir: Path) -> str | None:
    """Why the data directory must not be opened as new, or None if it may: a new database
    names no blob, so the start-up sweep would delete every image a failed restore or a bad
    copy of the directory left without its database."""
    db_path = data_dir / DB_FILE
    if database_version(db_path) > 0:
        return None
    found = signs_of_use(data_dir)
    if not found:
        return None
    return (
        f"{db_path} is missing or empty, but {data_dir} holds {' and '.join(found)}: "
        f"restore {DB_FILE} from a backup, or to start afresh move {BLOB_DIR}/ and "
        f"{BLOB_KEY_FILE} out of {data_dir}."
    )


def newer_database(path: Path, version: int) -> str:
    """The sentence for a database a newer Vitrine wrote (`version` above this one's). Serving
    it would read and write a schema this code does not know (a table it never fills, a
    column it never sets), and there is no step down: only that version, or the database as
    it was before the upgrade, is right. Start-up and `--check` both say this."""
    return (
        f"{path} is at schema version {version}, newer than this Vitrine's {len(MIGRATIONS)}: "
        "it was written by a newer Vitrine; run that version (or restore a backup made before "
        "the upgrade)."
    )


def database_too_new(data_dir: Path) -> str | None:
    """Why the database must not be opened because a newer Vitrine wrote it, or None. Asked
    before the database is opened, so that the refused start leaves the database as it was
    (no migration, no TLS identity made; the data directory itself is made 0700 and locked
    before this, as for every start)."""
    db_path = data_dir / DB_FILE
    version = database_version(db_path)
    return newer_database(db_path, version) if version > len(MIGRATIONS) else None


def lost_blob_key(data_dir: Path, db: Database) -> str | None:
    """Why the blob store must not be opened, or None if it may: a database that names blobs
    without the key that reads them. A new key would read none of them, and would seal every
    new upload so that the old key, restored later, could not read those either."""
    key_path = data_dir / BLOB_KEY_FILE
    if key_path.exists() or not image_repo.referenced_blobs(db.conn):
        return None
    return (
        f"{key_path} is missing, but {data_dir / DB_FILE} names stored images, which cannot be "
        f"read without it: restore {BLOB_KEY_FILE} from a backup."
    )


def missing_blob_dir(data_dir: Path, conn: sqlite3.Connection) -> str | None:
    """Why the blob store must not be opened, or None if it may: a `blobs` that is not a
    folder (every upload would fail, rows or not), or a database that names blobs but no blob
    folder, or an empty one (a restore that missed it, a volume not mounted). Serving that
    shows every image blank, and uploads meanwhile land where the real folder, once back,
    hides them. Start-up and `--check` both ask this, so they say the same."""
    blob_dir = data_dir / BLOB_DIR
    names_a_blob = conn.execute(
        "SELECT 1 FROM images WHERE blob != ? LIMIT 1", (image_repo.PURGED,)
    ).fetchone()
    if blob_dir.exists() and not blob_dir.is_dir():
        restore = (
            f"and restore {BLOB_DIR}/ from the backup of this database"
            if names_a_blob is not None
            else f"(no image needs it: the next start makes an empty {BLOB_DIR}/)"
        )
        return f"{blob_dir} is not a directory: move it aside {restore}."
    if names_a_blob is None:
        return None
    if blob_dir.is_dir() and any(p.is_file() for p in blob_dir.glob("??/*")):
        return None
    state = "is empty" if blob_dir.is_dir() else "is missing"
    return (
        f"{blob_dir} {state}, but {data_dir / DB_FILE} names stored images: restore "
        f"{BLOB_DIR}/ from the backup of this database (or mount the volume it lives on)."
    )


#: Blobs start-up tries to read before concluding the key is wrong: a missing or damaged blob
#: is not a key problem, so one alone must not stop the server.
KEY_PROBE_IMAGES = 5
KEY_PROBE_FAILURES = 3


def wrong_blob_key(data_dir: Path, conn: sqlite3.Connection, blobs: BlobStore) -> str | None:
    """Why the blob store must not be used, or None if it may: a key (another valid one, from
    the wrong backup) under which the stored blobs do not authenticate. Serving with it shows
    old images blank, misses every dedup, and seals new uploads so that the right key, once
    back, cannot read them.

    Reads the newest images' thumbnails and originals; one blob that authenticates proves the
    key. It refuses only when none did and at least KEY_PROBE_FAILURES failed, or every blob
    that is there failed and there are at least two: one blob alone cannot tell a bit-rotted
    file from a wrong key, and a damaged image must not keep a shop closed."""
    rows = conn.execute(
        "SELECT thumb_blob, blob FROM images WHERE blob != ? "
        "ORDER BY deleted_at IS NOT NULL, id DESC LIMIT ?",
        (image_repo.PURGED, KEY_PROBE_IMAGES),
    ).fetchall()
    failures = present = 0
    for names in rows:
        for name in names:
            try:
                blobs.get(name)
            except BlobAuthenticationFailed:
                failures += 1
                present += 1
            except BlobNotFound:
                continue
            except (BlobError, OSError):  # truncated, unreadable: there, but says nothing
                present += 1
                continue
            else:
                return None
        if failures >= KEY_PROBE_FAILURES:
            break
    if failures < max(2, min(KEY_PROBE_FAILURES, present)):
        return None
    return (
        f"the blob key {data_dir / BLOB_KEY_FILE} does not match the stored blobs (wrong key "
        f"restored?): put back the {BLOB_KEY_FILE} that was backed up with {DB_FILE}; "
        "`server.py --check` counts the blobs that fail under it."
    )


def restrict_to_owner(data_dir: Path) -> None:
    """Tighten what older versions created readable by others (the database, its WAL, the
    vector index); the server's umask keeps new files owner-only. Logged, like the key file."""
    index_dir = data_dir / INDEX_DIR
    paths = [data_dir / f"{DB_FILE}{suffix}" for suffix in ("", "-wal", "-shm")]
    if index_dir.is_dir() and not index_dir.is_symlink():
        paths += [index_dir, *index_dir.iterdir()]
    loosened = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            if mode & 0o077 and not path.is_symlink():
                os.chmod(path, 0o700 if path.is_dir() else 0o600)
                loosened.append(path.name)
    if loosened:
        log.warning(
            "restricted %s to the owner (they were readable by others)", ", ".join(loosened)
        )


def unreadable_database(path: Path, exc: sqlite3.DatabaseError) -> str:
    """One sentence for a database SQLite refuses; only damage calls for the backup. A file
    the server may not write is named (the database, or its -wal or -shm), with the fix: it
    would otherwise serve reads and answer every login INTERNAL."""
    name = exc.sqlite_errorname or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return f"the database {path} is damaged ({exc}); restore it from a backup."
    if name.startswith("SQLITE_READONLY"):
        files = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
        stuck = [str(f) for f in files if f.exists() and not os.access(f, os.W_OK)]
        return (
            f"the database {' and '.join(stuck) or path} cannot be written ({exc}): make it "
            "writable for the user the server runs as (chmod u+w; `lsattr` shows an immutable "
            "flag, which `chattr -i` clears; or remount the volume read-write)."
        )
    return f"cannot open the database {path}: {exc}"


def has_users(data_dir: Path) -> bool:
    """Whether this directory served before (the database has accounts): not a first start."""
    try:
        if database_version(data_dir / DB_FILE) == 0:
            return False
        conn = connect_read_only(data_dir / DB_FILE)
        try:
            return conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:  # a damaged database is refused by open_services
        return False
