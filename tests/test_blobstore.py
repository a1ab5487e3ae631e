"""The encrypted blob store: round trips, dedup, nothing readable on disk, tamper evidence."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from repository.blobstore import (
    KEY_BYTES,
    BlobCorrupt,
    BlobNotFound,
    BlobStore,
    InvalidBlobName,
    KeyFileError,
    load_or_create_key,
)


@pytest.fixture
def key(tmp_path: Path) -> bytes:
    return load_or_create_key(tmp_path / "keys" / "blob.key")


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> BlobStore:
    return BlobStore(tmp_path / "blobs", key)


def blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


PAYLOAD = b"\xff\xd8\xff\xe0 pretend jpeg " + bytes(range(256)) * 64


def test_round_trip(store: BlobStore) -> None:
    name = store.put(PAYLOAD)
    assert store.exists(name)
    assert store.get(name) == PAYLOAD
    assert store.get(store.put(b"")) == b""
    # A name the caller already computed is used as is, and is the same name.
    other = PAYLOAD[::-1]
    assert store.put(other, store.name_for(other)) == store.put(other) == store.name_for(other)
    assert store.get(store.name_for(other)) == other


def test_name_is_a_keyed_hash_not_the_plain_hash(store: BlobStore, tmp_path: Path) -> None:
    name = store.put(PAYLOAD)
    assert len(name) == 64 and int(name, 16) >= 0
    assert name == store.name_for(PAYLOAD)
    assert name != hashlib.sha256(PAYLOAD).hexdigest()
    other = BlobStore(tmp_path / "other", os.urandom(KEY_BYTES))
    assert other.name_for(PAYLOAD) != name  # without the key, names cannot be predicted


def test_identical_content_is_stored_once(store: BlobStore) -> None:
    first = store.put(PAYLOAD)
    path = store.path_for(first)
    before = path.stat()
    second = store.put(PAYLOAD)
    assert first == second
    assert len(blob_files(store.root)) == 1
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not rewritten
    assert store.put(PAYLOAD + b"x") != first
    assert len(blob_files(store.root)) == 2


def test_fan_out_layout(store: BlobStore) -> None:
    name = store.put(PAYLOAD)
    assert store.path_for(name) == store.root / name[:2] / name
    assert store.path_for(name).is_file()


def test_nothing_on_disk_reveals_content_or_plain_hash(store: BlobStore, tmp_path: Path) -> None:
    secret = b"UNIQUE-MARKER-" + os.urandom(16).hex().encode() + b"-END" * 100
    name = store.put(secret)
    plain_hash = hashlib.sha256(secret).hexdigest()
    for path in tmp_path.rglob("*"):
        assert plain_hash not in path.name
        if path.is_file():
            raw = path.read_bytes()
            assert b"UNIQUE-MARKER" not in raw
            assert secret[:32] not in raw
            assert plain_hash.encode() not in raw
            assert bytes.fromhex(plain_hash) not in raw
    assert len(store.path_for(name).read_bytes()) > len(secret)  # ciphertext + nonce + tag


def test_same_content_encrypts_differently_in_two_stores(tmp_path: Path, key: bytes) -> None:
    a = BlobStore(tmp_path / "a", key)
    b = BlobStore(tmp_path / "b", key)
    name = a.put(PAYLOAD)
    assert b.put(PAYLOAD) == name
    assert a.path_for(name).read_bytes() != b.path_for(name).read_bytes()  # fresh nonce


@pytest.mark.parametrize("where", ["header", "nonce", "middle", "tag"])
def test_tampering_is_detected(store: BlobStore, where: str) -> None:
    name = store.put(PAYLOAD)
    path = store.path_for(name)
    raw = bytearray(path.read_bytes())
    index = {"header": 0, "nonce": 6, "middle": len(raw) // 2, "tag": len(raw) - 1}[where]
    raw[index] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobCorrupt):
        store.get(name)


def test_truncated_blob_is_detected(store: BlobStore) -> None:
    name = store.put(PAYLOAD)
    path = store.path_for(name)
    for size in (0, 10, len(path.read_bytes()) - 1):
        path.write_bytes(path.read_bytes()[:size] if size else b"")
        with pytest.raises(BlobCorrupt):
            store.get(name)


def test_swapped_blobs_are_detected(store: BlobStore) -> None:
    a = store.put(b"first image")
    b = store.put(b"second image")
    store.path_for(a).write_bytes(store.path_for(b).read_bytes())
    with pytest.raises(BlobCorrupt):
        store.get(a)
    assert store.get(b) == b"second image"


def test_wrong_key_fails(tmp_path: Path, store: BlobStore) -> None:
    name = store.put(PAYLOAD)
    intruder = BlobStore(store.root, os.urandom(KEY_BYTES))
    with pytest.raises(BlobCorrupt):
        intruder.get(name)


def test_missing_blob(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
    assert not store.exists("0" * 64)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../etc/passwd",
        "ab/../../x",
        "A" * 64,
        "0" * 63,
        "0" * 65,
        "0" * 63 + "\n",
        "0" * 62 + "/x",
        "g" * 64,
        "../" + "0" * 61,
        "\x00" * 64,
    ],
)
def test_bad_names_are_refused(store: BlobStore, bad: str) -> None:
    with pytest.raises(InvalidBlobName):
        store.get(bad)
    with pytest.raises(InvalidBlobName):
        store.delete(bad)
    with pytest.raises(InvalidBlobName):
        store.exists(bad)


def test_non_string_name_is_refused(store: BlobStore) -> None:
    with pytest.raises(InvalidBlobName):
        store.get(b"0" * 64)  # type: ignore[arg-type]


def test_delete(store: BlobStore) -> None:
    name = store.put(PAYLOAD)
    assert store.delete(name) is True
    assert not store.exists(name)
    assert store.delete(name) is False
    with pytest.raises(BlobNotFound):
        store.get(name)


def test_iter_names_lists_blobs_only(store: BlobStore) -> None:
    names = {store.put(bytes([i]) * 100) for i in range(20)}
    name = next(iter(names))
    (store.root / name[:2] / f".{name}.deadbeef.tmp").write_bytes(b"partial")
    (store.root / "README").write_text("not a blob")
    assert set(store.iter_names()) == names


def test_sweep_removes_unreferenced_blobs_and_leftovers(store: BlobStore) -> None:
    keep = {store.put(b"keep %d" % i) for i in range(5)}
    drop = {store.put(b"drop %d" % i) for i in range(3)}
    some = next(iter(keep))
    leftover = store.root / some[:2] / f".{some}.0123456789abcdef.tmp"
    leftover.write_bytes(b"half-written ciphertext")
    foreign = store.root / "notes.txt"
    foreign.write_text("someone's file")

    removed = store.sweep(keep)

    assert removed == len(drop)  # temporary files are logged apart (sweep)
    assert set(store.iter_names()) == keep
    assert not leftover.exists()
    assert foreign.exists()  # the sweep only touches what looks like ours
    for name in keep:
        assert store.get(name).startswith(b"keep")
    assert store.sweep(keep) == 0


def test_failed_write_leaves_no_blob(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.put(PAYLOAD)
    monkeypatch.undo()
    assert list(store.iter_names()) == []
    assert blob_files(store.root) == []


def test_concurrent_puts_of_the_same_content(store: BlobStore) -> None:
    names: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            n = store.put(PAYLOAD)
            with lock:
                names.append(n)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 1
    assert store.get(names[0]) == PAYLOAD
    assert [p.name for p in blob_files(store.root)] == [names[0]]


# --- key file ----------------------------------------------------------------------------------


def test_key_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "blob.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["blob.key"]  # no temp file left


def test_key_is_stable_across_loads(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    assert load_or_create_key(path) == load_or_create_key(path)


def test_keys_are_random(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a") != load_or_create_key(tmp_path / "b")


def test_loose_key_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    key = load_or_create_key(path)
    os.chmod(path, 0o644)
    assert load_or_create_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"short", os.urandom(KEY_BYTES + 1)])
def test_damaged_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "blob.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_or_create_key(path)


def test_concurrent_key_creation_agrees(tmp_path: Path) -> None:
    path = tmp_path / "blob.key"
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1


def test_store_refuses_a_short_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path, b"too short")


def test_blob_files_are_owner_only(store: BlobStore) -> None:
    path = store.path_for(store.put(PAYLOAD))
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
