"""What an operator meets at start-up: a data directory put back wrong (the wrong key, no blob
folder, half a TLS pair, damaged files), bad flags, a closed terminal, file permissions.

A start that would lose data quietly is refused in one `vitrine: ...` line naming the file and
what to do, never a traceback; a bad flag or `VITRINE_*` variable is argparse's one-line error
naming what the user actually gave. docs/operations.md describes each refusal.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from protocol.tls import CERT_FILE, KEY_FILE, ensure_self_signed
from repository.blobstore import BlobStore, load_or_create_key
from tests.servers import PYTHON, ROOT, ServerProcess
from tests.test_crash_safety import (
    blob_files,
    model_settled,
    one_line_error,
    run_check,
    stored_images,
)
from tests.test_images_server import jpeg, upload


def start_refused(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A start that must end at once; one that serves instead runs into the timeout."""
    return subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--port", "0", "--data-dir", str(data_dir), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    return one_line_error(done)


def newest_blobs(data_dir: Path) -> tuple[str, str]:
    """(original, thumbnail) of the newest image."""
    conn = sqlite3.connect(f"file:{data_dir / 'vitrine.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT blob, thumb_blob FROM images ORDER BY id DESC").fetchone()
    finally:
        conn.close()


# --- the blob key and the blob folder ------------------------------------------------------------


def test_a_wrong_blob_key_is_refused_and_the_right_one_serves_again(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Another valid key (from the wrong backup) used to start silently: old thumbnails blank,
    dedup missed, and uploads meanwhile sealed so that the right key could not read them."""
    stored_images(server, tmp_path, 2)
    data_dir = server.data_dir
    key = data_dir / "blob.key"
    right = key.read_bytes()
    blobs = blob_files(data_dir)
    key.write_bytes(load_or_create_key(tmp_path / "other" / "blob.key"))

    line = refusal(start_refused(data_dir))
    assert f"the blob key {key} does not match the stored blobs (wrong key restored?)" in line
    assert "put back the blob.key that was backed up with vitrine.db" in line
    assert blob_files(data_dir) == blobs

    key.write_bytes(right)
    server.restart()
    server.stop()
    assert run_check(data_dir).returncode == 0


def test_a_missing_blob_is_not_taken_for_a_wrong_key(server: ServerProcess, tmp_path: Path) -> None:
    """The key check reads the newest images' blobs; a lost one is a blob problem, for
    `--check`, and must not keep the server down."""
    stored_images(server, tmp_path, 3)
    store = BlobStore(server.data_dir / "blobs", (server.data_dir / "blob.key").read_bytes())
    for name in newest_blobs(server.data_dir):
        store.delete(name)
    server.restart()
    server.stop()


def test_a_damaged_blob_key_is_named_not_a_traceback(server: ServerProcess, tmp_path: Path) -> None:
    stored_images(server, tmp_path, 1)
    key = server.data_dir / "blob.key"
    right = key.read_bytes()
    for content in (b"", right[:16]):
        key.write_bytes(content)
        line = refusal(start_refused(server.data_dir))
        assert line == (
            f"vitrine: the blob key file {key} holds {len(content)} bytes instead of 32; "
            "restore it from a backup (without it the stored images cannot be read)."
        )
    key.unlink()
    key.mkdir()
    line = refusal(start_refused(server.data_dir))
    assert f"the blob key file {key} is a directory; restore the file from a backup" in line
    key.rmdir()
    key.write_bytes(right)
    server.restart()


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_database_without_its_blob_folder_is_refused(
    server: ServerProcess, tmp_path: Path, state: str
) -> None:
    """A restore that missed blobs/, or a volume not mounted: every image would be blank, and
    uploads would land where the real folder, once back, hides them."""
    stored_images(server, tmp_path, 1)
    folder = server.data_dir / "blobs"
    folder.rename(tmp_path / "saved-blobs")
    if state == "empty":
        folder.mkdir()

    line = refusal(start_refused(server.data_dir))
    assert f"{folder} is {state}, but {server.data_dir / 'vitrine.db'} names stored images" in line
    assert "restore blobs/ from the backup of this database" in line
    assert folder.exists() == (state == "empty")  # no new empty folder is made
    if state == "empty":
        folder.rmdir()

    (tmp_path / "saved-blobs").rename(folder)
    server.restart()


def flip_a_bit(path: Path) -> None:
    """Bit rot in the middle of a sealed blob: it is there, and fails authentication."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def check_problems(data_dir: Path) -> list[str]:
    done = run_check(data_dir)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stdout
    return [line[4:] for line in done.stdout.splitlines() if line.startswith("  - ")]


def test_one_damaged_blob_is_not_taken_for_a_wrong_key(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A one-image shop whose thumbnail rotted was refused and told to restore another key:
    the original was never tried, and one failure with no success meant "wrong key"."""
    stored_images(server, tmp_path, 1)
    store = BlobStore(server.data_dir / "blobs", (server.data_dir / "blob.key").read_bytes())
    original, thumbnail = newest_blobs(server.data_dir)
    flip_a_bit(store.path_for(thumbnail))
    server.restart()  # the original authenticates: the key is right
    server.stop()

    store.delete(original)
    server.restart()  # the damaged thumbnail alone: a damaged image, not a wrong key
    server.stop()
    found = check_problems(server.data_dir)
    assert not any("blob key" in problem for problem in found), found
    assert len(found) == 2, found
    assert "original blob unusable" in found[0] and f"blob {original} is not stored" in found[0]
    assert "thumbnail blob unusable" in found[1]
    assert f"blob {thumbnail} failed authentication" in found[1]


def test_a_blobs_file_is_refused_in_the_words_of_check(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Start-up called a `blobs` file "missing" while --check said "not a directory"; and
    with no row naming a blob it served, and then every upload failed."""
    stored_images(server, tmp_path, 1)
    folder = server.data_dir / "blobs"
    folder.rename(tmp_path / "saved-blobs")
    folder.write_bytes(b"not a folder")
    line = refusal(start_refused(server.data_dir))
    assert line == (
        f"vitrine: {folder} is not a directory: move it aside and restore blobs/ from the "
        "backup of this database."
    )
    assert check_problems(server.data_dir) == [line.removeprefix("vitrine: ")]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "blobs").write_bytes(b"")
    line = refusal(start_refused(fresh))
    assert line == (
        f"vitrine: {fresh / 'blobs'} is not a directory: move it aside (no image needs it: "
        "the next start makes an empty blobs/)."
    )
    assert not (fresh / CERT_FILE).exists()

    folder.unlink()
    (tmp_path / "saved-blobs").rename(folder)
    server.restart()


# --- the TLS identity ----------------------------------------------------------------------------


def test_damaged_tls_files_are_named_not_a_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cert, key = ensure_self_signed(data_dir)
    good_key = key.read_bytes()
    advice = "restore server-cert.pem and server-key.pem from a backup, or remove both"

    key.write_bytes(good_key[: len(good_key) // 2])
    line = refusal(start_refused(data_dir))
    assert f"the TLS private key {key} is not a PEM private key" in line and advice in line
    key.write_bytes(good_key)

    good_cert = cert.read_bytes()
    cert.write_bytes(b"garbage\n")
    line = refusal(start_refused(data_dir))
    assert f"the TLS certificate {cert} is not a PEM certificate" in line and advice in line
    cert.write_bytes(good_cert)

    missing = tmp_path / "nonexist"
    line = refusal(start_refused(data_dir, "--tls-cert", str(missing), "--tls-key", str(missing)))
    assert f"cannot read the TLS certificate {missing}: No such file or directory" in line
    assert "check --tls-cert and --tls-key" in line

    _, other_key = ensure_self_signed(tmp_path / "other")
    line = refusal(start_refused(data_dir, "--tls-cert", str(cert), "--tls-key", str(other_key)))
    assert f"the TLS private key {other_key} does not belong to the certificate {cert}" in line


@pytest.mark.parametrize("lost", [KEY_FILE, CERT_FILE])
def test_half_a_tls_pair_is_refused_not_replaced(tmp_path: Path, lost: str) -> None:
    """Making a new pair would change the fingerprint every client pinned."""
    data_dir = tmp_path / "data"
    cert, key = ensure_self_signed(data_dir)
    kept = {CERT_FILE: key, KEY_FILE: cert}[lost]
    before = kept.read_bytes()
    (data_dir / lost).unlink()

    line = refusal(start_refused(data_dir))
    assert f"{data_dir / lost} is missing but {kept} is there: restore {lost} from a backup" in line
    assert "makes a new identity that every client must trust again" in line
    assert kept.read_bytes() == before and not (data_dir / lost).exists()


def test_a_new_identity_for_a_data_dir_with_users_is_warned_about(
    server: ServerProcess, tmp_path: Path
) -> None:
    server.user_connection(tmp_path / "c", "seller").close()
    server.stop()  # joins the drains: the log is whole
    assert "new TLS identity" not in server.log()  # a first start makes one quietly
    old = server.fingerprint
    (server.data_dir / CERT_FILE).unlink()
    (server.data_dir / KEY_FILE).unlink()
    server.restart()
    assert server.fingerprint != old
    log = server.settled_log(tmp_path / "settle")  # stderr is drained by a thread: wait for it
    assert "WARNING" in log and f"made a new TLS identity ({server.fingerprint})" in log
    assert "every client that pinned the old one refuses this server" in log


def test_a_refused_start_makes_no_tls_identity(server: ServerProcess, tmp_path: Path) -> None:
    """The identity was made before the data directory's refusals: the refused start left a
    new pair, and the next start served it without the warning, locking out every client
    that pinned the lost one."""
    stored_images(server, tmp_path, 1)  # a directory with users
    (server.data_dir / CERT_FILE).unlink()
    (server.data_dir / KEY_FILE).unlink()
    shutil.rmtree(server.data_dir / "blobs")
    line = refusal(start_refused(server.data_dir))
    assert f"{server.data_dir / 'blobs'} is missing" in line
    assert not (server.data_dir / CERT_FILE).exists()
    assert not (server.data_dir / KEY_FILE).exists()


# --- flags and their environment twins -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "70000"], "argument --port: '70000' is not a port number (0-65535)"),
        (["--port", "-1"], "argument --port: '-1' is not a port number (0-65535)"),
        (["--idle-timeout", "0"], "argument --idle-timeout: '0' is not a positive number"),
        (["--idle-timeout", "-5"], "argument --idle-timeout: '-5' is not a positive number"),
        (["--write-timeout", "0"], "argument --write-timeout: '0' is not a positive number"),
        (["--max-image-bytes", "-1"], "argument --max-image-bytes: '-1' is not a positive"),
        (
            ["--max-image-bytes", "40000000"],
            "argument --max-image-bytes: '40000000' is more than one upload can carry; the "
            "largest is 33030144",
        ),
        (["--log-level", "LOUD"], "argument --log-level: 'LOUD' is not one of DEBUG, INFO"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together: give both or neither"),
    ],
)
def test_bad_flags_are_refused_by_argparse(tmp_path: Path, args: list[str], expected: str) -> None:
    done = start_refused(tmp_path / "data", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"server.py: error: {expected}")
    assert not (tmp_path / "data").exists()


def test_a_bad_environment_twin_is_blamed_on_the_variable(tmp_path: Path) -> None:
    done = subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "VITRINE_PORT": "abc", "VITRINE_IDLE_TIMEOUT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line == "server.py: error: VITRINE_PORT: 'abc' is not a port number (0-65535)"
    # The flag wins over its twin, so a good flag makes a bad twin harmless (this start goes on
    # until the data directory, which cannot be one, stops it).
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    done = start_refused(a_file, env={"VITRINE_PORT": "abc", "VITRINE_LOG_LEVEL": "debug"})
    assert done.returncode == 2 and "VITRINE_PORT" not in done.stderr, done.stderr
    assert (
        one_line_error(done) == f"vitrine: {a_file} is not a directory; choose another --data-dir."
    )
    done = start_refused(tmp_path, env={"VITRINE_LOG_LEVEL": "loud"})
    assert done.returncode == 2
    assert "VITRINE_LOG_LEVEL: 'loud' is not one of" in done.stderr.splitlines()[-1]


# --- stopping and permissions --------------------------------------------------------------------


def test_sighup_stops_the_server_cleanly(server: ServerProcess) -> None:
    """Closing the terminal a server runs in sends SIGHUP, which used to kill it outright."""
    assert server.stop(signal.SIGHUP) == 0
    log = server.log()
    assert "received SIGHUP" in log and "shutting down" in log
    assert "Vitrine server stopped" in log


def ignore_sighup() -> None:
    """What `nohup` does before it runs the server."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_a_server_started_under_nohup_outlives_sighup(tmp_path: Path) -> None:
    """`nohup server.py &` ignores SIGHUP so that the server outlives its terminal; the
    server's own handler replaced that, and closing the terminal stopped it."""
    server = ServerProcess(tmp_path / "server", signals=ignore_sighup).start()
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        server.user_connection(tmp_path / "c", "seller").close()  # still serving
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "received SIGHUP" not in log and "received SIGTERM" in log


def owner_only(data_dir: Path) -> list[str]:
    """What in `data_dir` others may read or enter."""
    return [
        f"{path.relative_to(data_dir)} {stat.S_IMODE(path.stat().st_mode):o}"
        for path in [data_dir, *data_dir.rglob("*")]
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]


def test_everything_in_the_data_dir_is_owner_only(server: ServerProcess, tmp_path: Path) -> None:
    conn = server.user_connection(tmp_path / "c", "seller")
    try:
        assert upload(conn, jpeg(5, (80, 60))).created
        model_settled(server)
    finally:
        conn.close()
    assert owner_only(server.data_dir) == []  # vitrine.db, its -wal and -shm while running
    server.stop()
    assert (server.data_dir / "vector-index").is_dir()  # saved at the stop
    assert owner_only(server.data_dir) == []

    # What an older version left readable by others is tightened, and said so.
    (server.data_dir / "vitrine.db").chmod(0o644)
    server.restart()
    assert owner_only(server.data_dir) == []
    server.wait_for_log("WARNING vitrine.server: restricted vitrine.db")
    server.stop()


def test_a_refused_start_changes_nothing(server: ServerProcess, tmp_path: Path) -> None:
    """The refusals come before the sweep and the purge: the directory stays as it was."""
    stored_images(server, tmp_path, 1)
    copy = tmp_path / "copy"
    shutil.copytree(server.data_dir, copy)
    (server.data_dir / "blob.key").write_bytes(load_or_create_key(tmp_path / "k" / "blob.key"))
    refusal(start_refused(server.data_dir))
    assert (server.data_dir / "vitrine.db").read_bytes() == (copy / "vitrine.db").read_bytes()
    assert [p.name for p in blob_files(server.data_dir)] == [p.name for p in blob_files(copy)]
