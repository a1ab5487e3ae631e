"""A server killed with SIGKILL mid-upload restarts consistent, and re-running completes it.

`server.py --check` is the judge: every row has its blobs and they decrypt, no blob is kept
that no row names, stock is non-negative, orders are whole, the text index matches. It only
reads, and a data directory that lost its database is refused rather than swept empty.
"""

from __future__ import annotations

import io
import secrets
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from PIL import Image

from protocol.catalog import UploadImage
from protocol.messages import PROTOCOL_VERSION
from tests.servers import PYTHON, ROOT, ServerProcess
from tests.test_images_server import jpeg, upload, upload_many
from tests.wire import read_response, send_message, tls_socket

FILES = 150
KILL_AFTER = 30


def run_check(data_dir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--check", "--data-dir", str(data_dir), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_refused_start(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """A start that must be refused: it returns at once, and a server that starts instead
    runs into the timeout, which fails the test."""
    return subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--port", "0", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single `vitrine: ...` line a refused start or check ends with, never a traceback."""
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("vitrine: "), done.stderr
    return lines[-1]


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


def stored_images(server: ServerProcess, tmp_path: Path, count: int) -> None:
    """`count` images uploaded, then the server stopped, which checkpoints the WAL into the
    database file."""
    conn = server.user_connection(tmp_path / "c", "seller")
    try:
        for seed in range(count):
            assert upload(conn, jpeg(seed, (80, 60))).created
    finally:
        conn.close()
    server.stop()


def test_sigkill_during_pipelined_bulk_upload(server: ServerProcess, tmp_path: Path) -> None:
    datas = [jpeg(seed, (400, 300)) for seed in range(9000, 9000 + FILES)]
    conn = server.user_connection(tmp_path / "c", "seller")
    futures: list[Future] = []
    done = threading.Semaphore(0)

    def submit_all() -> None:
        try:
            for n, data in enumerate(datas):
                future = conn.submit(UploadImage(id=0, filename=f"{n}.jpg", data=data))
                future.add_done_callback(lambda _f: done.release())
                futures.append(future)
        except Exception:
            pass  # the server died under us: that is the point

    sender = threading.Thread(target=submit_all, daemon=True)
    sender.start()
    for _ in range(KILL_AFTER):
        assert done.acquire(timeout=60), "uploads did not progress"
    server.kill()
    sender.join(30)
    acknowledged = {
        n: f.result().image_id
        for n, f in enumerate(futures)
        if f.done() and not f.cancelled() and f.exception() is None
    }
    assert KILL_AFTER <= len(acknowledged) < FILES, "the kill must land mid-upload"
    conn.close()

    server.restart()
    check = run_check(server.data_dir)  # read-only while the server runs
    assert check.returncode == 0, check.stdout + check.stderr
    assert "unreferenced: 0" in check.stdout

    conn = server.user_connection(tmp_path / "c2", "seller")
    try:
        again = upload_many(conn, datas)
    finally:
        conn.close()
    for n, image_id in acknowledged.items():
        assert (again[n].image_id, again[n].created) == (image_id, False)
    assert len({r.image_id for r in again}) == FILES
    assert sum(not r.created for r in again) >= len(acknowledged)

    server.stop()
    check = run_check(server.data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "unreferenced: 0" in check.stdout
    assert f"live images: {FILES}" in check.stdout


def test_restart_sweeps_orphans_and_check_reports_missing_blobs(
    server: ServerProcess, tmp_path: Path
) -> None:
    conn = server.user_connection(tmp_path / "c", "seller")
    try:
        kept = upload(conn, jpeg(1, (80, 60)))
        assert kept.created
    finally:
        conn.close()
    server.stop()
    blobs = server.data_dir / "blobs"
    orphan_name = secrets.token_hex(32)
    orphan = blobs / orphan_name[:2] / orphan_name
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    leftover = blobs / orphan_name[:2] / f".{orphan_name}.0123456789abcdef.tmp"
    leftover.write_bytes(b"half written")

    # The check only reports them: it deletes nothing and leaves the database as it was.
    database = (server.data_dir / "vitrine.db").read_bytes()
    check = run_check(server.data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "unreferenced: 1" in check.stdout and "Result: consistent" in check.stdout
    assert "the next normal start removes them" in check.stdout and orphan_name in check.stdout
    assert orphan.exists() and leftover.exists()
    assert (server.data_dir / "vitrine.db").read_bytes() == database

    server.restart()
    assert not orphan.exists() and not leftover.exists()
    server.stop()
    assert run_check(server.data_dir).returncode == 0

    # A blob that a row needs goes missing: the check says so and fails.
    stored = [p for p in blobs.rglob("*") if p.is_file()]
    assert len(stored) == 2  # the original and its thumbnail
    stored[0].unlink()
    check = run_check(server.data_dir)
    assert check.returncode == 1
    assert "blob unusable" in check.stdout and "NOT consistent" in check.stdout


def test_a_data_dir_without_its_database_is_refused_and_keeps_its_blobs(
    server: ServerProcess, tmp_path: Path
) -> None:
    stored_images(server, tmp_path, 2)
    data_dir = server.data_dir
    database = data_dir / "vitrine.db"
    blobs = blob_files(data_dir)
    assert len(blobs) == 4
    backup = tmp_path / "backup.db"
    with sqlite3.connect(database) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)

    for lose in (Path.unlink, lambda path: path.write_bytes(b"")):  # a failed restore, a bad copy
        lose(database)
        refused = run_refused_start(data_dir)
        assert refused.returncode == 1
        line = one_line_error(refused)
        assert str(database) in line and "4 files in blobs/" in line and "blob.key" in line
        assert "restore vitrine.db from a backup" in line
        check = run_check(data_dir)
        assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr
        assert "no usable database" in check.stdout and "NOT consistent" in check.stdout
        assert blob_files(data_dir) == blobs
        assert not database.exists() or database.stat().st_size == 0

    shutil.copyfile(backup, database)
    server.restart()
    server.stop()
    check = run_check(data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "live images: 2" in check.stdout and blob_files(data_dir) == blobs

    # Starting afresh is what the message says: move the blobs and their key away.
    database.unlink()
    (data_dir / "blobs").rename(tmp_path / "old-blobs")
    (data_dir / "blob.key").rename(tmp_path / "old-blob.key")
    server.restart()


def test_a_data_dir_without_its_blob_key_is_refused_and_no_new_key_is_made(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A new key would read none of the stored images, and would seal new uploads so that the
    old key, once restored, could not read them either."""
    stored_images(server, tmp_path, 1)
    data_dir = server.data_dir
    key = data_dir / "blob.key"
    blobs = blob_files(data_dir)
    key.rename(tmp_path / "saved.key")

    refused = run_refused_start(data_dir)
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert str(key) in line and "restore blob.key from a backup" in line
    assert not key.exists() and blob_files(data_dir) == blobs

    (tmp_path / "saved.key").rename(key)
    server.restart()
    server.stop()
    check = run_check(data_dir)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_server_killed_before_its_first_upload_restarts(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Its key exists and its schema may be only in the WAL: not a lost database."""
    server.kill()
    assert (server.data_dir / "blob.key").exists()
    server.restart()
    server.user_connection(tmp_path / "c", "seller").close()
    server.stop()
    server.restart()  # after a clean first run: key and database, no blob yet
    server.stop()
    assert run_check(server.data_dir).returncode == 0


def test_a_damaged_database_or_blob_is_named_not_a_traceback(
    server: ServerProcess, tmp_path: Path
) -> None:
    stored_images(server, tmp_path, 1)

    damaged_blob = tmp_path / "damaged-blob"
    shutil.copytree(server.data_dir, damaged_blob)
    unreadable = blob_files(damaged_blob)[0]
    unreadable.unlink()
    unreadable.mkdir()  # read_bytes fails with an OSError, as for a file without permission
    check = run_check(damaged_blob)
    assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr
    assert "blob unreadable (" in check.stdout and str(unreadable) in check.stdout

    damaged_db = tmp_path / "damaged-db"
    shutil.copytree(server.data_dir, damaged_db)
    database = damaged_db / "vitrine.db"
    with database.open("r+b") as f:
        f.truncate(database.stat().st_size // 2)
    check = run_check(damaged_db)
    assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr
    assert f"the database {database} is damaged" in check.stdout
    refused = run_refused_start(damaged_db)
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert f"the database {database} is damaged" in line and "restore it from a backup" in line
    assert len(blob_files(damaged_db)) == 2


def test_a_data_dir_that_cannot_be_one_is_a_bad_argument(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for done in (run_refused_start(a_file), run_check(a_file)):
        assert done.returncode == 2
        assert (
            one_line_error(done)
            == f"vitrine: {a_file} is not a directory; choose another --data-dir."
        )
    refused = run_refused_start(a_file / "data")
    assert refused.returncode == 2
    assert one_line_error(refused).startswith(f"vitrine: cannot use {a_file / 'data'} as the data")
    assert a_file.read_text() == "not a directory"


def test_a_port_in_use_is_named_and_the_data_dir_is_left_usable(tmp_path: Path) -> None:
    """Any OSError at start-up used to read "cannot listen", whatever failed; listening is
    now the only thing said so, after the data directory was opened and is closed again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [PYTHON, str(ROOT / "server.py"), "--port", str(port), "--data-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert one_line_error(done).startswith(f"vitrine: cannot listen on 127.0.0.1:{port}: ")
    server = ServerProcess(tmp_path).start()  # the lock was let go: the directory serves
    server.stop()


def test_a_start_up_failure_that_is_not_the_address_is_not_called_one(tmp_path: Path) -> None:
    (tmp_path / "server.lock").mkdir(parents=True)  # the lock file cannot be opened
    done = run_refused_start(tmp_path)
    assert done.returncode == 1
    line = one_line_error(done)
    assert line.startswith("vitrine: cannot start: ") and "server.lock" in line, line
    assert "cannot listen" not in done.stderr


def plain_jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(out, "JPEG")
    return out.getvalue()


def model_settled(server: ServerProcess, timeout: float = 60.0) -> None:
    """Wait until the image model is ready or known to be unavailable: uploads stop waiting
    for it."""
    deadline = time.monotonic() + timeout
    signs = ("embeddings: every live image has one", "search by image is unavailable")
    while not any(sign in server.log() for sign in signs):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def settled(server: ServerProcess, line: str, quiet_s: float = 1.0, timeout: float = 60.0) -> None:
    """Wait until the log has written no new `line` for `quiet_s` seconds."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = server.log().count(line)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} still being logged after {timeout} s")


def test_uploads_whose_client_left_are_stored_not_left_as_blobs(tmp_path: Path) -> None:
    """A client that pipelines uploads and disconnects used to have them cancelled between
    their blob writes and their insert: blobs no row named, kept until the next start. Each
    whose bytes all arrived is now stored; a stopping server waits for them."""
    server = ServerProcess(tmp_path / "data").start()
    try:
        model_settled(server)  # uploads then finish quickly
        sock = tls_socket(server)
        send_message(sock, {"type": "Hello", "id": 1, "protocol": PROTOCOL_VERSION})
        send_message(
            sock, {"type": "CreateUser", "id": 2, "name": "leaver", "password": "pw-leaver-1"}
        )
        send_message(sock, {"type": "Login", "id": 3, "name": "leaver", "password": "pw-leaver-1"})
        assert [type(read_response(sock)).__name__ for _ in range(3)] == [
            "Welcome",
            "UserInfo",
            "Session",
        ]
        for k in range(60):
            data = plain_jpeg((k * 4, 255 - k * 4, 90))  # small: all sent before most finish
            upload = {"type": "UploadImage", "id": 10 + k, "filename": "a.jpg", "data": data}
            send_message(sock, upload)
        sock.close()  # without reading a single answer
        settled(server, "request=UploadImage")  # answers went on coming after the close
    finally:
        server.stop()
    # Frames still unread when the socket closed are lost with it (the close resets the
    # connection): every upload the server began is stored, and only those.
    began = server.log().count("request=UploadImage")
    # Their answers have nowhere to go, which is not worth a warning each, without a peer.
    assert "SSL connection is closed" not in server.log(), server.log()
    check = run_check(server.data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    assert began > 0 and f"live images: {began}\n" in check.stdout, (began, check.stdout)
    assert "unreferenced: 0" in check.stdout, check.stdout
