"""What the embedding backfill and search by image count as "not embedded yet", written once in
`repository.embeddings`: the images the backfill cannot decode are skipped in SQL, never
subtracted from a count. Subtracting them let a deleted undecodable image hide a new image
from the backfill: it saw 0 to do, and the new image stayed out of search by image while every
search said it was still being indexed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from repository import images as repo
from repository.database import Database
from repository.embeddings import count_missing, count_missing_visible, store_embeddings
from repository.filters import SearchFilters
from service.context import Services
from service.image_search import rank_counting
from service.similarity import SimilarityEngine
from tests.engines import ready_engine
from tests.rows import add_users, new_image
from tests.test_backfill_search import _vectors
from tests.test_similarity_server import photo


def _embedded(services: Services, model: str) -> set[int]:
    rows = services.db.conn.execute("SELECT image_id FROM embeddings WHERE model = ?", (model,))
    return {row[0] for row in rows}


def _stored(services: Services, k: int, data: bytes) -> int:
    """An image stored without an embedding, its original in the real blob store."""
    return repo.insert_image(services.db.conn, new_image(k, blob=services.blobs.put(data)))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SimilarityEngine]:
    with ready_engine(tmp_path / "data") as ready:
        yield ready


def test_a_deleted_undecodable_image_does_not_hide_a_new_one_from_the_backfill(
    engine: SimilarityEngine, caplog: pytest.LogCaptureFixture
) -> None:
    services, backfill, model = engine.services, engine.backfill, engine.model_name
    assert model is not None
    broken = _stored(services, 1, b"not a picture at all")
    first = _stored(services, 2, photo(71))
    backfill._pass(first=True)
    assert backfill.failed == {broken} and _embedded(services, model) == {first}
    assert backfill.complete

    repo.soft_delete(services.db.conn, broken)
    new = _stored(services, 3, photo(72))
    with caplog.at_level(logging.INFO, logger="vitrine"):
        backfill._pass(first=False)  # what the new upload's wake runs

    assert _embedded(services, model) == {first, new}
    assert engine.index is not None and new in engine.index
    assert backfill.complete
    # The deleted image is forgotten, and the final line no longer counts it as undecodable.
    assert backfill.failed == frozenset()
    (done,) = [r.getMessage() for r in caplog.records if "backfill done" in r.getMessage()]
    assert done.startswith("backfill done: 1 images embedded") and "decoded" not in done
    # A search now ranks the new image and counts nothing as still being indexed.
    conn = services.db.conn
    query = np.frombuffer(
        conn.execute("SELECT vector FROM embeddings WHERE image_id = ?", (new,)).fetchone()[0],
        dtype="<f4",
    )
    ranked, unindexed = rank_counting(engine, conn, 1, query, SearchFilters(), None)
    assert ranked[0][0] == new and unindexed == 0


def test_the_counts_skip_in_sql_and_apply_visibility_and_filters(tmp_path: Path) -> None:
    """count_missing and count_missing_visible on a real database: live, visible, filtered,
    not embedded with this model, not skipped; a skipped id that is deleted changes nothing."""
    db = Database(tmp_path / "vitrine.db")
    conn = db.conn
    add_users(conn, "alice", "bob")
    ids = {
        "red": repo.insert_image(conn, new_image(1, tags=["red"], price_cents=500)),
        "plain": repo.insert_image(conn, new_image(2, price_cents=100)),
        "bobs_private": repo.insert_image(conn, new_image(3, owner_id=2, private=True)),
        "embedded": repo.insert_image(conn, new_image(4, tags=["red"])),
        "old_model": repo.insert_image(conn, new_image(5)),
        "deleted": repo.insert_image(conn, new_image(6)),
        "undecodable": repo.insert_image(conn, new_image(7)),
    }
    store_embeddings(conn, "m", [ids["embedded"]], _vectors(1))
    store_embeddings(conn, "old", [ids["old_model"]], _vectors(1))
    repo.soft_delete(conn, ids["deleted"])
    skip = {ids["undecodable"], ids["deleted"]}

    assert count_missing(conn, "m") == 5
    assert count_missing(conn, "m", skip) == 4  # 3 when the deleted one was subtracted
    assert count_missing(conn, "m", {ids["deleted"]}) == 5
    everything = SearchFilters()
    assert count_missing_visible(conn, "m", 1, everything) == 4  # not bob's private one
    assert count_missing_visible(conn, "m", 2, everything) == 5
    assert count_missing_visible(conn, "m", 1, everything, skip) == 3
    assert count_missing_visible(conn, "m", 1, everything, [ids["red"], *skip]) == 2
    red = SearchFilters().with_tags(conn, ["red"], rarest_first=True)
    assert count_missing_visible(conn, "m", 1, red, skip) == 1  # the embedded red one is not
    assert count_missing_visible(conn, "m", 1, SearchFilters(min_price_cents=200), skip) == 1
    nothing = SearchFilters().with_tags(conn, ["no-such-tag"])
    assert nothing.impossible and count_missing_visible(conn, "m", 1, nothing) == 0
    db.close()
