"""`server.py --check` on a data directory put back wrong agrees with start-up: the wrong
blob key, a missing or empty `blobs/`, a `blobs` that is a file and a `blob.key` that is a
folder are each ONE problem line saying what to do, never a traceback and never one line per
image. The directory is built by real Services (SQLite file, blob store, ingest), no server.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from repository.blobstore import BlobStore, load_or_create_key
from service.app import open_services
from service.context import ServerConfig
from service.data_dir import KEY_PROBE_FAILURES
from service.ingest import Upload, ingest
from tests.rows import add_users
from tests.test_crash_safety import run_check

IMAGES = 4


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 90), (seed * 40 % 256, 90, 200)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding IMAGES images (no server running), copied by each test."""
    data_dir = tmp_path_factory.mktemp("stored") / "data"
    services = open_services(ServerConfig(data_dir=data_dir, colours=False))
    try:
        add_users(services.db.conn, "seller")
        for seed in range(IMAGES):
            upload = Upload(owner_id=1, data=_jpeg(seed), filename=f"{seed}.jpg")
            assert asyncio.run(ingest(services, upload))[1]
    finally:
        for pool in (services.executor, services.quick_executor, services.io_executor):
            if pool is not None:
                pool.shutdown(wait=True)
        services.db.close()
        os.close(services.extras.pop("data_dir_lock"))
    return data_dir


@pytest.fixture
def data_dir(stored: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(stored, copy)
    return copy


def problems(data_dir: Path) -> list[str]:
    """The problem lines of a failed check, which must end in a report, not a traceback."""
    done = run_check(data_dir)
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out, out
    assert "Result: NOT consistent" in done.stdout, out
    return [line[4:] for line in done.stdout.splitlines() if line.startswith("  - ")]


def test_the_undamaged_directory_is_consistent(data_dir: Path) -> None:
    done = run_check(data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"blobs read: {2 * IMAGES}, authenticated: {2 * IMAGES}" in done.stdout


def test_a_wrong_blob_key_is_one_problem(data_dir: Path, tmp_path: Path) -> None:
    key = data_dir / "blob.key"
    key.write_bytes(load_or_create_key(tmp_path / "other" / "blob.key"))
    found = problems(data_dir)
    assert len(found) == 1, found
    assert f"the blob key {key} does not match the stored blobs (wrong key restored?)" in found[0]
    assert f"{2 * IMAGES} of {2 * IMAGES} blobs" in found[0]
    assert "put back the blob.key that was backed up with vitrine.db" in found[0]


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_blob_folder_is_one_problem(data_dir: Path, state: str) -> None:
    folder = data_dir / "blobs"
    shutil.rmtree(folder)
    if state == "empty":
        folder.mkdir()
    found = problems(data_dir)
    assert found == [
        f"{folder} is {state}, but {data_dir / 'vitrine.db'} names stored images: restore "
        "blobs/ from the backup of this database (or mount the volume it lives on)."
    ]
    assert folder.exists() == (state == "empty")  # the check makes no empty folder either


def test_a_blob_folder_that_is_a_file_is_one_problem(data_dir: Path) -> None:
    folder = data_dir / "blobs"
    shutil.rmtree(folder)
    folder.write_bytes(b"not a folder")
    found = problems(data_dir)
    assert len(found) == 1, found
    assert f"{folder} is not a directory" in found[0] and "restore blobs/" in found[0]


def test_a_blob_key_that_is_a_folder_is_one_problem(data_dir: Path) -> None:
    key = data_dir / "blob.key"
    key.unlink()
    key.mkdir()
    found = problems(data_dir)
    assert len(found) == 1, found
    assert f"the blob key file {key} is a directory; restore the file from a backup" in found[0]


def test_blobs_damaged_where_others_authenticate_are_named_not_the_key(data_dir: Path) -> None:
    """Start-up probes only the newest images: three of them rotted (thumbnail damaged,
    original lost) look like a wrong key there. The check reads every blob, and one that
    authenticates proves the key, so it names each damaged blob instead of blaming the key."""
    conn = sqlite3.connect(f"file:{data_dir / 'vitrine.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, blob, thumb_blob FROM images ORDER BY id DESC").fetchall()
    finally:
        conn.close()
    store = BlobStore(data_dir / "blobs", (data_dir / "blob.key").read_bytes())
    damaged = rows[:KEY_PROBE_FAILURES]
    for _, original, thumbnail in damaged:
        sealed = bytearray(store.path_for(thumbnail).read_bytes())
        sealed[len(sealed) // 2] ^= 0x01
        store.path_for(thumbnail).write_bytes(bytes(sealed))
        store.delete(original)
    found = problems(data_dir)
    assert not any("blob key" in problem for problem in found), found
    expected = []
    for image_id, original, thumbnail in sorted(damaged):
        expected += [
            f"image {image_id}: original blob unusable: blob {original} is not stored",
            f"image {image_id}: thumbnail blob unusable: blob {thumbnail} failed authentication "
            "(tampered, swapped, or a different key)",
        ]
    assert sorted(found) == sorted(expected)


def test_the_check_leaves_a_crashed_servers_wal_alone(data_dir: Path, tmp_path: Path) -> None:
    """--check changes nothing: its writability probe used to open the database read-write,
    and closing that last connection folded the WAL a kill -9 left into vitrine.db."""
    writer = sqlite3.connect(data_dir / "vitrine.db", isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO server_meta (key, value) VALUES ('wal-test', 'x')")
    # a crash: the directory as a killed server leaves it, the WAL beside the database
    crashed = tmp_path / "crashed"
    shutil.copytree(data_dir, crashed)
    writer.close()
    files = ("vitrine.db", "vitrine.db-wal")
    before = {name: (crashed / name).read_bytes() for name in files}
    assert before["vitrine.db-wal"], "the copy must hold a WAL for this test to mean anything"

    done = run_check(crashed)

    assert "consistent" in done.stdout, done.stdout + done.stderr
    assert {name: (crashed / name).read_bytes() for name in files} == before
