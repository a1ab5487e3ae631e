"""What the server says about its search by image while it stops: a backfill cut short by the
stop is not "done", and a vector index that cannot be saved (a full disk) is one warning line
naming the file, with no partial file left behind, while anything unexpected keeps its
traceback.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from repository import embeddings as embeddings_repo
from repository import images as repo
from repository import vector_index
from repository.vector_index import VectorIndex
from service import embedding_backfill
from service.similarity import SimilarityEngine
from tests.engines import ready_engine
from tests.rows import new_image
from tests.test_backfill_search import _vectors
from tests.test_similarity_server import photo


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SimilarityEngine]:
    with ready_engine(tmp_path / "data") as ready:
        yield ready


def _done_line(caplog: pytest.LogCaptureFixture) -> str:
    (line,) = [r.getMessage() for r in caplog.records if "backfill done" in r.getMessage()]
    return line


def _fail_fsync_of(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """fsync fails with ENOSPC for the file whose name starts with `prefix` (its temporary name
    starts with a dot): a disk that fills up while the index is written."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).lstrip(".").startswith(prefix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(vector_index.os, "fsync", fsync)


# --- the backfill ------------------------------------------------------------------------------


def test_a_backfill_stopped_midway_says_so_and_is_not_complete(
    engine: SimilarityEngine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    services, backfill, model = engine.services, engine.backfill, engine.model_name
    assert model is not None
    ids = [
        repo.insert_image(services.db.conn, new_image(k, blob=services.blobs.put(photo(80 + k))))
        for k in range(1, 4)
    ]
    monkeypatch.setattr(embedding_backfill, "BACKFILL_CHUNK", 1)
    store_and_index = backfill._store_and_index

    def then_stop(chunk_ids: list[int], vectors: np.ndarray) -> None:
        store_and_index(chunk_ids, vectors)
        engine._stop.set()  # the server's SIGTERM, while images are still waiting

    monkeypatch.setattr(backfill, "_store_and_index", then_stop)
    with caplog.at_level(logging.INFO, logger="vitrine"):
        backfill._pass(first=True)

    assert embeddings_repo.count_missing(services.db.conn, model) == 2
    assert ids[0] in engine.index  # type: ignore[operator]
    line = _done_line(caplog)
    assert line.startswith("backfill done: 1 images embedded")
    assert line.endswith("(stopped: the next start goes on)"), line
    assert not backfill.complete


def test_a_backfill_that_reaches_the_end_says_nothing_of_a_stop(
    engine: SimilarityEngine, caplog: pytest.LogCaptureFixture
) -> None:
    services, backfill = engine.services, engine.backfill
    repo.insert_image(services.db.conn, new_image(1, blob=services.blobs.put(photo(90))))
    with caplog.at_level(logging.INFO, logger="vitrine"):
        backfill._pass(first=True)
    line = _done_line(caplog)
    assert line.startswith("backfill done: 1 images embedded") and "stopped" not in line
    assert backfill.complete


# --- saving the index --------------------------------------------------------------------------


def _index(n: int = 40) -> VectorIndex:
    return VectorIndex.from_arrays(np.arange(1, n + 1), _vectors(n))


def test_a_save_that_fails_midway_leaves_the_previous_index_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "vector-index"
    _index(10).save(root, "before")
    before = sorted(p.name for p in root.iterdir())

    _fail_fsync_of(monkeypatch, "vectors-")  # the ids file is already written by then
    with pytest.raises(OSError) as raised:
        _index(40).save(root, "after")

    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename is not None
    assert os.path.basename(raised.value.filename).startswith("vectors-")
    assert sorted(p.name for p in root.iterdir()) == before
    monkeypatch.undo()
    assert len(VectorIndex.load(root, expected_generation="before")) == 10


def test_a_full_disk_at_shutdown_is_one_warning_line_naming_the_file(
    engine: SimilarityEngine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine._dirty = True
    _fail_fsync_of(monkeypatch, "ids-")
    with caplog.at_level(logging.INFO, logger="vitrine"):
        engine.stop()

    said = [r for r in caplog.records if "vector index" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    (record,) = said
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    assert "\n" not in message and "could not be saved to " in message
    assert str(engine.index_dir / "ids-") in message and "No space left on device" in message
    assert message.endswith("the next start rebuilds it")
    assert not engine.index_dir.exists() or not any(engine.index_dir.iterdir())


def test_a_file_where_the_index_directory_should_be_is_one_warning_line(
    engine: SimilarityEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.index_dir.parent.mkdir(parents=True, exist_ok=True)
    engine.index_dir.write_bytes(b"not a directory")
    engine._dirty = True
    with caplog.at_level(logging.INFO, logger="vitrine"):
        engine.stop()

    (record,) = [r for r in caplog.records if "vector index" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert f"saved to {engine.index_dir} (" in record.getMessage()
    assert engine.index_dir.read_bytes() == b"not a directory"


def test_an_unexpected_failure_to_save_keeps_its_traceback(
    engine: SimilarityEngine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine._dirty = True

    def broken(directory: object, generation: str) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")  # a bug here, not the disk

    assert engine.index is not None
    monkeypatch.setattr(engine.index, "save", broken)
    with caplog.at_level(logging.INFO, logger="vitrine"):
        engine.stop()

    (record,) = [r for r in caplog.records if "vector index" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
