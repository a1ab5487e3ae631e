"""`util.files.side_file_lock`: a lock held elsewhere delays the body, never forever.

The pins and device tokens are rewritten under it. A holder that never lets go (another
program, a hung filesystem) made a login wait in silence for as long as it held the lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from util.files import side_file_lock


def _hold(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_lock_held_for_good_is_given_up_after_the_wait(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    held = _hold(lock)
    try:
        started = time.monotonic()
        with side_file_lock(lock, wait_s=0.3):
            waited = time.monotonic() - started
        assert 0.3 <= waited < 10
    finally:
        os.close(held)


def test_a_lock_released_meanwhile_is_taken(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    held = _hold(lock)
    threading.Timer(0.2, os.close, (held,)).start()
    with side_file_lock(lock, wait_s=30):
        probe = os.open(lock, os.O_RDWR)
        try:
            try:  # the body holds it now: another open file description cannot take it
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = False
            except BlockingIOError:
                taken = True
        finally:
            os.close(probe)
    assert taken
