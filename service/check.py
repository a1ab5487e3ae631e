"""`server.py --check`: is the data directory consistent?

Run after a crash (or any time) to prove what the design promises: every row that should have
blobs has them and they decrypt under the key, no blob is kept that no row names, stock and
prices are non-negative, every order is whole (lines present, totals add up), and the text
index matches the live images. With the server stopped it first does the server's own start-up
recovery (the sweep); with the server running it only reads, and reports what it finds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from repository import images as repo
from repository.blobstore import BlobError
from repository.database import Database
from service.app import DB_FILE, DataDirBusy, lock_data_dir, open_blob_store, recover

#: Problems listed one by one up to this many; beyond, only counted.
MAX_LISTED = 20


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


def check_data_dir(data_dir: Path, purge_after_s: float = 30 * 24 * 3600.0) -> CheckReport:
    report = CheckReport()
    if not (data_dir / DB_FILE).exists():
        report.problems.append(f"no database at {data_dir / DB_FILE}")
        return report
    lock_fd: int | None = None
    try:
        lock_fd = lock_data_dir(data_dir)
    except DataDirBusy:
        report.lines.append("The server is running: checking without the start-up sweep.")
    db: Database | None = None
    try:
        db = Database(data_dir / DB_FILE)
        blobs = open_blob_store(data_dir)
        conn = db.conn
        if lock_fd is not None:
            purged, removed = recover(db, blobs, purge_after_s)
            report.lines.append(
                f"Start-up recovery: purged {purged} deleted images, "
                f"swept {removed} unreferenced blobs."
            )
        for label, number in repo.counts(conn).items():
            report.lines.append(f"{label}: {number}")
        rows = repo.stored_blob_rows(conn)
        checked = 0
        for image_id, blob, thumb in rows:
            for kind, name in (("original", blob), ("thumbnail", thumb)):
                try:
                    blobs.get(name)
                except BlobError as exc:
                    report.problems.append(f"image {image_id}: {kind} blob unusable: {exc}")
                checked += 1
        report.lines.append(f"blobs read and authenticated: {checked}")
        referenced = repo.referenced_blobs(conn)
        stored = set(blobs.iter_names())
        orphans = stored - referenced
        report.lines.append(f"blobs on disk: {len(stored)}, unreferenced: {len(orphans)}")
        if orphans:
            report.problems.append(f"{len(orphans)} blobs on disk are named by no row")
        report.problems += repo.database_problems(conn)
    finally:
        if db is not None:
            db.close()
        if lock_fd is not None:
            os.close(lock_fd)
    return report
