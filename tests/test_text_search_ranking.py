"""`repository.images.search_ids` ranks in the FTS index alone and applies visibility after the
cut, going deeper when too many of the best matches are hidden. It must give exactly what
joining every match to `images` before the cut gives (the query it replaced), for every viewer,
including when the best-ranked matches are almost all hidden from that viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from repository import images as repo
from repository.database import Database
from tests.rows import add_users, new_image

WORDS = ["red", "dress", "cotton", "wool", "shirt", "blue"]


def reference(conn: object, viewer: int, query: str) -> list[int]:
    """The join-before-the-cut query that search_ids replaced."""
    weights = ", ".join(str(w) for w in repo.BM25_WEIGHTS)
    sql = (
        f"SELECT f.rowid FROM images_fts f CROSS JOIN images i ON i.id = f.rowid "
        f"WHERE images_fts MATCH :query AND {repo.VISIBLE} "
        f"ORDER BY bm25(images_fts, {weights}), f.rowid DESC LIMIT :limit"
    )
    params = {"query": query, "viewer": viewer, "limit": repo.MAX_SEARCH_RESULTS}
    return [row[0] for row in conn.execute(sql, params)]  # type: ignore[attr-defined]


@pytest.fixture()
def store(tmp_path: Path) -> Database:
    db = Database(tmp_path / "vitrine.db")
    conn = db.conn
    add_users(conn, "a", "b", "c")
    rng = np.random.default_rng(3)
    for k in range(1500):
        title = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
        image = new_image(k, owner_id=1 + k % 3, private=bool(rng.random() < 0.2), title=title)
        new_id = repo.insert_image(conn, image)
        if rng.random() < 0.08:
            repo.soft_delete(conn, new_id)
    # The best "zebra" matches (short titles rank first) are private to user 1 and more
    # numerous than a first pass reads; user 2's visible ones rank below them.
    for k in range(1500, 2400):
        repo.insert_image(conn, new_image(k, owner_id=1, private=True, title="zebra"))
    for k in range(2400, 2700):
        title = "zebra zebra stripes on a long title"
        repo.insert_image(conn, new_image(k, owner_id=2, title=title))
    return db


@pytest.mark.parametrize("query", ['"red"', '"dress" "cotton"', '"shi"*', '"wool"', '"zebra"'])
@pytest.mark.parametrize("viewer", [1, 2, 3])
def test_same_as_joining_before_the_cut(store: Database, query: str, viewer: int) -> None:
    found = repo.search_ids(store.conn, viewer, query)
    assert found == reference(store.conn, viewer, query)
    assert len(found) <= repo.MAX_SEARCH_RESULTS


def test_goes_deeper_when_the_best_matches_are_hidden(store: Database) -> None:
    found = repo.search_ids(store.conn, 3, '"zebra"')  # user 3 sees only user 2's 300
    assert len(found) == 300
    owners = {
        row[0]
        for row in store.conn.execute(
            f"SELECT DISTINCT owner_id FROM images WHERE id IN ({','.join(map(str, found))})"
        )
    }
    assert owners == {2}
    assert len(repo.search_ids(store.conn, 1, '"zebra"')) == repo.MAX_SEARCH_RESULTS
