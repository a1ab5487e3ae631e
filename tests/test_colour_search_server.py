"""Search by colour in the store: the SQL ranking is `models.colours.best_match`'s, it walks
the hue index, and the cut to `limit` keeps exactly the best images whatever the floor.

These run on a real SQLite file with the real schema (no server): the route and the shell are
covered end to end in test_colour_search_e2e.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest

from models.colours import PaletteColour, best_match
from repository import colour_queries as cq
from repository import images as repo
from repository.database import Database
from tests.rows import add_users, new_image
from util.colour_spec import NAMES, ColourQuery, hue_ranges, parse_colour


def _palette(rng: np.random.Generator) -> list[repo.ColourRecord]:
    out = []
    n = int(rng.integers(0, 5))
    shares = np.sort(rng.dirichlet(np.ones(n + 1)))[::-1][:n] if n else []
    for share in shares:
        hue = float(rng.uniform(0, 360))
        sat, light = float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.1, 0.9))
        r, g, b = (round(v * 255) for v in colorsys.hls_to_rgb(hue / 360, light, sat))
        out.append(
            repo.ColourRecord(
                r, g, b, round(hue, 2), round(sat, 4), round(light, 4), round(float(share), 4)
            )
        )
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Database, dict[int, list]]:
    db = Database(Path(tmp_path_factory.mktemp("colour-store")) / "vitrine.db")
    conn = db.conn
    add_users(conn, "a", "b")
    rng = np.random.default_rng(11)
    palettes: dict[int, list] = {}
    for k in range(1500):
        palette = _palette(rng)
        new = new_image(
            k,
            owner_id=1 + k % 2,
            price_cents=100 * (k % 7),
            quantity=k % 3,
            private=k % 5 == 0,
            tags=["even"] if k % 2 == 0 else [],
            palette=palette,
        )
        palettes[repo.insert_image(conn, new)] = palette
    for image_id in list(palettes)[::17]:
        repo.soft_delete(conn, image_id)
    return db, palettes


def _expected(
    conn: object,
    palettes: dict[int, list],
    viewer: int,
    q: ColourQuery,
    tol: float,
    min_share: float,
    ok: set[int],
) -> list[tuple[int, float]]:
    ranked = []
    for image_id, palette in palettes.items():
        if image_id not in ok:
            continue
        colours = [
            PaletteColour(**{f: getattr(c, f) for f in c.__dataclass_fields__}) for c in palette
        ]
        match = best_match(colours, q, tol, min_share)
        if match is not None:
            ranked.append((image_id, match[0]))
    ranked.sort(key=lambda p: (-p[1], -p[0]))
    return ranked


def _visible(conn: object, viewer: int, extra: str = "") -> set[int]:
    sql = f"SELECT i.id FROM images i WHERE {repo.VISIBLE}{extra}"
    return {r[0] for r in conn.execute(sql, {"viewer": viewer})}  # type: ignore[attr-defined]


QUERIES = [*NAMES, "0", "355", "5", "180", "#1e90ff", "#8b4513"]


@pytest.mark.parametrize("text", QUERIES)
@pytest.mark.parametrize("limit", [7, 60, 5000])
def test_sql_ranking_is_best_match(store: tuple, text: str, limit: int) -> None:
    db, palettes = store
    conn = db.conn
    q = parse_colour(text)
    for tol, min_share in ((q.tolerance, 0.05), (0.0, 0.0), (200.0, 0.1), (30.0, 0.0)):
        tol = min(tol, 180.0)
        hq = cq.HueQuery(q.hue, tol, hue_ranges(q.hue, tol), min_share, q.boxes)
        got = cq.rank_by_colour(conn, 1, hq, limit=limit)
        want = _expected(conn, palettes, 1, q, tol, min_share, _visible(conn, 1))[:limit]
        assert [h.image_id for h in got] == [i for i, _ in want]
        assert [h.score for h in got] == pytest.approx([s for _, s in want], abs=1e-9)
        for hit in got:  # the match is one of the image's own colours, with its sRGB
            assert any(
                (c.r, c.g, c.b, c.share) == (*hit.rgb, hit.share) for c in palettes[hit.image_id]
            )


def test_filters_apply_before_the_cut(store: tuple) -> None:
    db, palettes = store
    conn = db.conn
    (tag_id,) = repo.tag_ids(conn, ["even"]).values()
    q = parse_colour("blue")
    hq = cq.HueQuery(q.hue, q.tolerance, hue_ranges(q.hue, q.tolerance), 0.0, q.boxes)
    filters = cq.ColourFilters(tag_ids=[tag_id], in_stock=True, min_price_cents=200)
    got = cq.rank_by_colour(conn, 2, hq, filters, limit=10)
    ok = _visible(
        conn,
        2,
        " AND i.quantity > 0 AND i.price_cents >= 200 AND EXISTS "
        f"(SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag_id = {tag_id})",
    )
    want = _expected(conn, palettes, 2, q, q.tolerance, 0.0, ok)[:10]
    assert len(want) == 10
    assert [h.image_id for h in got] == [i for i, _ in want]


def test_private_and_deleted_are_never_ranked(store: tuple) -> None:
    db, _ = store
    conn = db.conn
    hidden = {
        r[0]
        for r in conn.execute(
            "SELECT id FROM images WHERE deleted_at IS NOT NULL OR (private = 1 AND owner_id != 1)"
        )
    }
    assert hidden
    for text in QUERIES:
        q = parse_colour(text)
        hq = cq.HueQuery(q.hue, 180.0, hue_ranges(q.hue, 180.0), 0.0, ())
        assert not {h.image_id for h in cq.rank_by_colour(conn, 1, hq)} & hidden


def test_the_walk_is_a_hue_index_range_not_a_scan(store: tuple) -> None:
    db, _ = store
    q = parse_colour("red")  # across 0 degrees: two intervals
    hq = cq.HueQuery(q.hue, q.tolerance, hue_ranges(q.hue, q.tolerance), 0.05, q.boxes)
    assert len(hq.ranges) == 2
    for interval in hq.ranges:
        sql, params = cq.candidates_sql(
            1, hq, cq.ColourFilters(tag_ids=[1], in_stock=True), interval, 100
        )
        plan = [row[3] for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        walks = [p for p in plan if "image_colours" in p and "(hue>? AND hue<?)" in p]
        assert walks and "COVERING INDEX image_colours_by_hue_share" in walks[0], plan
        assert not any(p.startswith("SCAN") and "image_colours" in p for p in plan), plan
        assert not any(p.startswith("SCAN i") for p in plan), plan
