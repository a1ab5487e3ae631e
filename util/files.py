"""Writing files so that a crash never leaves half of one behind.

Everything Vitrine persists outside SQLite (blobs, the cart, the converted model, keys,
certificates, pinned servers) is written the same way: a temporary file beside the target,
created owner-only, fsynced, renamed over the target, and the directory fsynced so the rename
itself survives a power cut. Readers see the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Temporary files end with this, and start with a dot, so sweeps can recognise leftovers.
TMP_SUFFIX = ".tmp"


def fsync_directory(path: Path) -> None:
    """Make a rename or creation in `path` durable (not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step; the file is readable by its owner only."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def side_file_lock(lock_path: Path, wait_s: float = 3.0) -> Iterator[None]:
    """An advisory lock for a read-modify-write of a file that `write_atomically` replaces: on
    a side file, since a lock on the file itself would not hold across the rename, and a lock
    on its directory fails on NFS. Where no lock can be had (a filesystem without locks, a
    directory that cannot take the file) the body runs without one, as before locking existed:
    the callers' files (pins, device tokens) lose at worst one concurrent change, where a
    refusal would stop the user. The same goes for a lock still held after `wait_s`: the
    callers hold it only while they rewrite a small file, so a longer wait means a stuck
    holder (another program, a hung filesystem), which must not hang a login in silence."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
                    raise
            break
        yield
    finally:
        os.close(fd)  # releases the lock


def file_kind(mode: int) -> str | None:
    """None for a regular file; otherwise what the thing is, for a person. Checked before a
    file of the user's is opened: a FIFO or a device in its place would block the open or
    the read for good."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "an unusual kind of file"
