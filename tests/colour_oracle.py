"""A second opinion on search by colour for the tests: the same ranking computed in SQLite.

The server ranks with `repository.colour_table` (numpy over every colour held in memory).
This ranks the same way with SQL only, scoring each colour row in SQLite with the same float64
operations in the same order as the table's `_scores`, so that tests/test_colour_table.py can
require equal results to the bit (same images, order, scores and matched colour), and
tests/test_colour_search_server.py holds it equal to `models.colours.best_match`, the formula
as written down. The server never runs it (the table is about twice as fast), so it lives here.

How it ranks: per hue interval (two across 0 degrees) the `want` best-scoring matching colours
are kept (a bounded sorter), and only those are looked up in `images` for visibility and the
filters. An image left out of an interval's kept rows scores at most the lowest score kept
there, so the images found above every cut interval's lowest kept score are exactly the best
ones, in order. When they are fewer than `limit` (filters that few images pass), the walk is
repeated with a larger `want` (at worst the whole range). No index on `image_colours(hue)`
exists since schema version 5, so each walk scans the table; test stores are small.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from repository.colour_queries import (
    MAX_RESULTS,
    WANT_GROWTH,
    WANT_ROOM,
    ColourHit,
    HueQuery,
    LightnessSaturationBox,
    local_hue,
)
from repository.filters import SearchFilters
from repository.images import VISIBLE  # the one definition of "may see"

__all__ = ["candidates_sql", "rank_by_colour"]

# models.colours.match_score, per hue interval: share x closeness x clarity, with
# closeness = 1 - 0.5 (d / tol)^2 (1 when tol is 0) and clarity = 0.6 + 0.4 min(1, chroma / 0.5),
# chroma = (1 - |2L - 1|) S. Within one interval the wrapped distance d is |hue - q_local|, q_local
# being the query hue moved by 360 to that interval's side of 0, so no CASE is needed per row
# (this runs for every colour in the range); the whole-circle interval keeps the wrapped form.
_CLARITY = "(0.6 + 0.4 * min(1.0, 2.0 * (1.0 - abs(2.0 * c.lightness - 1.0)) * c.saturation))"
_SCORE_LOCAL = f"c.share * (1.0 - :k * (c.hue - :q_local) * (c.hue - :q_local)) * {_CLARITY}"
_WRAPPED = (
    "(CASE WHEN abs(c.hue - :q_local) > 180.0 THEN 360.0 - abs(c.hue - :q_local) "
    "ELSE abs(c.hue - :q_local) END)"
)
_SCORE_WRAPPED = f"c.share * (1.0 - :k * {_WRAPPED} * {_WRAPPED}) * {_CLARITY}"


def _covers(box: LightnessSaturationBox, n: int, params: dict[str, object]) -> str:
    if box.h_lo is None or box.h_hi is None:
        return "1"
    params[f"b{n}_hlo"], params[f"b{n}_hhi"] = float(box.h_lo), float(box.h_hi)
    if box.h_lo <= box.h_hi:
        return f"(c.hue BETWEEN :b{n}_hlo AND :b{n}_hhi)"
    return f"(c.hue >= :b{n}_hlo OR c.hue <= :b{n}_hhi)"


def _accepts(boxes: Sequence[LightnessSaturationBox], params: dict[str, object]) -> str:
    """SQL for `ColourQuery.accepts`: no box covers the hue, or a covering box holds the colour."""
    if not boxes:
        return ""
    covered, held = [], []
    for n, box in enumerate(boxes):
        covers = _covers(box, n, params)
        params.update(
            {
                f"b{n}_llo": float(box.l_lo),
                f"b{n}_lhi": float(box.l_hi),
                f"b{n}_slo": float(box.s_lo),
                f"b{n}_shi": float(box.s_hi),
            }
        )
        covered.append(covers)
        held.append(
            f"({covers} AND c.lightness BETWEEN :b{n}_llo AND :b{n}_lhi "
            f"AND c.saturation BETWEEN :b{n}_slo AND :b{n}_shi)"
        )
    return f" AND (NOT ({' OR '.join(covered)}) OR {' OR '.join(held)})"


def candidates_sql(
    viewer: int,
    query: HueQuery,
    filters: SearchFilters,
    interval: tuple[float, float],
    want: int,
) -> tuple[str, dict[str, object]]:
    """One interval's walk: its `want` best-scoring matching colours, each with its score and
    whether the image may be shown (visible to `viewer`, passing the filters).

    The `images` lookup happens for the kept rows alone.
    """
    whole_circle = interval[1] - interval[0] >= 360.0
    params: dict[str, object] = {
        "viewer": viewer,
        "lo": float(interval[0]),
        "hi": float(interval[1]),
        "want": int(want),
        "q_local": float(query.hue) if whole_circle else local_hue(query.hue, interval),
        "k": 0.5 / (query.tolerance * query.tolerance) if query.tolerance > 0 else 0.0,
        "min_share": float(query.min_share),
    }
    score = _SCORE_WRAPPED if whole_circle else _SCORE_LOCAL
    # the interval's ends are hue +- tolerance rounded once more than the distance is: test the
    # distance itself too, as match_score does, so a colour exactly at the edge agrees
    within = "" if whole_circle else " AND abs(c.hue - :q_local) <= :tol"
    params["tol"] = float(query.tolerance)
    accepts = _accepts(query.boxes, params)
    where = filters.sql(params)
    sql = (
        f"SELECT c.image_id, c.rank, c.hue, c.saturation, c.lightness, c.share, c.score, "
        f"EXISTS (SELECT 1 FROM images i WHERE i.id = c.image_id AND {VISIBLE}{where}), "
        f"rgb.r, rgb.g, rgb.b "
        f"FROM (SELECT image_id, rank, hue, saturation, lightness, share, {score} AS score "
        f"FROM image_colours c "
        f"WHERE c.hue BETWEEN :lo AND :hi{within} AND c.share >= :min_share{accepts} "
        f"ORDER BY score DESC, image_id DESC LIMIT :want) c "
        f"CROSS JOIN image_colours rgb ON rgb.image_id = c.image_id AND rgb.rank = c.rank"
    )
    return sql, params


def _walk(
    conn: sqlite3.Connection,
    viewer: int,
    query: HueQuery,
    filters: SearchFilters,
    want: int,
) -> tuple[list[ColourHit], float | None]:
    """Every interval's candidates that may be shown, and the score from which on the list is
    exact (None when no interval was cut: the list is complete)."""
    hits: list[ColourHit] = []
    exact_above: float | None = None
    for interval in query.ranges:
        sql, params = candidates_sql(viewer, query, filters, interval, want)
        rows = conn.execute(sql, params).fetchall()
        if len(rows) >= want:
            cut_at = min(row[6] for row in rows)
            exact_above = cut_at if exact_above is None else max(exact_above, cut_at)
        hits.extend(
            ColourHit(
                image_id=row[0],
                rank=row[1],
                hue=row[2],
                saturation=row[3],
                lightness=row[4],
                share=row[5],
                score=row[6],
                rgb=(row[8], row[9], row[10]),
            )
            for row in rows
            if row[7]
        )
    return hits, exact_above


def rank_by_colour(
    conn: sqlite3.Connection,
    viewer: int,
    query: HueQuery,
    filters: SearchFilters | None = None,
    *,
    limit: int = MAX_RESULTS,
) -> list[ColourHit]:
    """The best `limit` images `viewer` may see that pass `filters` and have a colour matching
    `query`, best first (score, then newest), each with its best-matching colour.

    Read in one transaction, so repeated walks see one state of the store.
    """
    filters = filters if filters is not None else SearchFilters()
    if limit <= 0 or not query.ranges:
        return []
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        want = int(WANT_ROOM * limit) + 10
        while True:
            hits, exact_above = _walk(conn, viewer, query, filters, want)
            hits.sort(key=lambda h: (-h.score, -h.image_id))
            best: dict[int, ColourHit] = {}
            for hit in hits:
                if exact_above is not None and hit.score < exact_above:
                    break
                best.setdefault(hit.image_id, hit)  # an image's first row is its best
            if len(best) >= limit or exact_above is None:
                return list(best.values())[:limit]
            want *= WANT_GROWTH
    finally:
        if own:
            conn.execute("COMMIT")
