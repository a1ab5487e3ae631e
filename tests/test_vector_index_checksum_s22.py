"""A saved vector index whose files the disk changed is refused, not trusted (session 22).

QA permuted `vector-index/ids-*.npy` (same shape) and search by a hat's photo answered another
product with score 1.0; overwriting 1 MB inside `vectors-*.npy` dropped the exact match. The
start logged "vector index loaded from disk" and `--check` said "consistent". Now the manifest
holds each file's checksum: a mismatch is a WARNING naming the file and a rebuild from the
database, `--check` reports it, and an index saved without checksums is rebuilt, not trusted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from repository import vector_index
from repository.vector_index import IndexFormatError, VectorIndex
from tests.servers import PYTHON, ROOT, ServerProcess
from tests.test_check_damaged import data_dir, stored  # noqa: F401 (fixtures)
from tests.test_clean_stop_wal_s22 import fill, small_disk  # noqa: F401 (a fixture)
from tests.test_crash_safety import run_check
from tests.test_images_server import upload
from tests.test_operator_startup import check_problems
from tests.test_similarity_server import READY_TIMEOUT_S, photo, search, wait_until_ready, weights

DIM = 1280


def _saved(tmp_path: Path, n: int = 300) -> tuple[Path, dict]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    VectorIndex.from_arrays(np.arange(1, n + 1, dtype=np.int64), vectors).save(tmp_path, "g")
    return tmp_path, json.loads((tmp_path / "manifest.json").read_text())


def _permute_ids(path: Path) -> None:
    """What QA did: the same shape and header, the ids in another order."""
    ids = np.load(path)
    np.save(path, np.roll(ids, 1))


def test_a_permuted_ids_file_is_refused_naming_it(tmp_path: Path) -> None:
    root, manifest = _saved(tmp_path)
    ids_file = root / manifest["files"]["ids"]
    _permute_ids(ids_file)
    with pytest.raises(vector_index.DamagedIndexError) as raised:
        VectorIndex.load(root, expected_generation="g")
    assert raised.value.path == ids_file and str(ids_file) in str(raised.value)
    with pytest.raises(vector_index.DamagedIndexError):
        VectorIndex.verify(root)


def test_bytes_overwritten_inside_the_vectors_file_are_refused(tmp_path: Path) -> None:
    root, manifest = _saved(tmp_path)
    vectors_file = root / manifest["files"]["vectors"]
    size = vectors_file.stat().st_size
    with open(vectors_file, "r+b") as f:  # in place, the size unchanged
        f.seek(size // 2)
        f.write(bytes(1024))
    assert vectors_file.stat().st_size == size
    with pytest.raises(vector_index.DamagedIndexError, match="vectors-"):
        VectorIndex.load(root, expected_generation="g")


def test_an_index_without_checksums_is_unverifiable_not_damaged(tmp_path: Path) -> None:
    """What the previous version saved: rebuilt (IndexFormatError), but not called damage."""
    root, manifest = _saved(tmp_path)
    del manifest["checksums"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="no checksums") as raised:
        VectorIndex.load(root, expected_generation="g")
    assert not isinstance(raised.value, vector_index.DamagedIndexError)


def test_an_intact_index_loads_and_verifies(tmp_path: Path) -> None:
    root, manifest = _saved(tmp_path)
    assert set(manifest["checksums"]) == set(manifest["files"])
    assert all(value.startswith("sha256:") for value in manifest["checksums"].values())
    assert VectorIndex.verify(root) == 300
    assert len(VectorIndex.load(root, expected_generation="g")) == 300
    with pytest.raises(FileNotFoundError):
        VectorIndex.verify(tmp_path / "none")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("files", ["ids-x.npy", "vectors-x.npy"]),  # a list where the kinds' mapping belongs
        ("files", "ids-x.npy"),
        ("files", {"ids": 7}),
        ("checksums", ["sha256:00"]),
    ],
)
def test_a_manifest_of_another_shape_is_a_format_error(
    tmp_path: Path, field: str, value: object
) -> None:
    """Until session 22's review a list for `files` raised a bare AttributeError from the
    checksum check, which `load`'s callers do not catch: the similarity engine stopped and
    search by image stayed UNAVAILABLE until a restart, instead of a rebuild."""
    root, manifest = _saved(tmp_path)
    manifest[field] = value
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError):
        VectorIndex.load(root, expected_generation="g")
    with pytest.raises(IndexFormatError):
        VectorIndex.verify(root)


def test_only_the_saved_checksum_algorithm_is_accepted(tmp_path: Path) -> None:
    """A digest of another algorithm is not one a save writes: refused as unusable, not left to
    fail inside hashlib (`shake_128` gave a TypeError from `hexdigest()`)."""
    root, manifest = _saved(tmp_path)
    for kind, name in manifest["files"].items():
        digest = hashlib.shake_128((root / name).read_bytes()).hexdigest(32)
        manifest["checksums"][kind] = f"shake_128:{digest}"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="no usable checksum"):
        VectorIndex.load(root, expected_generation="g")
    with pytest.raises(IndexFormatError, match="no usable checksum"):
        VectorIndex.verify(root)


def in_a_process_of_its_own(code: str, root: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` with `root` as its argument in a new interpreter: a SIGBUS would end the
    test run."""
    return subprocess.run(
        [PYTHON, "-c", code, str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_page_the_disk_cannot_serve_does_not_kill_the_process(small_disk: Path) -> None:  # noqa: F811
    """The check reads the files; it does not map them. A page fault the filesystem cannot
    serve (a disk I/O error; here a hole in a file on a full tmpfs, which a read returns as
    zeros and a mapping must allocate) is a SIGBUS for a mapped file, which killed a start or
    `--check` (until session 22's review: `Bus error`, exit status 135)."""
    root = small_disk / "vector-index"
    root.mkdir()
    size = 4 * 1024 * 1024
    with (root / "vectors-x.npy").open("wb") as f:
        f.truncate(size)  # a hole: no blocks until a page is written or mapped
    manifest = {
        "format": vector_index._FORMAT,
        "count": 0,
        "files": {"vectors": "vectors-x.npy"},
        "checksums": {"vectors": f"sha256:{hashlib.sha256(bytes(size)).hexdigest()}"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    fill(small_disk)

    code = (
        "import sys; from repository.vector_index import VectorIndex; "
        "print(VectorIndex.verify(sys.argv[1]))"
    )
    done = in_a_process_of_its_own(code, root)
    assert (done.returncode, done.stdout.strip()) == (0, "0"), done.stderr


def _unreadable(path: Path) -> None:
    """Make `path` a file every read of which fails with EIO, as a failing disk's does: a link
    to /proc/self/mem, whose offset 0 is never mapped in the process that reads it."""
    path.unlink()
    path.symlink_to("/proc/self/mem")


@pytest.mark.parametrize("kind", ["ids", "vectors", "manifest"])
def test_a_file_the_disk_cannot_read_is_damage(tmp_path: Path, kind: str) -> None:
    """Review (session 22): an OSError while hashing (EIO) became a plain IndexFormatError,
    which a start logs at INFO like a missing index and `--check` prints as a remark, exit 0.
    A read error of a saved file is damage, named as such."""
    root, manifest = _saved(tmp_path)
    path = root / ("manifest.json" if kind == "manifest" else manifest["files"][kind])
    _unreadable(path)
    for attempt in (VectorIndex.verify, lambda r: VectorIndex.load(r, expected_generation="g")):
        with pytest.raises(vector_index.UnreadableIndexError) as raised:
            attempt(root)
        assert isinstance(raised.value, vector_index.DamagedIndexError)
        assert raised.value.path == path
        assert str(raised.value) == f"{path} cannot be read: Input/output error"


def test_a_missing_file_is_still_no_damage(tmp_path: Path) -> None:
    """What a crash or an operator's `rm` leaves: rebuilt, as before, without the alarm."""
    root, manifest = _saved(tmp_path)
    (root / manifest["files"]["vectors"]).unlink()
    with pytest.raises(IndexFormatError) as raised:
        VectorIndex.verify(root)
    assert not isinstance(raised.value, vector_index.DamagedIndexError)


def test_check_reports_a_file_the_disk_cannot_read(data_dir: Path) -> None:  # noqa: F811
    root, manifest = _saved(data_dir / "vector-index")
    vectors_file = root / manifest["files"]["vectors"]
    _unreadable(vectors_file)
    assert check_problems(data_dir) == [
        f"the vector index cannot be read: {vectors_file} cannot be read: Input/output error; "
        "the next start rebuilds it from the database (search by image stays right), but a "
        "read error may mean a failing disk: check the disk."
    ]


def test_a_load_reads_a_page_the_disk_cannot_map(small_disk: Path) -> None:  # noqa: F811
    """Review (session 22): `load` mapped the vectors file (np.load(mmap_mode="r")) after the
    verifying read, so a page a read serves and a mapping cannot (a hole in a file on a full
    tmpfs) still killed a start with SIGBUS, there. It now reads into the blocks."""
    root = small_disk / "vector-index"
    root.mkdir()
    count = 1024  # 5 MB of vectors: a hole of many pages
    np.save(root / "ids-x.npy", np.arange(1, count + 1, dtype=np.int64))
    with (root / "vectors-x.npy").open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (count, DIM)}
        )
        f.truncate(f.tell() + count * DIM * 4)  # all zeros, and no blocks until written
    files = {"ids": "ids-x.npy", "vectors": "vectors-x.npy"}
    checksums = {
        kind: f"sha256:{hashlib.sha256((root / name).read_bytes()).hexdigest()}"
        for kind, name in files.items()
    }
    manifest = {
        "format": vector_index._FORMAT,
        "dim": DIM,
        "count": count,
        "generation": "g",
        "files": files,
        "checksums": checksums,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    fill(small_disk)

    code = (
        "import sys; from repository.vector_index import VectorIndex; "
        "print(len(VectorIndex.load(sys.argv[1], expected_generation='g')))"
    )
    done = in_a_process_of_its_own(code, root)
    assert (done.returncode, done.stdout.strip()) == (0, str(count)), done.stderr


def _wait_for_index(process: ServerProcess) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "vectors (" not in (log := process.log()):  # "vector index ... in S s: N vectors (...)"
        assert time.monotonic() < deadline, log
        assert process.process is not None and process.process.poll() is None, log
        time.sleep(0.2)
    return log


def test_a_server_rebuilds_a_damaged_index_and_check_reports_it(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "data", env={"VITRINE_WEIGHTS": weights()}).start()
    datas = [photo(seed) for seed in range(700, 706)]
    try:
        conn = process.user_connection(tmp_path / "c", "seller")
        wait_until_ready(conn, datas[0])
        ids = [upload(conn, data).image_id for data in datas]
        conn.close()
    finally:
        process.stop()
    root = process.data_dir / "vector-index"
    manifest = json.loads((root / "manifest.json").read_text())
    ids_file = root / manifest["files"]["ids"]
    _permute_ids(ids_file)

    done = run_check(process.data_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the vector index is damaged: {ids_file} does not match the checksum" in done.stdout
    assert "the next start rebuilds it from the database" in done.stdout

    process.restart()
    try:
        log = _wait_for_index(process)
        assert "WARNING vitrine.similarity: vector index: rebuilding from the database" in log
        assert f"{ids_file} does not match the checksum in its manifest" in log
        assert "rebuilt from the database" in log and "loaded from disk" not in log
        conn = process.user_connection(tmp_path / "c", "seller")
        for data, image_id in zip(datas, ids, strict=True):
            (best, *_), _ = search(conn, data=data, limit=3)
            assert best.id == image_id and best.score == pytest.approx(1.0, abs=1e-4)
        conn.close()
    finally:
        process.stop()
    assert (
        "vector index: 6 vectors, files match their checksums" in run_check(process.data_dir).stdout
    )

    # A file the disk cannot read (EIO) is damage too: a WARNING, not the INFO of a routine
    # rebuild (until session 22's review).
    manifest = json.loads((root / "manifest.json").read_text())
    vectors_file = root / manifest["files"]["vectors"]
    _unreadable(vectors_file)
    process.restart()
    try:
        log = _wait_for_index(process)
        said = (
            "WARNING vitrine.similarity: vector index: rebuilding from the database "
            f"({vectors_file} cannot be read: Input/output error)"
        )
        assert said in log, log
        assert "rebuilt from the database" in log
    finally:
        process.stop()

    # An index the previous version saved (no checksums) is rebuilt, and the log says why.
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["checksums"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    done = run_check(process.data_dir)
    assert done.returncode == 0 and "no checksums (saved by an earlier version)" in done.stdout
    process.restart()
    try:
        log = _wait_for_index(process)
        said = (
            "INFO vitrine.similarity: vector index: rebuilding from the database (the saved "
            "index has no checksums (saved by an earlier version), so it cannot be verified)"
        )
        assert said in log
        assert "rebuilt from the database" in log
    finally:
        process.stop()


@pytest.fixture
def load_hashes_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load` must check the bytes it loads, as it reads them: the separate verifying pass
    (`verify`'s) read the files a first time and loaded them from a second read, which a
    failing disk can answer with other bytes (session 22's second review)."""

    def refuse(*_: object) -> None:
        raise AssertionError("load must not read the files twice")

    monkeypatch.setattr(vector_index, "_verify_files", refuse)


def _rewrite_checksum(root: Path, manifest: dict, kind: str) -> None:
    path = root / manifest["files"][kind]
    manifest["checksums"][kind] = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.usefixtures("load_hashes_itself")
@pytest.mark.parametrize("kind", ["ids", "vectors", "vectors header", "ann"])
def test_load_checks_the_bytes_it_loads(tmp_path: Path, kind: str) -> None:
    n = 1200
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    index = VectorIndex.from_arrays(np.arange(1, n + 1, dtype=np.int64), vectors, exact_threshold=0)
    assert index.uses_ann
    index.save(tmp_path, "g")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(VectorIndex.load(tmp_path, expected_generation="g", exact_threshold=0)) == n
    path = tmp_path / manifest["files"]["ann" if kind == "ann" else kind.split()[0]]
    with open(path, "r+b") as f:
        f.seek(20 if kind == "vectors header" else path.stat().st_size // 2)
        f.write(b"\x07" * 8)  # in the header: a shape of other digits
    with pytest.raises(vector_index.DamagedIndexError) as raised:
        VectorIndex.load(tmp_path, expected_generation="g", exact_threshold=0)
    assert raised.value.path == path


@pytest.mark.usefixtures("load_hashes_itself")
def test_bytes_beyond_the_saved_rows_are_refused(tmp_path: Path) -> None:
    """They were ignored until session 22's second review: the rows were read, the rest not."""
    root, manifest = _saved(tmp_path)
    vectors_file = root / manifest["files"]["vectors"]
    with open(vectors_file, "ab") as f:
        f.write(bytes(4096))
    with pytest.raises(vector_index.DamagedIndexError, match="vectors-"):
        VectorIndex.load(root, expected_generation="g")
    _rewrite_checksum(root, manifest, "vectors")  # a manifest that agrees: still no index
    with pytest.raises(IndexFormatError, match="4096 bytes beyond the rows") as raised:
        VectorIndex.load(root, expected_generation="g")
    assert not isinstance(raised.value, vector_index.DamagedIndexError)


@pytest.mark.parametrize(
    ("code", "damage"),
    [
        (errno.EIO, True),
        (errno.EBADMSG, True),
        (errno.EACCES, False),
        (errno.EMFILE, False),
        (errno.ENOMEM, False),
        (errno.EISDIR, False),
    ],
)
def test_only_a_disk_read_error_is_damage(code: int, damage: bool) -> None:
    """Session 22's second review: every OSError was "a failing disk: check the disk", an
    index saved by a server run as another user (EACCES) included."""
    path = Path("/data/vector-index/ids-x.npy")
    with pytest.raises(IndexFormatError) as raised, vector_index._reading(path):
        raise OSError(code, os.strerror(code), str(path))
    assert isinstance(raised.value, vector_index.UnreadableIndexError) == damage
    assert str(path) in str(raised.value) and os.strerror(code) in str(raised.value)
    if code == errno.EACCES:
        assert "cannot be read by the server" in str(raised.value)
        assert "check the owner of the files" in str(raised.value)


def test_a_directory_where_a_file_belongs_is_no_damage(tmp_path: Path) -> None:
    root, manifest = _saved(tmp_path)
    vectors_file = root / manifest["files"]["vectors"]
    vectors_file.unlink()
    vectors_file.mkdir()
    for attempt in (VectorIndex.verify, lambda r: VectorIndex.load(r, expected_generation="g")):
        with pytest.raises(IndexFormatError, match="Is a directory") as raised:
            attempt(root)
        assert not isinstance(raised.value, vector_index.DamagedIndexError)


def test_verify_of_a_plain_file_is_an_unusable_index(tmp_path: Path) -> None:
    """It raised NotADirectoryError until session 22's second review (a regression of its
    first), which `--check` does not expect."""
    plain = tmp_path / "vector-index"
    plain.write_bytes(b"not a directory")
    with pytest.raises(IndexFormatError, match="is not a directory") as raised:
        VectorIndex.verify(plain)
    assert not isinstance(raised.value, vector_index.DamagedIndexError)
    with pytest.raises(IndexFormatError):
        VectorIndex.load(plain)
