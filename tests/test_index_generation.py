"""The token that decides whether a saved vector index may be loaded: it must change whenever
the set of live embedded images changes, or a stale index would serve results after a crash."""

from __future__ import annotations

import itertools
from pathlib import Path

from repository import images as repo
from repository.database import Database
from repository.embeddings import index_generation
from tests.rows import add_users, new_image

_databases = itertools.count()


def _generation(tmp_path: Path, embedded: set[int], deleted: set[int] = frozenset()) -> str:
    db = Database(tmp_path / f"{next(_databases)}.db")
    conn = db.conn
    add_users(conn, "seller")
    for k in range(1, 11):
        image_id = repo.insert_image(conn, new_image(k))
        if image_id in embedded:
            conn.execute(
                "INSERT INTO embeddings (image_id, model, vector) VALUES (?, 'm', x'00')",
                (image_id,),
            )
        if image_id in deleted:
            repo.soft_delete(conn, image_id)
    token = index_generation(conn, "m")
    db.close()
    return token


def test_sets_with_the_same_count_largest_id_and_power_sums_differ(tmp_path: Path) -> None:
    # {1, 5, 6, 10} and {2, 3, 7, 10}: 4 ids, largest 10, sum 22, sum of squares 162 both.
    assert _generation(tmp_path, {1, 5, 6, 10}) != _generation(tmp_path, {2, 3, 7, 10})


def test_a_delete_changes_it_and_the_same_set_gives_the_same_token(tmp_path: Path) -> None:
    everything = set(range(1, 11))
    assert _generation(tmp_path, everything) != _generation(tmp_path, everything, {4})
    assert _generation(tmp_path, everything, {4}) == _generation(tmp_path, everything - {4})
