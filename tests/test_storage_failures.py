"""A disk that fails under a request is the operator's to mend, not a bug: the client is told
its request failed on the server's storage (and whether it is full), the log says so in one
line, and the server goes on serving once the disk does.

QA filled a disk under a running server: SQLite's "database or disk is full" reached clients
as "an unexpected error", with one traceback per request in the log (620 of them, written to
the disk that was full), and logins failed the same way, since each writes a session row.
"""

from __future__ import annotations

import logging
import re
import resource
import sqlite3
from pathlib import Path

import pytest

from protocol.errors import ErrorCode, VitrineError
from protocol.messages import Login, Session
from service.connection import STORAGE_FAILED, STORAGE_FULL, _failed
from tests.servers import ServerProcess
from tests.test_images_server import jpeg, upload


def _real_sqlite_full() -> sqlite3.OperationalError:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(100):
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 1000,))
    return full.value


def test_a_full_database_is_said_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert _failed("Login", 3, _real_sqlite_full()) == STORAGE_FULL
    (record,) = caplog.records
    assert "could not use its storage (it is full): database or disk is full" in record.message
    assert record.exc_info is None  # no traceback per request onto a full disk


def test_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        said = _failed("Browse", 4, KeyError("oops"))
        said_too = _failed("Browse", 5, sqlite3.OperationalError("no such column: x"))
    assert said == said_too == "The server hit an unexpected error; it has been logged."
    assert all(record.exc_info for record in caplog.records)


def test_logins_and_uploads_on_a_failing_disk_say_so_and_the_server_recovers(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "srv", extra_args=["--no-colours"]).start()
    try:
        conn = server.user_connection(tmp_path / "c", "alice")
        upload(conn, jpeg(1))
        pid = server.process.pid  # type: ignore[union-attr]
        # The server may write no file beyond 4 KiB: its WAL and new blobs fail (EFBIG), as
        # on a disk that cannot take more.
        limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (4096, limits[1]))
        with pytest.raises(VitrineError) as refused:
            upload(conn, jpeg(2, (400, 300)))
        assert "could not write to its storage" in refused.value.message
        other = server.connect(tmp_path / "c2")
        with pytest.raises(VitrineError) as login:
            other.call(Login(id=0, name="alice", password="correct horse"), Session)
        assert (login.value.code, login.value.message) == (ErrorCode.INTERNAL, STORAGE_FAILED)

        resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
        other.call(Login(id=0, name="alice", password="correct horse"), Session)
        assert upload(conn, jpeg(2, (400, 300))).created
        other.close()
        conn.close()
        log = server.settled_log(tmp_path / "s")
        assert re.search(
            r"request Login \d+ failed: the server could not use its storage: disk", log
        )
        assert "unexpected error" not in log
    finally:
        server.stop()
