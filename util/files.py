"""Writing files so that a crash never leaves half of one behind.

Everything Vitrine persists outside SQLite (blobs, the cart, the converted model, keys,
certificates, pinned servers) is written the same way: a temporary file beside the target,
created owner-only, fsynced, renamed over the target, and the directory fsynced so the rename
itself survives a power cut. Readers see the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
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
