"""Search by colour in the store: the tests' SQL ranking (`tests/colour_oracle.py`, the
reference test_colour_table holds the server's in-memory table to) is
`models.colours.best_match`'s, and the cut to `limit` keeps exactly the best images whatever
the floor; the colour rows are read by primary key or one scan, so SQLite keeps no hue index
(schema version 5 drops the one version 2 made).

These run on a real SQLite file with the real schema (no server): the route and the shell are
covered end to end in test_colour_search_e2e.
"""

from __future__ import annotations

import colorsys
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from models.colours import PaletteColour, best_match
from repository import colour_queries as cq
from repository import colour_table
from repository import images as repo
from repository.colour_table import ColourTable
from repository.database import Database, migrate
from repository.filters import SearchFilters
from repository.migrations import MIGRATIONS
from tests import colour_oracle as oracle
from tests.rows import add_users, database_at, new_image
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
        got = oracle.rank_by_colour(conn, 1, hq, limit=limit)
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
    filters = SearchFilters(tag_ids=(tag_id,), in_stock=True, min_price_cents=200)
    got = oracle.rank_by_colour(conn, 2, hq, filters, limit=10)
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
        assert not {h.image_id for h in oracle.rank_by_colour(conn, 1, hq)} & hidden


def _plan(conn: sqlite3.Connection, sql: str, params: object = ()) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]  # type: ignore[arg-type]


def test_the_colour_rows_are_read_by_key_or_one_scan(store: tuple) -> None:
    """What the server asks of `image_colours`: the table's build (one scan, once per start),
    its updates and the listings' palettes (by image id, the primary key's prefix)."""
    db, palettes = store
    conn = db.conn
    ids = list(palettes)[:5]
    indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'image_colours' "
        "AND sql IS NOT NULL"
    ).fetchall()
    assert indexes == []  # only the primary key: nothing else to update per upload
    build = _plan(conn, f"SELECT {colour_table._COLUMNS} FROM image_colours")
    assert build == ["SCAN image_colours"], build
    by_id = [
        (
            f"SELECT {colour_table._COLUMNS} FROM image_colours "
            "WHERE image_id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        ),
        (
            "SELECT image_id, r, g, b, hue, saturation, lightness, share FROM image_colours "
            f"WHERE image_id IN ({','.join('?' * len(ids))}) ORDER BY image_id, rank",
            ids,
        ),
    ]
    for sql, params in by_id:
        plan = _plan(conn, sql, params)
        assert "SEARCH image_colours USING PRIMARY KEY (image_id=?)" in plan, plan


def test_version_4_upgrades_dropping_the_hue_index(tmp_path: Path) -> None:
    conn = database_at(tmp_path / "v4.db", 4)
    add_users(conn, "seller")
    red = repo.ColourRecord(200, 40, 30, 4.0, 0.7, 0.45, 0.6)
    image_id = repo.insert_image(conn, new_image(1, palette=[red]))
    index = "SELECT 1 FROM sqlite_master WHERE name = 'image_colours_by_hue_share'"
    assert conn.execute(index).fetchone()

    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute(index).fetchone() is None
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    table = ColourTable()
    table.build(conn)
    query = cq.HueQuery(0.0, 20.0, hue_ranges(0.0, 20.0), 0.05, ())
    hits = table.rank(conn, 1, query)
    assert [(h.image_id, h.rgb) for h in hits] == [(image_id, (200, 40, 30))]
    assert hits == oracle.rank_by_colour(conn, 1, query)
    assert migrate(conn) == len(MIGRATIONS)  # and again: nothing left to do
    conn.close()
