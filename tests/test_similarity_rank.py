"""`service.image_search.rank` over a real database and index, at the sizes where its shortcut
(rank the first POST_FILTER_CANDIDATES, then filter) must hand over to the filtered search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.embeddings import EMBEDDING_DIM
from repository import images as repo
from repository.database import Database
from repository.filters import SearchFilters
from repository.vector_index import VectorIndex
from service.image_search import POST_FILTER_CANDIDATES, rank
from tests.rows import add_users, new_image


@pytest.mark.parametrize("extra", [0, 1, 2])
@pytest.mark.parametrize("query_in_index", [True, False])
def test_every_passing_image_is_ranked_when_all_are_candidates(
    tmp_path: Path, extra: int, query_in_index: bool
) -> None:
    """An index one vector larger than the candidate count, queried by the id of an image not
    in it (searched before its backfill), lost its lowest passing result: the shortcut took
    the excluded id for one of the vectors it had not looked at."""
    db = Database(tmp_path / "vitrine.db")
    conn = db.conn
    add_users(conn, "seller")
    n = POST_FILTER_CANDIDATES + extra
    ids = [
        repo.insert_image(conn, new_image(k, price_cents=9900 if k % 3 == 0 else 100))
        for k in range(n + 1)
    ]
    rng = np.random.default_rng(extra)
    vectors = rng.standard_normal((n + 1, EMBEDDING_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # The last indexed image passes the filter and is the least like the query: the one a
    # shortcut that stops one vector short loses.
    vectors[n - 1] = -vectors[-1]
    conn.execute("UPDATE images SET price_cents = 100 WHERE id = ?", (ids[n - 1],))
    query_id = ids[-1]
    indexed = slice(None) if query_in_index else slice(0, n)
    index = VectorIndex.from_arrays(ids[indexed], vectors[indexed])
    cheap = SearchFilters(max_price_cents=1000).with_tags(conn, [], rarest_first=True)

    ranked = rank(index, conn, 1, vectors[-1], cheap, query_id)

    expected = {i for i in ids[:n] if conn.execute(
        "SELECT price_cents <= 1000 FROM images WHERE id = ?", (i,)).fetchone()[0]}  # fmt: skip
    assert {image_id for image_id, _ in ranked} == expected
    db.close()
