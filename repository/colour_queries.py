"""SQL for search by colour: the images whose dominant colours answer a hue query, best first.

The server ranks with `repository.colour_table` (the same scores in memory, about twice as
fast at 100,000 images); this module holds the types both share and the SQL ranking that the
table is tested against (tests/test_colour_table.py), itself held equal to
`models.colours.best_match` (tests/test_colour_search_server.py).

How a query stays off a scan of every image, and cheap even when it is broad (green covers a
quarter of the hue circle, so a quarter of the shop's colours):

* candidates come from a range walk of an index on `image_colours(hue)`, one walk per hue
  interval (a query across 0 degrees is two: `[lo, 360]` and `[0, hi]`);
* each colour in the range is scored in SQLite (`models.colours.match_score`, mirrored here
  and held equal to it by the tests; plain arithmetic on the row, no lookups) and only the
  `want` best are kept (a bounded sorter, no temporary table of the whole range);
* only those are looked up in `images` for visibility and the filters. An image left out of
  an interval's kept rows scores at most the lowest score kept there, so the images found above
  every cut interval's lowest kept score are exactly the best ones, in order. When they are
  fewer than `limit` (filters that few images pass), the walk is repeated with a larger `want`
  (at worst the whole range).

So the lookups per query follow `limit`, not the size of the shop, and what grows with it is
a walk of the index and some arithmetic per colour in the range. That walk is index-only with
the covering index `image_colours(hue, share, lightness, saturation)` (migration 2);
with the hue-only index each colour in the range costs a primary-key lookup for its share.

Nothing here knows the wire format or how a COLOR was parsed: the caller passes the hue
intervals, the query hue and tolerance, and the lightness/saturation boxes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from repository.images import VISIBLE, filter_sql  # the one definition of "may see"

__all__ = [
    "COVERING_INDEX",
    "MAX_RESULTS",
    "ColourFilters",
    "ColourHit",
    "HueQuery",
    "LightnessSaturationBox",
    "candidates_sql",
    "rank_by_colour",
]

#: Ranked results one search keeps for `more` (a batch of 20, then 10 at a time), as search by
#: image does: colour queries are broad, nobody pages through hundreds, and the cap is what
#: keeps the work per query bounded.
MAX_RESULTS = 500
#: The first walk keeps this many times `limit` candidates per interval: room for the
#: candidates that visibility, the filters or a second colour of the same image remove. Each
#: further walk keeps WANT_GROWTH times more.
WANT_ROOM = 1.25
WANT_GROWTH = 4

#: Made by migration 2; named here so tests can check the query plan uses it.
COVERING_INDEX = "image_colours_by_hue_share"


class LightnessSaturationBox(Protocol):
    """What `util.colour_spec.LSBox` offers, restated: the storage layer needs only these four
    bounds, not the parser of colour names that defines them."""

    @property
    def l_lo(self) -> float: ...
    @property
    def l_hi(self) -> float: ...
    @property
    def s_lo(self) -> float: ...
    @property
    def s_hi(self) -> float: ...
    @property
    def h_lo(self) -> float | None: ...
    @property
    def h_hi(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class HueQuery:
    """A colour query as the store needs it.

    `ranges` are the closed hue intervals within `tolerance` of `hue`
    (`util.colour_spec.hue_ranges`); `boxes` the lightness/saturation regions (a colour whose
    hue no box covers is accepted; else one covering box must hold it, as in
    `ColourQuery.accepts`).
    """

    hue: float
    tolerance: float
    ranges: Sequence[tuple[float, float]]
    min_share: float = 0.0
    boxes: Sequence[LightnessSaturationBox] = ()


@dataclass(frozen=True, slots=True)
class ColourFilters:
    """Conditions on the image, applied before the cut. `tag_ids` are all required."""

    tag_ids: Sequence[int] = ()
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    in_stock: bool = False


@dataclass(frozen=True, slots=True)
class ColourHit:
    """One ranked image and the dominant colour of it that matched best."""

    image_id: int
    score: float
    rank: int
    hue: float
    saturation: float
    lightness: float
    share: float
    rgb: tuple[int, int, int] = (0, 0, 0)


# --- the SQL ------------------------------------------------------------------------------------

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


def _filters(filters: ColourFilters, params: dict[str, object]) -> str:
    return filter_sql(
        params, filters.tag_ids, filters.min_price_cents, filters.max_price_cents, filters.in_stock
    )


def _local_hue(hue: float, interval: tuple[float, float]) -> float:
    """The query hue, or hue +- 360, whichever lies on the interval's side of 0 degrees."""
    middle = (interval[0] + interval[1]) / 2.0
    return min((hue - 360.0, hue, hue + 360.0), key=lambda h: abs(h - middle))


def candidates_sql(
    viewer: int,
    query: HueQuery,
    filters: ColourFilters,
    interval: tuple[float, float],
    want: int,
) -> tuple[str, dict[str, object]]:
    """One interval's walk: its `want` best-scoring matching colours, each with its score and
    whether the image may be shown (visible to `viewer`, passing the filters).

    Returned for the tests' EXPLAIN QUERY PLAN too. The inner query reads the hue index only
    (with the covering index); the `images` lookup happens for the kept rows alone.
    """
    whole_circle = interval[1] - interval[0] >= 360.0
    params: dict[str, object] = {
        "viewer": viewer,
        "lo": float(interval[0]),
        "hi": float(interval[1]),
        "want": int(want),
        "q_local": float(query.hue) if whole_circle else _local_hue(query.hue, interval),
        "k": 0.5 / (query.tolerance * query.tolerance) if query.tolerance > 0 else 0.0,
        "min_share": float(query.min_share),
    }
    score = _SCORE_WRAPPED if whole_circle else _SCORE_LOCAL
    # the interval's ends are hue +- tolerance rounded once more than the distance is: test the
    # distance itself too, as match_score does, so a colour exactly at the edge agrees
    within = "" if whole_circle else " AND abs(c.hue - :q_local) <= :tol"
    params["tol"] = float(query.tolerance)
    accepts = _accepts(query.boxes, params)
    where = _filters(filters, params)
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
    filters: ColourFilters,
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
    filters: ColourFilters = ColourFilters(),
    *,
    limit: int = MAX_RESULTS,
) -> list[ColourHit]:
    """The best `limit` images `viewer` may see that pass `filters` and have a colour matching
    `query`, best first (score, then newest), each with its best-matching colour.

    Read in one transaction, so repeated walks see one state of the store.
    """
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
