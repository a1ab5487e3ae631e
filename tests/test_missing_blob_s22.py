"""A missing blob repaired by an upload of the same bytes is logged like a damaged one.

Until session 22 `BlobStore.put` warned only about a file that was there and failed
authentication: a missing original or thumbnail came back without a word, although
docs/operations.md promises a WARNING for every repair. A missing file looks the same on disk
as a blob never written, so the upload tells the store which names stored rows already hold
(`BlobStore.put(..., named=True)`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from repository.blobstore import BlobStore, load_or_create_key
from tests.servers import ServerProcess
from tests.test_blob_repair_s20 import PASSWORD, blob_names, blob_path, details, upload
from tests.test_images_server import jpeg


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("missing") / "data").start()
    yield process
    process.stop()


def warning_about(server: ServerProcess, name: str) -> str:
    """The log line about blob `name` being replaced, once it is logged."""
    log = server.wait_for_log(f"blob {name} was missing; replacing it with the uploaded copy")
    return next(line for line in log.splitlines() if f"blob {name} was missing" in line)


# --- end to end ------------------------------------------------------------------------------


def test_another_users_upload_replacing_a_missing_original_warns(
    running: ServerProcess, tmp_path: Path
) -> None:
    """The QA reproduction: alice's original is deleted from blobs/; bob uploads the same photo,
    both images read again, and the log names the blob as missing and replaced."""
    home = tmp_path / "client"
    data = jpeg(2201, (640, 480))
    alice = running.user_connection(home, "alice22a", PASSWORD)
    bob = running.user_connection(home, "bob22a", PASSWORD)
    first = upload(alice, data, "photo.jpg")
    original, _ = blob_names(running, first.image_id)
    blob_path(running, original).unlink()

    second = upload(bob, data, "photo.jpg")

    assert details(alice, first.image_id).original == data
    assert details(bob, second.image_id).original == data
    assert "WARNING" in warning_about(running, original)


def test_the_owners_resend_replacing_a_missing_thumbnail_warns(
    running: ServerProcess, tmp_path: Path
) -> None:
    """The owner's re-send reads the thumbnail: a missing one is remade, and said so."""
    alice = running.user_connection(tmp_path / "client", "alice22b", PASSWORD)
    data = jpeg(2202, (640, 480))
    first = upload(alice, data, "photo.jpg")
    _, thumbnail = blob_names(running, first.image_id)
    blob_path(running, thumbnail).unlink()

    again = upload(alice, data, "photo.jpg")

    assert (again.image_id, again.created) == (first.image_id, False)
    assert details(alice, first.image_id).image.thumbnail is not None
    assert "WARNING" in warning_about(running, thumbnail)


def test_a_new_upload_is_not_reported_as_a_repair(running: ServerProcess, tmp_path: Path) -> None:
    alice = running.user_connection(tmp_path / "client", "alice22c", PASSWORD)
    home = tmp_path / "client"
    image_id = upload(alice, jpeg(2203, (640, 480)), "photo.jpg").image_id
    original, thumbnail = blob_names(running, image_id)
    log = running.settled_log(home)
    assert f"blob {original}" not in log and f"blob {thumbnail}" not in log


# --- the blob store's rule -------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", load_or_create_key(tmp_path / "blob.key"))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_put_of_a_named_blob_found_missing_warns_once(
    store: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"an original photo " * 500
    name = store.put(data)
    store.path_for(name).unlink()

    with caplog.at_level(logging.WARNING, logger="repository.blobstore"):
        assert store.put(data, name, named=True) == name
        assert store.put(data, name, named=True) == name  # intact now: nothing to say

    assert store.get(name) == data
    assert warnings(caplog) == [f"blob {name} was missing; replacing it with the uploaded copy"]


def test_put_of_a_new_blob_says_nothing(store: BlobStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="repository.blobstore"):
        name = store.put(b"never stored before")
    assert store.get(name) == b"never stored before"
    assert not warnings(caplog)


def test_another_users_upload_replacing_both_missing_blobs_warns_for_each(
    running: ServerProcess, tmp_path: Path
) -> None:
    """Another user's upload that finds the original missing remakes the thumbnail too: a
    thumbnail missing as well is named by the stored row, so its return is told too."""
    home = tmp_path / "client"
    data = jpeg(2204, (640, 480))
    alice = running.user_connection(home, "alice22d", PASSWORD)
    bob = running.user_connection(home, "bob22d", PASSWORD)
    first = upload(alice, data, "photo.jpg")
    original, thumbnail = blob_names(running, first.image_id)
    blob_path(running, original).unlink()
    blob_path(running, thumbnail).unlink()

    upload(bob, data, "photo.jpg")

    assert details(alice, first.image_id).original == data
    assert "WARNING" in warning_about(running, original)
    assert "WARNING" in warning_about(running, thumbnail)
