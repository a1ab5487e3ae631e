"""Search by image while the embedding backfill runs says how many images it could not rank
yet (`Batch.unindexed`), so that "143 in all", then 207, then 399 of the same images is no
longer an answer that looks complete. A real server, first without weights, then restarted
with them while the test searches in a loop.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from models.embeddings import EMBEDDING_DIM
from protocol.catalog import Batch, DeleteImage, Filters, ImageSearch, ListingOptions
from repository import images as repo
from repository.database import Database
from repository.filters import SearchFilters
from repository.vector_index import VectorIndex
from service.image_search import rank_counting
from service.similarity import SimilarityEngine
from shell.connection import ServerConnection
from tests.rows import add_users, new_image
from tests.servers import ServerProcess
from tests.test_images_server import upload, upload_many
from tests.test_similarity_server import MISSING_WEIGHTS, READY_TIMEOUT_S, photo, weights

#: Enough images that the backfill (64 per step) is still running when the model is ready.
IMAGES = 160


def search_by_id(
    conn: ServerConnection, image_id: int, tags: list[str] | None = None
) -> tuple[set[int], int]:
    """The ids of the whole first batch (it holds every result here) and its `unindexed`."""
    options = ListingOptions(limit=500, thumbnails=False)
    request = ImageSearch(
        id=0, image_id=image_id, options=options, filters=Filters(tags=tags or [])
    )
    frames = list(conn.stream(request))
    assert all(isinstance(f, Batch) for f in frames)
    assert frames[-1].cursor is None
    counts = {f.unindexed for f in frames}
    assert len(counts) == 1, counts  # every frame of the first batch carries the same count
    return {item.id for f in frames for item in f.items}, counts.pop()


def test_a_search_during_the_backfill_counts_what_it_could_not_rank(tmp_path: Path) -> None:
    real = weights()
    process = ServerProcess(tmp_path / "srv", env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}).start()
    try:
        alice = process.user_connection(tmp_path / "a", "alice")
        bob = process.user_connection(tmp_path / "b", "bob")
        datas = [photo(5000 + n, (160, 128)) for n in range(IMAGES)]
        ids = [u.image_id for u in upload_many(alice, datas[:-10])]
        ids += [upload(alice, d, tags=["red"]).image_id for d in datas[-10:]]
        mine_private = upload(alice, photo(4001), private=True).image_id
        hidden = upload(bob, photo(4002), private=True).image_id  # alice cannot see it
        gone = upload(alice, photo(4003)).image_id
        alice.call(DeleteImage(id=0, image_id=gone))
        alice.close()
        bob.close()
    finally:
        process.stop()
    visible = set(ids) | {mine_private}
    assert hidden not in visible
    query = ids[0]
    red = set(ids[-10:])

    process.env = {"VITRINE_WEIGHTS": real}
    process.restart()
    try:
        alice = process.user_connection(tmp_path / "a", "alice")
        during: list[int] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "backfill done" not in process.log():
            assert time.monotonic() < deadline, process.log()
            try:
                found, unindexed = search_by_id(alice, query)
            except Exception as exc:  # the model is still loading
                assert "still loading" in str(exc), exc
                time.sleep(0.05)
                continue
            # Never the hidden or deleted ones; and what it ranked plus what it says it could
            # not rank covers every image alice may see but the one searched by. It may say
            # more (images embedded between the count and the ranking), never fewer: no upload
            # runs here, the only way to be missed (service.image_search.rank_counting).
            assert found <= visible - {query}
            assert len(found) + unindexed >= len(visible) - 1, (len(found), unindexed)
            assert unindexed <= len(visible) - 1, unindexed
            during.append(unindexed)
            found, unindexed = search_by_id(alice, query, tags=["red"])
            assert found <= red and len(found) + unindexed >= len(red), (found, unindexed)
        assert during and during[0] > 0, during  # the first answers came mid-backfill
        assert "backfill done: 162 images embedded" in process.log()

        found, unindexed = search_by_id(alice, query)
        assert unindexed == 0 and found == visible - {query}
        found, unindexed = search_by_id(alice, ids[-1], tags=["red"])
        assert unindexed == 0 and found == red - {ids[-1]}
        alice.close()
    finally:
        process.stop()


# --- what the index lock covers -----------------------------------------------------------------


def _engine(tmp_path: Path, images: int) -> tuple[SimilarityEngine, Database]:
    """An engine on a real database and index, as `_run` leaves it once the model is ready."""
    db = Database(tmp_path / "vitrine.db")
    add_users(db.conn, "alice")
    for k in range(1, images + 1):
        repo.insert_image(db.conn, new_image(k))
    services = SimpleNamespace(db=db)
    engine = SimilarityEngine(services, None, tmp_path, tmp_path)  # type: ignore[arg-type]
    engine.model_name = "m"
    engine.index = VectorIndex()
    return engine, db


def _vectors(n: int) -> np.ndarray:
    vectors = np.random.default_rng(7).standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_search_does_not_take_the_index_lock(tmp_path: Path) -> None:
    """Searches held the index lock across the count and the whole ranking during the backfill:
    they ran one at a time, and uploads and deletes waited behind them."""
    engine, db = _engine(tmp_path, 3)
    engine.backfill._store_and_index([1], _vectors(1))  # 2 and 3 are not embedded yet
    answers: list[tuple[list[tuple[int, float]], int]] = []

    def search() -> None:
        conn = db.conn
        filters = SearchFilters().with_tags(conn, [], rarest_first=True)
        answers.append(rank_counting(engine, conn, 1, _vectors(1)[0], filters, None))

    with engine._lock:  # as an upload's or a delete's index update would
        worker = threading.Thread(target=search, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the search waited for the index lock"
    ((ranked, unindexed),) = answers
    assert [i for i, _ in ranked] == [1] and unindexed == 2
    db.close()


def test_the_backfill_writes_without_the_index_lock_and_indexes_before_it_commits(
    tmp_path: Path,
) -> None:
    """The backfill held the index lock through its database write (which can sit in SQLite's
    busy timeout), blocking every upload's and delete's index update meanwhile. Indexing before
    the commit keeps what a search counts as unindexed (no embedding in the database) from
    missing an image that is committed but not indexed yet."""
    engine, db = _engine(tmp_path, 3)
    repo.soft_delete(db.conn, 3)  # deleted after the backfill picked it: not kept
    finished = threading.Event()

    def backfill_step() -> None:
        engine.backfill._store_and_index([1, 2, 3], _vectors(3))
        finished.set()

    with repo.WRITE_LOCK:  # another writer holds the database
        worker = threading.Thread(target=backfill_step, daemon=True)
        worker.start()
        deadline = time.monotonic() + 10
        while len(engine.index or ()) < 3:
            assert time.monotonic() < deadline, "the backfill did not index before its write"
            time.sleep(0.01)
        assert not finished.is_set()  # still waiting for the write
        assert engine._lock.acquire(timeout=5), "the backfill held the index lock in its write"
        engine._lock.release()
    worker.join(10)
    assert finished.is_set()
    index = engine.index
    assert index is not None and 1 in index and 2 in index and 3 not in index
    stored = {r[0] for r in db.conn.execute("SELECT image_id FROM embeddings WHERE model = 'm'")}
    assert stored == {1, 2}
    db.close()
