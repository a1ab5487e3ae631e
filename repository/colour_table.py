"""Search by colour from memory: every dominant colour in numpy arrays sorted by hue, scored
vectorised, with only the best few hundred candidates looked up in SQL. This is the ranking
the server uses (`service.colour_search`).

Why: scoring in SQLite, row by row, at 100,000 images a broad hue is tens of thousands of rows,
and that alone took most of the 20 ms budget. Here a hue interval is a `np.searchsorted` slice
and the same arithmetic runs over the slice at once (well under a millisecond). So SQLite keeps
no index for colour search: the table is built by one scan of `image_colours` and follows it
by primary key (`image_id`).

The score is `models.colours.match_score` (docs/colours.md, "Ranking"), rearranged so a whole
hue interval is plain arithmetic (`_scores`). Ties order as score desc, then image id desc, an
image's lower colour rank first as in `models.colours.best_match`. The tests hold the results
equal, to the bit, to a second ranking done in SQLite with the same float64 operations in the
same order (`tests/colour_oracle.py`), itself held equal to `best_match`. Visibility and the
filters (which updates change) are not held here: they are checked in SQL for the
candidates, in one query, so the table only has to follow inserts and deletes. The
candidates are every row scoring at least the `want`-th best score, so the images among them
that pass are exactly the best that pass; when fewer than `limit` pass, `want` grows and the
next candidates are checked.

Keeping in step without rewriting 250k-row arrays per upload: new images' rows go to a small
unsorted delta, and deleted (or re-inserted) ids are masked out of the sorted main arrays; both
are merged into the main arrays once they grow past `merge_at` rows. All state is swapped under
one lock and the arrays are never modified in place, so a search works on a consistent
snapshot without holding the lock while it computes.

Images whose colours were never computed (stored under `--no-colours`, `colours_pending`) have
no rows here until the colour backfill reaches them; `count_uncomputed` says how many a search
leaves out meanwhile.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from repository.colour_queries import (
    MAX_RESULTS,
    WANT_GROWTH,
    WANT_ROOM,
    ColourHit,
    HueQuery,
    local_hue,
)
from repository.filters import SearchFilters
from repository.images import VISIBLE

__all__ = ["ColourTable", "count_uncomputed"]

log = logging.getLogger("vitrine.colours")

#: Columns held per colour row, in this order (the last three are the sRGB, only read for hits).
_COLUMNS = "image_id, rank, hue, share, lightness, saturation, r, g, b"
#: Delta rows or masked ids past which they are merged into the sorted arrays (a merge sorts
#: the whole table: ~20 ms at 250k rows, so it is amortised over thousands of uploads).
MERGE_AT = 4096


@dataclass(frozen=True, slots=True)
class _Rows:
    """Column arrays of some colour rows (never modified once made)."""

    image_id: np.ndarray  # int64
    rank: np.ndarray  # int64
    hue: np.ndarray  # float64, and the sort key of the main table
    share: np.ndarray
    lightness: np.ndarray
    saturation: np.ndarray
    rgb: np.ndarray  # int64 (n, 3)

    @staticmethod
    def from_tuples(rows: Sequence[tuple]) -> _Rows:
        if not rows:
            return _Rows.empty()
        # one float64 matrix: every column is exact in it (ids, ranks and sRGB are small
        # integers), and it is ~3x faster than a conversion per column at 250k rows
        table = np.array(rows, dtype=np.float64).reshape(len(rows), 9)
        return _Rows(
            table[:, 0].astype(np.int64),
            table[:, 1].astype(np.int64),
            table[:, 2].copy(),
            table[:, 3].copy(),
            table[:, 4].copy(),
            table[:, 5].copy(),
            table[:, 6:9].astype(np.int64),
        )

    @staticmethod
    def empty() -> _Rows:
        f, i = np.empty(0, np.float64), np.empty(0, np.int64)
        return _Rows(i, i, f, f, f, f, np.empty((0, 3), np.int64))

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, index: np.ndarray | slice) -> _Rows:
        return _Rows(
            self.image_id[index],
            self.rank[index],
            self.hue[index],
            self.share[index],
            self.lightness[index],
            self.saturation[index],
            self.rgb[index],
        )

    @staticmethod
    def concat(parts: Sequence[_Rows]) -> _Rows:
        return _Rows(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("image_id", "rank", "hue", "share", "lightness", "saturation", "rgb")
            )
        )


@dataclass(frozen=True, slots=True)
class _Snapshot:
    main: _Rows  # sorted by hue
    dead: frozenset[int]  # ids whose rows in `main` no longer count
    delta: _Rows  # rows added since the last merge, unsorted


def _scores(rows: _Rows, query: HueQuery, interval: tuple[float, float]) -> np.ndarray:
    """`match_score` and acceptance for rows already inside `interval`: the score, or NaN where
    the row is not accepted. Within one interval the hue distance is `hue - local_hue` (squared,
    so its sign does not matter) and `0.5 (d / tol)^2` is `k d^2`, so no wrapping or division
    is done per row; the whole-circle interval keeps the wrapped distance."""
    whole_circle = interval[1] - interval[0] >= 360.0
    tol = float(query.tolerance)
    k = 0.5 / (tol * tol) if tol > 0 else 0.0
    q = float(query.hue) if whole_circle else local_hue(query.hue, interval)
    hue, light, sat = rows.hue, rows.lightness, rows.saturation
    diff = hue - q
    if whole_circle:
        dist = np.abs(diff)
        dist = np.where(dist > 180.0, 360.0 - dist, dist)
        ok = np.ones(len(hue), dtype=bool)
    else:
        dist = diff
        ok = np.abs(diff) <= tol
    ok &= rows.share >= float(query.min_share)
    if query.boxes:
        covered = np.zeros(len(hue), dtype=bool)
        held = np.zeros(len(hue), dtype=bool)
        for box in query.boxes:
            if box.h_lo is None or box.h_hi is None:
                covers = np.ones(len(hue), dtype=bool)
            elif box.h_lo <= box.h_hi:
                covers = (hue >= float(box.h_lo)) & (hue <= float(box.h_hi))
            else:
                covers = (hue >= float(box.h_lo)) | (hue <= float(box.h_hi))
            covered |= covers
            held |= (
                covers
                & (light >= float(box.l_lo))
                & (light <= float(box.l_hi))
                & (sat >= float(box.s_lo))
                & (sat <= float(box.s_hi))
            )
        ok &= ~covered | held
    closeness = 1.0 - k * dist * dist
    clarity = 0.6 + 0.4 * np.minimum(1.0, 2.0 * (1.0 - np.abs(2.0 * light - 1.0)) * sat)
    score = rows.share * closeness * clarity
    return np.where(ok, score, np.nan)


class ColourTable:
    """All colour rows of the live images, in memory, ranked by `best_match`.

    Thread-safe: `add`/`remove` (store hooks) and `rank` (searches) may run in any threads.
    """

    def __init__(self, merge_at: int = MERGE_AT) -> None:
        self.merge_at = merge_at
        self._lock = threading.Lock()
        self._main: _Rows | None = None
        self._dead: set[int] = set()
        self._delta: dict[int, list[tuple]] = {}
        self._delta_rows = 0
        self._snapshot: _Snapshot | None = None
        self._build_lock = threading.Lock()
        self.ready = threading.Event()

    # --- building and keeping in step --------------------------------------------------------

    def build(self, conn: sqlite3.Connection) -> float:
        """Load every colour row (seconds taken is returned and logged). Adds and removes made
        meanwhile are kept: they mask and supersede what the read saw."""
        t0 = time.monotonic()
        rows = _Rows.from_tuples(conn.execute(f"SELECT {_COLUMNS} FROM image_colours").fetchall())
        main = rows.take(np.argsort(rows.hue, kind="stable"))
        with self._lock:
            self._main = main
            self._snapshot = None
            self._maybe_merge()
        self.ready.set()
        took = time.monotonic() - t0
        log.info("colour table built in %.2f s: %d colours", took, len(main))
        return took

    def ensure_built(self, conn: sqlite3.Connection) -> None:
        """Build once, on first need; concurrent first searches wait for that one build."""
        if self.ready.is_set():
            return
        with self._build_lock:
            if not self.ready.is_set():
                self.build(conn)

    def add(self, conn: sqlite3.Connection, ids: Iterable[int]) -> None:
        """Take (or retake) the colours of stored, live images from the database.

        The read and the swap happen under the lock, and a deleted image's rows are not read
        (soft-deleted rows keep their colours until the purge): a delete that commits while
        the colour backfill stores that image then either hides its rows from the read or
        has its `remove` wait for the swap, so the image cannot come back into the table."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return
        with self._lock:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM image_colours JOIN images i ON i.id = image_id "
                "WHERE image_id IN (SELECT value FROM json_each(?)) AND i.deleted_at IS NULL",
                (json.dumps(id_list),),
            ).fetchall()
            by_id: dict[int, list[tuple]] = {i: [] for i in id_list}
            for row in rows:
                by_id[row[0]].append(tuple(row))
            for image_id, own in by_id.items():
                self._drop(image_id)
                if own:
                    self._delta[image_id] = own
                    self._delta_rows += len(own)
            self._snapshot = None
            self._maybe_merge()

    def remove(self, ids: Iterable[int]) -> None:
        """Forget deleted images (searches would skip them in SQL anyway; this keeps them from
        taking candidate places)."""
        with self._lock:
            for image_id in ids:
                self._drop(int(image_id))
            self._snapshot = None
            self._maybe_merge()

    def __len__(self) -> int:
        snap = self._snap()
        return (
            len(snap.main)
            - int(np.isin(snap.main.image_id, list(snap.dead)).sum())
            + len(snap.delta)
        )

    def _drop(self, image_id: int) -> None:
        self._dead.add(image_id)
        old = self._delta.pop(image_id, None)
        if old:
            self._delta_rows -= len(old)

    def _delta_table(self) -> _Rows:
        return _Rows.from_tuples([row for rows in self._delta.values() for row in rows])

    def _maybe_merge(self) -> None:
        """Fold delta and masks into the sorted arrays once they are large (lock held)."""
        if self._main is None or (
            self._delta_rows < self.merge_at and len(self._dead) < self.merge_at
        ):
            return
        keep = ~np.isin(self._main.image_id, np.fromiter(self._dead, np.int64, len(self._dead)))
        merged = _Rows.concat([self._main.take(keep), self._delta_table()])
        self._main = merged.take(np.argsort(merged.hue, kind="stable"))
        self._dead.clear()
        self._delta.clear()
        self._delta_rows = 0
        self._snapshot = None

    def _snap(self) -> _Snapshot:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = _Snapshot(
                    self._main if self._main is not None else _Rows.empty(),
                    frozenset(self._dead),
                    self._delta_table(),
                )
            return self._snapshot

    # --- ranking -----------------------------------------------------------------------------

    def rank(
        self,
        conn: sqlite3.Connection,
        viewer: int,
        query: HueQuery,
        filters: SearchFilters | None = None,
        *,
        limit: int = MAX_RESULTS,
    ) -> list[ColourHit]:
        """The best `limit` images `viewer` may see that pass `filters` and have a colour
        matching `query`, best first (score, then newest), each with its best-matching
        colour."""
        filters = filters if filters is not None else SearchFilters()
        if limit <= 0 or not query.ranges:
            return []
        snap = self._snap()
        parts: list[_Rows] = []
        scores: list[np.ndarray] = []
        for interval in query.ranges:
            lo, hi = float(interval[0]), float(interval[1])
            a = int(np.searchsorted(snap.main.hue, lo, side="left"))
            b = int(np.searchsorted(snap.main.hue, hi, side="right"))
            main = snap.main.take(slice(a, b))
            delta = snap.delta.take((snap.delta.hue >= lo) & (snap.delta.hue <= hi))
            for rows, is_delta in ((main, False), (delta, True)):
                if not len(rows):
                    continue
                s = _scores(rows, query, interval)
                keep = ~np.isnan(s)
                if snap.dead and not is_delta:
                    keep &= ~np.isin(rows.image_id, np.fromiter(snap.dead, np.int64))
                parts.append(rows.take(keep))
                scores.append(s[keep])
        if not parts:
            return []
        rows = _Rows.concat(parts)
        score = np.concatenate(scores)
        return self._best(conn, viewer, filters, rows, score, limit)

    def _best(
        self,
        conn: sqlite3.Connection,
        viewer: int,
        filters: SearchFilters,
        rows: _Rows,
        score: np.ndarray,
        limit: int,
    ) -> list[ColourHit]:
        n = len(score)
        want = int(WANT_ROOM * limit) + 10
        passed: dict[int, bool] = {}
        while True:
            if want >= n:
                chosen = np.arange(n)
            else:
                kth = np.partition(score, n - want)[n - want]  # the want-th best score
                chosen = np.flatnonzero(score >= kth)
            order = chosen[np.lexsort((rows.rank[chosen], -rows.image_id[chosen], -score[chosen]))]
            ids = rows.image_id[order]
            _, first = np.unique(ids, return_index=True)
            order = order[np.sort(first)]  # each image's best row, best images first
            ordered_ids = rows.image_id[order].tolist()
            unknown = [i for i in ordered_ids if i not in passed]
            if unknown:
                ok = filters.passing(conn, viewer, unknown)
                passed.update((i, i in ok) for i in unknown)
            keep = [pos for pos, i in enumerate(ordered_ids) if passed[i]]
            if len(keep) >= limit or want >= n:
                return [_hit(rows, int(order[p]), float(score[order[p]])) for p in keep[:limit]]
            want *= WANT_GROWTH


def _hit(rows: _Rows, at: int, score: float) -> ColourHit:
    r, g, b = rows.rgb[at].tolist()
    return ColourHit(
        image_id=int(rows.image_id[at]),
        score=score,
        rank=int(rows.rank[at]),
        hue=float(rows.hue[at]),
        saturation=float(rows.saturation[at]),
        lightness=float(rows.lightness[at]),
        share=float(rows.share[at]),
        rgb=(r, g, b),
    )


def count_uncomputed(
    conn: sqlite3.Connection,
    viewer: int,
    filters: SearchFilters,
    skip: Collection[int] = (),
) -> int:
    """How many images `viewer` may see that pass `filters` still wait for their colours, `skip`
    left out: what a search by colour cannot rank yet (`Batch.unindexed`).

    A walk of the partial index of waiting images (`images_colours_pending`) with a row probe
    each, so it costs in proportion to what still waits, never to the catalogue; the search
    asks only while the backfill runs."""
    if filters.impossible:
        return 0
    params: dict[str, object] = {"viewer": viewer}
    sql = (
        "SELECT COUNT(*) FROM images i "
        f"WHERE i.colours_pending = 1 AND {VISIBLE}{filters.sql(params)}"
    )
    if skip:
        sql += " AND i.id NOT IN (SELECT value FROM json_each(:skip))"
        params["skip"] = json.dumps([int(i) for i in skip])
    (n,) = conn.execute(sql, params).fetchone()
    return int(n)
