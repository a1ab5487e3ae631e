"""`server.py --check` agrees with a start about the TLS files, and its blob counts add up
(session 22).

QA removed `server-key.pem` and kept `server-cert.pem`: `--check` said "consistent" (rc 0)
and the start refused. And with one blob missing, "blobs read: 800" stood beside "blobs on
disk: 799", and a blob two users' rows share was counted twice. The directory is built by real
Services (SQLite file, blob store, ingest), as in tests/test_check_damaged.py, whose fixtures
these tests share.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from protocol.tls import CERT_FILE, KEY_FILE, ensure_self_signed
from repository.blobstore import BlobStore, load_or_create_key
from service.app import open_services
from service.context import ServerConfig
from service.ingest import Upload, ingest
from tests.rows import add_users
from tests.test_check_damaged import IMAGES, data_dir, stored  # noqa: F401  (fixtures)
from tests.test_crash_safety import run_check
from tests.test_images_server import jpeg
from tests.test_operator_startup import check_problems, flip_a_bit, refusal, start_refused


@pytest.mark.parametrize("lost", [KEY_FILE, CERT_FILE])
def test_check_refuses_half_a_tls_pair_in_the_words_of_a_start(data_dir: Path, lost: str) -> None:  # noqa: F811
    ensure_self_signed(data_dir)
    (data_dir / lost).unlink()
    problems = check_problems(data_dir)
    line = refusal(start_refused(data_dir))
    assert problems == [line.removeprefix("vitrine: ")]
    assert f"{data_dir / lost} is missing but" in problems[0]
    assert not (data_dir / lost).exists()  # the check made no new identity


def test_check_refuses_a_damaged_tls_certificate(data_dir: Path) -> None:  # noqa: F811
    cert, _ = ensure_self_signed(data_dir)
    cert.write_bytes(b"garbage\n")
    problems = check_problems(data_dir)
    assert problems == [refusal(start_refused(data_dir)).removeprefix("vitrine: ")]
    assert f"the TLS certificate {cert} is not a PEM certificate" in problems[0]


def test_check_makes_no_identity_and_changes_no_mode(data_dir: Path) -> None:  # noqa: F811
    """Without the pair, a start makes one: the check says so (the directory has users, whose
    clients pinned the old one) and makes none. With it, the check leaves the directory's
    mode alone: a start tightens it, but a check must not (a read-only copy refuses chmod)."""
    done = run_check(data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no {CERT_FILE} and {KEY_FILE}: the next start makes a new TLS identity" in done.stdout
    assert not (data_dir / CERT_FILE).exists() and not (data_dir / KEY_FILE).exists()

    ensure_self_signed(data_dir)
    data_dir.chmod(0o750)
    done = run_check(data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "new TLS identity" not in done.stdout
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o750


def test_a_missing_blob_is_counted_missing_not_read(data_dir: Path) -> None:  # noqa: F811
    blobs = BlobStore(data_dir / "blobs", load_or_create_key(data_dir / "blob.key"))
    names = sorted(blobs.iter_names())
    assert len(names) == 2 * IMAGES
    blobs.path_for(names[0]).unlink()
    flip_a_bit(blobs.path_for(names[1]))
    done = run_check(data_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    on_disk = 2 * IMAGES - 1
    assert f"blobs read: {on_disk}, authenticated: {on_disk - 1}, missing: 1" in done.stdout
    assert f"blobs on disk: {on_disk}, unreferenced: 0" in done.stdout


def test_check_takes_the_tls_pair_given_on_the_command_line(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`--check --tls-cert C --tls-key K` checks that pair, as a start would take it, not the
    self-made pair of the data directory (which this one does not have)."""
    elsewhere = tmp_path / "tls"
    elsewhere.mkdir()
    cert, key = ensure_self_signed(elsewhere)
    given = ["--tls-cert", str(cert), "--tls-key", str(key)]

    done = run_check(data_dir, *given)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "new TLS identity" not in done.stdout

    key.unlink()
    done = run_check(data_dir, *given)
    assert done.returncode == 1, done.stdout + done.stderr
    assert str(key) in done.stdout


def test_blobs_two_users_share_are_read_and_counted_once(tmp_path: Path) -> None:
    """Two users uploading the same bytes store one original and one thumbnail, named by both
    rows. Until session 22's review the counts were per row: "blobs read: 4" beside "blobs on
    disk: 2". A damaged shared blob is still named for each image that holds it."""
    shared = tmp_path / "data"
    services = open_services(ServerConfig(data_dir=shared, colours=False))
    try:
        add_users(services.db.conn, "seller", "buyer")
        for owner in (1, 2):
            upload = Upload(owner_id=owner, data=jpeg(2230, (320, 240)), filename=f"{owner}.jpg")
            assert asyncio.run(ingest(services, upload))[1]
    finally:
        for pool in (services.executor, services.quick_executor, services.io_executor):
            if pool is not None:
                pool.shutdown(wait=True)
        services.db.close()
        os.close(services.extras.pop("data_dir_lock"))

    done = run_check(shared)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "blobs read: 2, authenticated: 2, missing: 0" in done.stdout
    assert "blobs on disk: 2, unreferenced: 0" in done.stdout

    blobs = BlobStore(shared / "blobs", load_or_create_key(shared / "blob.key"))
    original = max(blobs.iter_names(), key=lambda name: blobs.path_for(name).stat().st_size)
    flip_a_bit(blobs.path_for(original))
    done = run_check(shared)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "blobs read: 2, authenticated: 1, missing: 0" in done.stdout
    for image_id in (1, 2):
        assert f"image {image_id}: original blob unusable" in done.stdout, done.stdout
