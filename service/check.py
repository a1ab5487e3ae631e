"""`server.py --check`: is the data directory consistent?

Run after a crash (or any time) to prove what the design promises: every row that should have
blobs has them and they decrypt under the key, stock and prices are non-negative, every order
is whole (lines present, totals add up), and the text index matches the live images.

It deletes nothing and changes no data, server running or not: the database is opened
read-only, nothing is swept or purged, and no blob key is made (a missing one is a problem
reported). A check is what an operator runs when something looks wrong, perhaps on a directory
whose database went missing, where the start-up sweep would delete every blob. Blobs no row
names (crash leftovers, purged images' data) and temporary files of writes that never finished
are reported, not counted as problems: the next normal start removes them.

What it may touch, all of it what a start would do too: it creates `server.lock` if absent
(and holds its lock while checking, so a server cannot start meanwhile); it creates an empty
`blobs/` directory (0700) if that is missing while the key is there and no row names a blob (a
missing `blobs/` that rows need is a problem reported, as start-up refuses it); it tightens a
blob key file that others can read to 0600; and SQLite may leave the database's `-wal` and
`-shm` side files behind, even from a read-only connection.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol import tls
from repository import images as repo
from repository.blobstore import BlobAuthenticationFailed, BlobError, BlobNotFound, BlobStore
from repository.database import check_writable, connect_read_only
from repository.migrations import MIGRATIONS
from repository.vector_index import (
    DamagedIndexError,
    IndexFormatError,
    UnreadableIndexError,
    VectorIndex,
)
from service.context import ServerConfig
from service.data_dir import (
    BLOB_KEY_FILE,
    DB_FILE,
    DataDirBusy,
    database_version,
    has_users,
    lock_data_dir,
    lost_database,
    missing_blob_dir,
    newer_database,
    not_a_directory,
    open_blob_store,
    unreadable_database,
    wrong_blob_key,
)
from service.identity import TLS_FLAGS, identity_after_refusals
from service.similarity import INDEX_DIR
from util.config import Setting

#: Problems listed one by one up to this many; beyond, only counted.
MAX_LISTED = 20
#: Unreferenced blob names shown, as examples to look at before the next start removes them.
ORPHANS_LISTED = 5


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        out = list(self.lines)
        if self.problems:
            out.append(f"PROBLEMS ({len(self.problems)}):")
            out += [f"  - {p}" for p in self.problems[:MAX_LISTED]]
            if len(self.problems) > MAX_LISTED:
                out.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
            out.append("Result: NOT consistent")
        else:
            out.append("Result: consistent")
        return "\n".join(out)


def check_data_dir(
    data_dir: Path,
    tls_files: tuple[Path, Path] | None = None,
    tls_settings: tuple[Setting, Setting] = TLS_FLAGS,
) -> CheckReport:
    """Raises DataDirPathError when `data_dir` is not a directory at all. `tls_files` are
    --tls-cert and --tls-key, if given: checked instead of the self-made pair, as a start would,
    and named as `tls_settings` say they were given (a VITRINE_* variable, or the flag).
    Images are "due for purge" by `ServerConfig.purge_after_s`, the age a start purges at, so
    the count is what the next start will purge."""
    if data_dir.exists() and not data_dir.is_dir():
        raise not_a_directory(data_dir)
    report = CheckReport()
    _check_tls_identity(data_dir, tls_files, tls_settings, report)
    db_path = data_dir / DB_FILE
    try:
        version = database_version(db_path)
        if version == 0:
            if reason := lost_database(data_dir):
                report.problems.append(
                    f"no usable database: {reason} A normal start refuses this directory until "
                    "then."
                )
            elif db_path.exists():
                report.problems.append(f"the database {db_path} is empty")
            else:
                report.problems.append(f"no database at {db_path}")
            return report
        if version > len(MIGRATIONS):
            report.problems.append(newer_database(db_path, version))
            return report
        if version != len(MIGRATIONS):
            report.problems.append(
                f"{db_path} has schema version {version}, this Vitrine expects "
                f"{len(MIGRATIONS)}: start the server once (it migrates older databases), "
                "stop it, and check again."
            )
            return report
    except sqlite3.DatabaseError as exc:
        report.problems.append(unreadable_database(db_path, exc))
        return report
    lock_fd: int | None = None
    try:
        lock_fd = lock_data_dir(data_dir)
    except DataDirBusy:
        report.lines.append("The server is running: unreferenced blobs may be uploads in flight.")
    except OSError as exc:  # a read-only copy: the check needs no lock to read it
        report.lines.append(f"Could not lock the data directory ({exc.strerror}).")
    conn = connect_read_only(db_path)
    try:
        if lock_fd is not None:  # not while a server runs: its writes are no question
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # holds the WAL open
            _report_unwritable(db_path, report)
        _check_rows_and_blobs(conn, data_dir, ServerConfig.purge_after_s, report)
        _check_vector_index(data_dir / INDEX_DIR, report)
    except sqlite3.DatabaseError as exc:
        report.problems.append(unreadable_database(db_path, exc))
    except OSError as exc:  # a part of the directory that cannot be read: named, no traceback
        report.problems.append(
            f"cannot read {exc.filename or data_dir}: {exc.strerror or exc}; restore it from "
            "a backup or fix its permissions."
        )
    finally:
        conn.close()
        if lock_fd is not None:
            os.close(lock_fd)
    return report


def _check_tls_identity(
    data_dir: Path,
    tls_files: tuple[Path, Path] | None,
    tls_settings: tuple[Setting, Setting],
    report: CheckReport,
) -> None:
    """A problem when a start would refuse the TLS files (half a pair, damaged, mismatched),
    asked through the start's own check so the words are the same and `--check && server.py`
    cannot pass here and be refused there. A missing pair is not made: a start makes it, and
    a line says so when clients have pinned the old one (a restore that missed both files)."""
    try:
        identity_after_refusals(ServerConfig(data_dir=data_dir), tls_files, tls_settings)
    except tls.TlsIdentityError as exc:
        report.problems.append(str(exc))
        return
    names = (tls.CERT_FILE, tls.KEY_FILE)
    if (
        tls_files is None
        and not any((data_dir / n).exists() for n in names)
        and has_users(data_dir)
    ):
        report.lines.append(
            f"no {tls.CERT_FILE} and {tls.KEY_FILE}: the next start makes a new TLS identity, "
            "which every client that pinned the old one refuses; restore both from a backup "
            "to keep it."
        )


def _check_vector_index(index_dir: Path, report: CheckReport) -> None:
    """The saved index for search by image, checked against the checksums in its manifest.

    It holds nothing the database does not (a start rebuilds it when it is missing, stale or
    unusable), but a file the disk changed would load and answer wrong matches if unchecked,
    and damage here may mean a failing disk: a problem, with what the next start does; a file
    the disk cannot read (EIO) all the more. An index the check cannot verify (saved by an
    earlier version, a file missing) is a line."""
    try:
        count = VectorIndex.verify(index_dir)
    except FileNotFoundError:
        return  # none saved yet (no model, or never stopped cleanly): a start builds it
    except UnreadableIndexError as exc:
        report.problems.append(
            f"the vector index cannot be read: {exc}; the next start rebuilds it from the "
            "database (search by image stays right), but a read error may mean a failing disk: "
            "check the disk."
        )
        return
    except DamagedIndexError as exc:
        report.problems.append(
            f"the vector index is damaged: {exc}; the next start rebuilds it from the database "
            "(search by image stays right), nothing to restore."
        )
        return
    except IndexFormatError as exc:
        report.lines.append(f"vector index: {exc}; the next start rebuilds it from the database")
        return
    report.lines.append(f"vector index: {count} vectors, files match their checksums")


def _report_unwritable(db_path: Path, report: CheckReport) -> None:
    """A problem when a normal start would refuse the database as unwritable (`check_writable`),
    so that `--check && server.py` cannot pass the check and then fail to start. Asked only of
    a directory the check could lock, hence write: a read-only copy (a backup on a read-only
    mount) is checked for consistency without it."""
    # A plain connection, not `connect`: its journal-mode pragma is a write. And opened while
    # the caller's read-only one is: closing the last connection would fold a WAL a crash left
    # into the database, and --check changes nothing.
    try:
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            check_writable(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        report.problems.append(unreadable_database(db_path, exc))


def _check_rows_and_blobs(
    conn: sqlite3.Connection, data_dir: Path, purge_after_s: float, report: CheckReport
) -> None:
    for label, number in repo.counts(conn).items():
        report.lines.append(f"{label}: {number}")
    due = len(repo.purge_due(conn, time.time() - purge_after_s))
    if due:
        report.lines.append(
            f"deleted images past their grace period: {due} (the next start purges)"
        )
    if waiting := repo.count_colours_pending(conn):
        report.lines.append(
            f"live images without colours computed: {waiting} (stored under --no-colours; "
            "the next start with colours computes them)"
        )
    if outdated := repo.count_colours_outdated(conn):
        report.lines.append(
            f"live images whose colours an older version computed: {outdated} (searches use "
            "them meanwhile; the next start with colours computes them again)"
        )
    rows = repo.stored_blob_rows(conn)
    key_path = data_dir / BLOB_KEY_FILE
    # What start-up refuses is one problem here too, not one per image: the same cause, told
    # in the same words (start-up's own), and the per-image list would only hide it.
    refused: list[str] = []
    if not key_path.exists() and rows:
        # open_blob_store would make a new key, and a blob sealed under it could never be
        # read by the old one if the old one comes back from a backup.
        refused.append(
            f"no blob key at {key_path}: no image can be read without it; restore it from a backup."
        )
    if reason := missing_blob_dir(data_dir, conn):
        refused.append(reason)
    if refused or not key_path.exists():
        report.problems += refused
        report.problems += repo.database_problems(conn)
        return
    try:
        blobs = open_blob_store(data_dir)
    except BlobError as exc:
        report.problems.append(str(exc))
        report.problems += repo.database_problems(conn)
        return
    wrong_key = wrong_blob_key(data_dir, conn, blobs)
    # Counted per blob, not per row naming it: two users' uploads of the same bytes share
    # their blobs, and "read" beside "on disk" (a set of names) must add up. Each blob is read
    # once; what is wrong with one is named for every image that holds it. A missing blob is
    # counted as missing, not as read.
    outcomes: dict[str, _BlobOutcome] = {}
    found: list[tuple[bool, str]] = []  # (failed authentication, problem), in row order
    for image_id, blob, thumb in rows:
        for kind, name in (("original", blob), ("thumbnail", thumb)):
            if name not in outcomes:
                outcomes[name] = _read_blob(blobs, name)
            if problem := outcomes[name].problem:
                found.append(
                    (outcomes[name].failed_authentication, f"image {image_id}: {kind} {problem}")
                )
    missing = sum(1 for o in outcomes.values() if o.missing)
    checked = len(outcomes) - missing
    authenticated = sum(1 for o in outcomes.values() if not o.problem)
    failed = sum(1 for o in outcomes.values() if o.failed_authentication)
    if wrong_key and not authenticated:
        report.problems.append(
            f"{wrong_key} Here {failed} of {checked} blobs fail authentication under it; a "
            "normal start refuses this key."
        )
        report.problems += [problem for auth, problem in found if not auth]
    else:
        # Start-up probes only the newest images: one blob that authenticates anywhere proves
        # the key, and what fails is damage to those images, each named.
        report.problems += [problem for _, problem in found]
    report.lines.append(
        f"blobs read: {checked}, authenticated: {authenticated}, missing: {missing}"
    )
    referenced = repo.referenced_blobs(conn)
    stored = set(blobs.iter_names())
    orphans = sorted(stored - referenced)
    report.lines.append(f"blobs on disk: {len(stored)}, unreferenced: {len(orphans)}")
    if orphans:
        report.lines.append(
            f"{len(orphans)} blobs are named by no row (crash leftovers or purged images' "
            "data): the next normal start removes them. For example:"
        )
        report.lines += [f"  {blobs.path_for(name)}" for name in orphans[:ORPHANS_LISTED]]
    _report_temporary_files(blobs, report)
    report.problems += repo.database_problems(conn)


@dataclass(frozen=True)
class _BlobOutcome:
    """What reading one blob found: nothing wrong (`problem` empty), or what to say of it."""

    problem: str = ""
    failed_authentication: bool = False
    missing: bool = False


def _read_blob(blobs: BlobStore, name: str) -> _BlobOutcome:
    try:
        blobs.get(name)
    except BlobNotFound as exc:
        return _BlobOutcome(f"blob unusable: {exc}", missing=True)
    except BlobAuthenticationFailed as exc:
        return _BlobOutcome(f"blob unusable: {exc}", failed_authentication=True)
    except BlobError as exc:
        return _BlobOutcome(f"blob unusable: {exc}")
    except OSError as exc:
        return _BlobOutcome(f"blob unreadable ({exc.strerror}: {exc.filename})")
    return _BlobOutcome()


def _report_temporary_files(blobs: BlobStore, report: CheckReport) -> None:
    """Temporary files a killed write left in `blobs/`: the next start removes them too, and
    an operator comparing this report with that start's log must find them here. Not a
    problem: no row can name a temporary file."""
    leftovers = sorted(blobs.temporary_files())
    if not leftovers:
        return
    size = sum(nbytes for _, nbytes in leftovers)
    report.lines.append(
        f"temporary files in blobs: {len(leftovers)} ({size} bytes), left by writes that never "
        "finished (a crash or kill -9): the next normal start removes them. For example:"
    )
    report.lines += [f"  {path}" for path, _ in leftovers[:ORPHANS_LISTED]]
