"""The in-memory colour table ranks exactly as the SQL ranking does (same images, same order,
same scores to the bit, same matched colour), under random queries, lightness/saturation
boxes, filters, viewers and limits, and stays so across uploads, deletes, purges and updates.

`tests.colour_oracle.rank_by_colour`, the same ranking computed in SQLite, is the reference
(itself held equal to `models.colours.best_match` by test_colour_search_server).
"""

from __future__ import annotations

import colorsys
import time
from pathlib import Path

import numpy as np
import pytest

from repository import colour_queries as cq
from repository import images as repo
from repository.colour_table import ColourTable
from repository.database import Database
from repository.filters import SearchFilters
from tests import colour_oracle as oracle
from tests.rows import add_users, new_image
from util.colour_spec import NAMES, LSBox, hue_ranges, parse_colour

TAGS = ["a", "b", "c"]


def _palette(rng: np.random.Generator) -> list[repo.ColourRecord]:
    out = []
    n = int(rng.integers(0, 5))
    shares = np.sort(rng.dirichlet(np.ones(n + 1)))[::-1][:n] if n else []
    for share in shares:
        # coarse hues and shares, so that equal scores (ties) happen
        hue = float(rng.choice([rng.uniform(0, 360), float(rng.integers(0, 36) * 10)]))
        sat, light = float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.1, 0.9))
        r, g, b = (round(v * 255) for v in colorsys.hls_to_rgb(hue / 360, light, sat))
        out.append(
            repo.ColourRecord(
                r, g, b, round(hue, 2), round(sat, 4), round(light, 4), round(float(share), 2)
            )
        )
    return out


def _add_images(conn: object, rng: np.random.Generator, count: int, start: int) -> list[int]:
    ids = []
    for k in range(start, start + count):
        new = new_image(
            k,
            owner_id=1 + k % 2,
            price_cents=100 * int(rng.integers(0, 8)),
            quantity=int(rng.integers(0, 3)),
            private=bool(rng.random() < 0.2),
            tags=[t for t in TAGS if rng.random() < 0.5],
            palette=_palette(rng),
        )
        ids.append(repo.insert_image(conn, new))  # type: ignore[arg-type]
    return ids


@pytest.fixture()
def store(tmp_path: Path) -> Database:
    db = Database(tmp_path / "vitrine.db")
    conn = db.conn
    add_users(conn, "a", "b")
    rng = np.random.default_rng(5)
    ids = _add_images(conn, rng, 1200, 0)
    for image_id in ids[::13]:
        repo.soft_delete(conn, image_id)
    return db


def _random_query(rng: np.random.Generator) -> cq.HueQuery:
    kind = rng.integers(0, 3)
    if kind == 0:  # a named colour, with its own boxes
        q = parse_colour(str(rng.choice(sorted(NAMES))))
        hue, boxes = q.hue, tuple(q.boxes)
        tol = float(rng.choice([q.tolerance, 0.0, 10.0, 60.0, 180.0, 200.0]))
    else:
        hue = float(rng.choice([rng.uniform(0, 360), 0.0, 355.0, 5.0, 180.0]))
        tol = float(rng.choice([0.0, 5.0, 20.0, 45.0, 90.0, 179.0, 180.0, 250.0]))
        boxes = ()
        if kind == 2:
            lo, hi = sorted(rng.uniform(0, 1, 2))
            slo, shi = sorted(rng.uniform(0, 1, 2))
            h = [None, None] if rng.random() < 0.5 else list(rng.uniform(0, 360, 2))
            boxes = (LSBox(l_lo=lo, l_hi=hi, s_lo=slo, s_hi=shi, h_lo=h[0], h_hi=h[1]),)
    tol = min(tol, 180.0)
    min_share = float(rng.choice([0.0, 0.05, 0.2]))
    return cq.HueQuery(hue % 360.0, tol, hue_ranges(hue, tol), min_share, boxes)


def _random_filters(conn: object, rng: np.random.Generator) -> SearchFilters:
    known = repo.tag_ids(conn, TAGS)  # type: ignore[arg-type]
    tags = [known[t] for t in TAGS if rng.random() < 0.25]
    lo = int(rng.integers(0, 4)) * 100 if rng.random() < 0.3 else None
    hi = int(rng.integers(3, 8)) * 100 if rng.random() < 0.3 else None
    return SearchFilters(
        tag_ids=tuple(tags),
        min_price_cents=lo,
        max_price_cents=hi,
        in_stock=bool(rng.random() < 0.3),
    )


def _same(conn: object, table: ColourTable, rng: np.random.Generator, rounds: int) -> int:
    """Compare both rankings on random searches; returns how many hits were compared."""
    compared = 0
    for _ in range(rounds):
        query = _random_query(rng)
        filters = _random_filters(conn, rng) if rng.random() < 0.6 else SearchFilters()
        viewer = int(rng.integers(1, 3))
        limit = int(rng.choice([1, 7, 20, 60, 500, 5000]))
        want = oracle.rank_by_colour(conn, viewer, query, filters, limit=limit)  # type: ignore[arg-type]
        got = table.rank(conn, viewer, query, filters, limit=limit)  # type: ignore[arg-type]
        assert got == want, (query, filters, viewer, limit)
        compared += len(got)
    return compared


def test_identical_to_the_sql_ranking(store: Database) -> None:
    table = ColourTable()
    table.build(store.conn)
    assert table.ready.is_set()
    assert _same(store.conn, table, np.random.default_rng(1), 300) > 1000


def test_ties_order_by_newest_image(store: Database) -> None:
    conn = store.conn
    palette = [repo.ColourRecord(255, 0, 0, 0.0, 1.0, 0.5, 0.5)]
    for k in range(5):  # identical palettes: equal scores
        repo.insert_image(
            conn,
            new_image(k, blob=f"tie{k}", thumb_blob=f"tt{k}", palette=palette),
        )
    table = ColourTable()
    table.build(conn)
    query = cq.HueQuery(0.0, 10.0, hue_ranges(0.0, 10.0), 0.4, ())
    got = table.rank(conn, 1, query)
    assert len(got) >= 5
    assert got == oracle.rank_by_colour(conn, 1, query)
    scores = [h.score for h in got]
    assert scores == sorted(scores, reverse=True)
    ids_at_top = [h.image_id for h in got if h.score == scores[0]]
    assert ids_at_top == sorted(ids_at_top, reverse=True)


@pytest.mark.parametrize("merge_at", [1, 50, 100_000])
def test_kept_in_step_with_uploads_deletes_and_updates(store: Database, merge_at: int) -> None:
    conn = store.conn
    rng = np.random.default_rng(merge_at)
    table = ColourTable(merge_at=merge_at)
    table.build(conn)
    start = 10_000
    for step in range(4):
        new_ids = _add_images(conn, rng, 60, start)
        start += 60
        table.add(conn, new_ids)
        live = [r[0] for r in conn.execute("SELECT id FROM images WHERE deleted_at IS NULL")]
        gone = [int(i) for i in rng.choice(live, 40, replace=False)]
        for image_id in gone:
            repo.soft_delete(conn, image_id)
        if step % 2 == 0:
            table.remove(gone)  # odd steps: the SQL check alone must hide them
        for image_id in rng.choice(live, 40, replace=False).tolist():  # visibility, stock
            conn.execute(
                "UPDATE images SET private = ?, quantity = ?, price_cents = ? WHERE id = ?",
                (
                    int(rng.random() < 0.5),
                    int(rng.integers(0, 3)),
                    100 * int(rng.integers(0, 8)),
                    image_id,
                ),
            )
        _same(conn, table, rng, 40)
    # a purge removes the rows for good (the id stays a tombstone); hooks may repeat
    repo.purge_deleted(conn, time.time() + 10)
    top = conn.execute("SELECT MAX(id) FROM images").fetchone()[0]
    repo.soft_delete(conn, top)
    repo.purge_deleted(conn, time.time() + 10)
    table.remove([top])
    (newest,) = _add_images(conn, rng, 1, start)
    table.add(conn, [newest])
    table.add(conn, [newest])  # a hook may run twice: idempotent
    _same(conn, table, rng, 60)
    fresh = ColourTable()
    fresh.build(conn)
    _same(conn, fresh, rng, 20)


def test_empty_store_and_nothing_matching(tmp_path: Path) -> None:
    db = Database(tmp_path / "empty.db")
    table = ColourTable()
    table.build(db.conn)
    query = cq.HueQuery(120.0, 30.0, hue_ranges(120.0, 30.0), 0.0, ())
    assert table.rank(db.conn, 1, query) == []
    assert table.rank(db.conn, 1, query, limit=0) == []


def test_a_deleted_image_is_not_taken_back_by_a_late_add(tmp_path: Path) -> None:
    """The colour backfill stores an image and then adds it to the table; an owner's delete
    (and its `remove`) can land in between. Soft-deleted rows keep their colours until the
    purge, so the add must not read them and put the image back among the candidates."""
    db = Database(tmp_path / "late.db")
    add_users(db.conn, "seller")
    red = repo.ColourRecord(200, 40, 30, 4.0, 0.7, 0.45, 0.6)
    kept, gone = (repo.insert_image(db.conn, new_image(k, palette=[red])) for k in (1, 2))
    table = ColourTable()
    table.build(db.conn)
    assert len(table) == 2
    repo.soft_delete(db.conn, gone)
    table.remove([gone])
    table.add(db.conn, [kept, gone])  # the backfill's add, after the delete's remove
    assert len(table) == 1
