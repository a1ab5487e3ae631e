"""A damaged stored blob is repaired by uploading a good copy of its bytes, and leftover
temporary files in `blobs/` are told apart from unreferenced blobs by `--check` and start-up.

Until session 20 `BlobStore.put` trusted a file's mere existence, and an upload of content
already stored only checked that both blobs existed: a truncated original stayed broken for
every later upload of the same photo ("new #2", then "cannot be read"). The end-to-end tests
run a real server (TLS, SQLite, the shell); the blob store's own rules are tested on a store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.catalog import DeleteImage, GetImage, ImageDetails, Uploaded, UploadImage
from protocol.messages import Ok
from repository import images as repo
from repository.blobstore import BlobStore, load_or_create_key
from repository.database import Database
from service.ingest import Upload, _name_and_look_up
from shell.connection import ServerConnection
from tests.rows import add_users, new_image
from tests.servers import ServerProcess, run_client
from tests.test_crash_safety import run_check
from tests.test_images_server import jpeg

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("repair") / "data").start()
    yield process
    process.stop()


def blob_names(server: ServerProcess, image_id: int) -> tuple[str, str]:
    """(original, thumbnail) blob names of an image, read from the server's database."""
    uri = f"file:{server.data_dir / 'vitrine.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        row = conn.execute("SELECT blob, thumb_blob FROM images WHERE id = ?", (image_id,))
        original, thumbnail = row.fetchone()
    return original, thumbnail


def blob_path(server: ServerProcess, name: str) -> Path:
    return server.data_dir / "blobs" / name[:2] / name


def upload(connection: ServerConnection, data: bytes, filename: str) -> Uploaded:
    return connection.call(UploadImage(id=0, filename=filename, data=data), Uploaded)


def details(connection: ServerConnection, image_id: int) -> ImageDetails:
    request = GetImage(id=0, image_id=image_id, with_original=True)
    return connection.call(request, ImageDetails)


def files_in(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` with its (inode, mtime in ns): what a write would change."""
    return {
        str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


# --- end to end ------------------------------------------------------------------------------


def test_a_truncated_original_is_repaired_by_another_users_upload(
    running: ServerProcess, tmp_path: Path
) -> None:
    """The QA reproduction: alice's original is cut to 2000 bytes; bob uploads the same photo
    and `show_image --save` of his copy, and of hers, gives back the photo."""
    home = tmp_path / "client"
    data = jpeg(2001, (640, 480))
    alice = running.user_connection(home, "alice20a", PASSWORD)
    bob = running.user_connection(home, "bob20a", PASSWORD)
    first = upload(alice, data, "photo.jpg")
    original, _ = blob_names(running, first.image_id)
    with blob_path(running, original).open("r+b") as f:
        f.truncate(2000)

    second = upload(bob, data, "photo.jpg")

    assert second.created
    assert blob_names(running, second.image_id)[0] == original  # shared, not a second copy
    saved = tmp_path / "x.jpg"
    done = run_client(
        running,
        "login bob20a",
        f"show_image {second.image_id} --save {saved} --no-images",
        config_dir=home,
        password=PASSWORD,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert saved.read_bytes() == data
    assert details(alice, first.image_id).original == data  # alice's row reads again too
    log = running.wait_for_log(f"blob {original} was damaged")
    assert "WARNING" in next(line for line in log.splitlines() if original in line)
    assert not list((running.data_dir / "blobs").rglob("*.tmp"))


def test_a_damaged_thumbnail_is_repaired_by_an_upload_of_the_same_bytes(
    running: ServerProcess, tmp_path: Path
) -> None:
    """A thumbnail of the right size whose bytes rotted: it fails authentication, so the
    upload makes the thumbnail again and replaces it; both images list with their picture."""
    home = tmp_path / "client"
    data = jpeg(2002, (640, 480))
    alice = running.user_connection(home, "alice20b", PASSWORD)
    bob = running.user_connection(home, "bob20b", PASSWORD)
    first = upload(alice, data, "photo.jpg")
    _, thumbnail = blob_names(running, first.image_id)
    path = blob_path(running, thumbnail)
    sealed = bytearray(path.read_bytes())
    sealed[len(sealed) // 2] ^= 0x01
    path.write_bytes(bytes(sealed))
    assert details(alice, first.image_id).image.thumbnail is None

    second = upload(bob, data, "photo.jpg")

    assert blob_names(running, second.image_id)[1] == thumbnail
    for connection, image_id in ((alice, first.image_id), (bob, second.image_id)):
        shown = details(connection, image_id)
        assert shown.image.thumbnail is not None and shown.original == data
    running.wait_for_log(f"blob {thumbnail} was damaged")


def test_the_owner_repairs_a_deleted_images_original_by_uploading_it_again(
    running: ServerProcess, tmp_path: Path
) -> None:
    """Alone with the damaged copy: alice deletes the broken image and uploads the photo again;
    the only row holding the bytes is her deleted one, and the new image reads."""
    alice = running.user_connection(tmp_path / "client", "alice20e", PASSWORD)
    data = jpeg(2005, (640, 480))
    first = upload(alice, data, "photo.jpg")
    original, _ = blob_names(running, first.image_id)
    with blob_path(running, original).open("r+b") as f:
        f.truncate(2000)
    alice.call(DeleteImage(id=0, image_id=first.image_id), Ok)

    again = upload(alice, data, "photo.jpg")

    assert again.created and again.image_id != first.image_id
    assert details(alice, again.image_id).original == data


def test_the_owner_repairs_a_live_image_by_uploading_it_again(
    running: ServerProcess, tmp_path: Path
) -> None:
    """The repair a user tries first (review of session 20): alice's original is cut short,
    she uploads the same photo again without deleting anything; she is told it is the image
    she has, and that image reads again."""
    alice = running.user_connection(tmp_path / "client", "alice20f", PASSWORD)
    data = jpeg(2099, (640, 480))
    first = upload(alice, data, "photo.jpg")
    original, _ = blob_names(running, first.image_id)
    with blob_path(running, original).open("r+b") as f:
        f.truncate(2000)

    again = upload(alice, data, "photo.jpg")

    assert (again.image_id, again.created) == (first.image_id, False)
    assert details(alice, first.image_id).original == data
    running.wait_for_log(f"blob {original} was damaged")


def test_the_owner_repairs_a_live_images_thumbnail_by_uploading_it_again(
    running: ServerProcess, tmp_path: Path
) -> None:
    """Only the thumbnail rotted (the original is fine): the owner's re-upload remakes it."""
    alice = running.user_connection(tmp_path / "client", "alice20g", PASSWORD)
    data = jpeg(2098, (640, 480))
    first = upload(alice, data, "photo.jpg")
    _, thumbnail = blob_names(running, first.image_id)
    path = blob_path(running, thumbnail)
    sealed = bytearray(path.read_bytes())
    sealed[len(sealed) // 2] ^= 0x01
    path.write_bytes(bytes(sealed))
    assert details(alice, first.image_id).image.thumbnail is None

    again = upload(alice, data, "photo.jpg")

    assert (again.image_id, again.created) == (first.image_id, False)
    assert details(alice, first.image_id).image.thumbnail is not None


def test_the_owners_resend_of_an_intact_image_writes_nothing(
    running: ServerProcess, tmp_path: Path
) -> None:
    """Re-sending a folder already stored stays a lookup: no blob is written again."""
    alice = running.user_connection(tmp_path / "client", "alice20h", PASSWORD)
    data = jpeg(2097, (640, 480))
    first = upload(alice, data, "photo.jpg")
    before = files_in(running.data_dir / "blobs")

    again = upload(alice, data, "photo.jpg")

    assert (again.image_id, again.created) == (first.image_id, False)
    assert files_in(running.data_dir / "blobs") == before


def test_an_intact_shared_blob_is_not_written_again(running: ServerProcess, tmp_path: Path) -> None:
    """The dedup fast path stays a fast path: a second user's upload of intact bytes shares
    both blobs and writes no file (same inodes, same times, nothing new)."""
    home = tmp_path / "client"
    data = jpeg(2003, (640, 480))
    alice = running.user_connection(home, "alice20c", PASSWORD)
    bob = running.user_connection(home, "bob20c", PASSWORD)
    first = upload(alice, data, "photo.jpg")
    before = files_in(running.data_dir / "blobs")

    second = upload(bob, data, "photo.jpg")

    assert second.created
    assert blob_names(running, second.image_id) == blob_names(running, first.image_id)
    assert files_in(running.data_dir / "blobs") == before
    assert details(bob, second.image_id).original == data


def test_check_and_start_up_count_temporary_files_apart(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A kill -9 mid-write leaves `.NAME.<random>.tmp`: `--check` lists it (count and bytes) as
    what the next start removes, and that start logs it as a temporary file, not as an
    unreferenced blob."""
    connection = server.user_connection(tmp_path / "client", "alice20d", PASSWORD)
    image_id = upload(connection, jpeg(2004), "photo.jpg").image_id
    original, _ = blob_names(server, image_id)
    connection.close()
    server.stop()
    leftover = blob_path(server, original).with_name(f".{original}.0123456789abcdef.tmp")
    leftover.write_bytes(b"\x00" * 1234)

    done = run_check(server.data_dir)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "temporary files in blobs: 1 (1234 bytes)" in done.stdout, done.stdout
    assert "the next normal start removes them" in done.stdout
    assert str(leftover) in done.stdout
    assert "unreferenced: 0" in done.stdout
    assert leftover.exists()  # the check removes nothing

    server.restart()
    log = server.wait_for_log("removed 1 temporary files (1234 bytes)")
    assert not leftover.exists()
    assert "unreferenced blobs" not in log  # nothing else was swept: no such line at all


# --- the blob store's rules ------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", load_or_create_key(tmp_path / "blob.key"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_put_replaces_a_damaged_blob_and_says_so(
    store: BlobStore, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"an original photo " * 500
    name = store.put(data)
    path = store.path_for(name)
    sealed = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(sealed[:2000]))
    elif damage == "flip":
        sealed[100] ^= 0x80
        path.write_bytes(bytes(sealed))
    else:
        path.write_bytes(b"")
    assert not store.intact(name)

    with caplog.at_level(logging.WARNING, logger="repository.blobstore"):
        assert store.put(data, name) == name

    assert store.get(name) == data and store.intact(name)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and name in warnings[0].getMessage()
    assert "photo" not in warnings[0].getMessage()  # the name, never the content


def test_put_of_an_intact_blob_writes_nothing(
    store: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"stored once"
    store.put(data)
    before = files_in(store.root)
    with caplog.at_level(logging.WARNING, logger="repository.blobstore"):
        store.put(data)
    assert files_in(store.root) == before
    assert not caplog.records


def test_concurrent_repairs_of_one_blob_leave_it_whole(store: BlobStore) -> None:
    data = b"popular photo " * 20_000
    name = store.put(data)
    store.path_for(name).write_bytes(b"VTB1 cut short")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def repair() -> None:
        barrier.wait()
        try:
            store.put(data, name)
            assert store.get(name) == data
        except BaseException as exc:  # reported in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=repair) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.get(name) == data
    assert list(store.iter_names()) == [name]
    assert not list(store.temporary_files())


def test_sweep_counts_unreferenced_blobs_without_temporary_files(
    store: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    keep = store.put(b"kept")
    store.put(b"dropped")
    leftover = store.path_for(keep).with_name(f".{keep}.0123456789abcdef.tmp")
    leftover.write_bytes(b"x" * 77)
    assert list(store.temporary_files()) == [(leftover, 77)]

    with caplog.at_level(logging.INFO, logger="repository.blobstore"):
        assert store.sweep({keep}) == 1

    assert not leftover.exists() and list(store.iter_names()) == [keep]
    assert "removed 1 temporary files (77 bytes)" in caplog.text


@pytest.mark.parametrize("wrong_size", [False, True])
def test_put_under_a_wrong_name_never_overwrites_an_intact_blob(
    store: BlobStore, wrong_size: bool
) -> None:
    """A caller's wrong `name` must not replace a blob that authenticates (it may back other
    rows): put refuses, whether or not the sizes differ, and the blob keeps its content."""
    kept = b"alice's photo " * 100
    name = store.put(kept)
    before = files_in(store.root)
    other = (b"bob's photo! " * 200) if wrong_size else bytes(reversed(kept))
    assert len(other) != len(kept) if wrong_size else len(other) == len(kept)

    with pytest.raises(ValueError, match="other content"):
        store.put(other, name)

    assert store.get(name) == kept
    assert files_in(store.root) == before


class CountingStore(BlobStore):
    """A real store that records which blobs were read whole."""

    def __init__(self, root: Path, key: bytes) -> None:
        super().__init__(root, key)
        self.read: list[str] = []

    def get(self, name: str) -> bytes:
        self.read.append(name)
        return super().get(name)


def owners_resend(tmp_path: Path, damage: int | None) -> tuple[bool, list[str], str, str]:
    """The owner's image of a stored original and thumbnail, the original cut to `damage`
    bytes if given; then the lookup of the owner sending the same bytes again: (repair?,
    blobs read whole, original's name, thumbnail's name)."""
    store = CountingStore(tmp_path / "blobs", load_or_create_key(tmp_path / "blob.key"))
    data, thumbnail = jpeg(2096, (640, 480)), jpeg(2095, (64, 48))
    original, thumb = store.put(data), store.put(thumbnail)
    if damage is not None:
        with store.path_for(original).open("r+b") as f:
            f.truncate(damage)
    db = Database(tmp_path / "vitrine.db")
    add_users(db.conn, "alice")
    repo.insert_image(db.conn, new_image(1, blob=original, thumb_blob=thumb))
    store.read.clear()
    _, mine, _, repair = _name_and_look_up(
        db.conn, store, Upload(owner_id=1, data=data, filename="")
    )
    assert mine is not None
    return repair, store.read, original, thumb


def test_the_owners_resend_of_an_intact_image_does_not_read_its_original(tmp_path: Path) -> None:
    """Re-syncing a folder of camera originals must not read and decrypt each of them: the
    original is checked by its size, the (small) thumbnail in full (review of session 20)."""
    repair, read, original, thumb = owners_resend(tmp_path, damage=None)
    assert not repair
    assert original not in read
    assert read == [thumb]


@pytest.mark.parametrize("damage", [0, 2000])
def test_the_owners_resend_of_a_truncated_original_is_a_repair(tmp_path: Path, damage: int) -> None:
    repair, _, _, _ = owners_resend(tmp_path, damage=damage)
    assert repair
