"""The search filters (all of some tags, a price range in cents, in stock) as every ranked
search applies them: search by image (`service.image_search`), by colour
(`repository.colour_table`) and the re-check of every later batch of a ranked listing
(`service.listings.Recheck`, text search too).

One type, `SearchFilters`, so that a new filter is a field, a line in `sql` and the line that
reads it off the wire (`Recheck.of`), and no search can forget it. Tags arrive as names and
are resolved to ids here (`with_tags`), at the moment of the search: a tag's id can change
between two batches of one listing, so a re-check resolves them again.

Nothing here knows the wire format.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from repository import images as repo
from repository.images import VISIBLE

__all__ = ["SearchFilters"]


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Filters resolved against the database: tag ids (all required) and plain conditions.

    Built with the plain conditions alone (`SearchFilters(max_price_cents=500)`), then given
    its tags by `with_tags`, which looks them up.
    """

    tag_ids: tuple[int, ...] = ()
    #: Rows per tag of `tag_ids`, same order; empty unless resolved `rarest_first`.
    tag_counts: tuple[int, ...] = ()
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    in_stock: bool = False
    #: A tag nobody has used: nothing can match.
    impossible: bool = False

    def with_tags(
        self, conn: sqlite3.Connection, tags: Sequence[str], *, rarest_first: bool = False
    ) -> SearchFilters:
        """These conditions with `tags` (names) resolved to ids, replacing any; `impossible`
        when one of them is not a tag at all.

        `rarest_first` orders the ids by how many rows each tag has, and keeps the counts: a
        COUNT per tag, a walk of its whole index for a popular one, that only search by image
        needs (to walk the rarest tag first, and to choose whether to list the allowed ids
        before ranking). Otherwise the ids come in the order the tags table gives them."""
        known = repo.tag_ids(conn, tags)
        if len(known) < len(tags):
            return SearchFilters(impossible=True)
        if not rarest_first:
            return replace(self, tag_ids=tuple(known.values()), tag_counts=())
        counts = repo.tag_image_counts(conn, list(known.values()))
        order = sorted(known.values(), key=lambda t: counts[t])
        return replace(self, tag_ids=tuple(order), tag_counts=tuple(counts[t] for t in order))

    def sql(self, params: dict[str, object]) -> str:
        """The filters as conditions on `images i` (tags all required, as EXISTS), to append to
        a WHERE that already holds VISIBLE; fills `params`. One definition for every search."""
        if self.impossible:
            return " AND 0"
        where = ""
        if self.min_price_cents is not None:
            where += " AND i.price_cents >= :min_price"
            params["min_price"] = self.min_price_cents
        if self.max_price_cents is not None:
            where += " AND i.price_cents <= :max_price"
            params["max_price"] = self.max_price_cents
        if self.in_stock:
            where += " AND i.quantity > 0"
        for n, tag_id in enumerate(self.tag_ids):
            params[f"t{n}"] = tag_id
            where += (
                f" AND EXISTS (SELECT 1 FROM image_tags x{n} "
                f"WHERE x{n}.image_id = i.id AND x{n}.tag_id = :t{n})"
            )
        return where

    def passing(self, conn: sqlite3.Connection, viewer: int, ids: Sequence[int]) -> set[int]:
        """Which of some ranked candidates `viewer` may see and pass the filters, in one query
        (`repository.images.passing_ids`): the post-filter of every ranked search."""
        if self.impossible:
            return set()
        return repo.passing_ids(conn, viewer, ids, self)

    def allowed_ids(self, conn: sqlite3.Connection, viewer: int) -> np.ndarray:
        """Sorted ids the viewer may see that pass the filters: a walk of the first (with
        `rarest_first`, the rarest) tag's index when there are tags, of the images table
        otherwise."""
        if self.impossible:
            return np.asarray([], dtype=np.int64)
        params: dict[str, object] = {"viewer": viewer}
        if self.tag_ids:
            rest = replace(self, tag_ids=self.tag_ids[1:], tag_counts=self.tag_counts[1:])
            params["first"] = self.tag_ids[0]
            sql = (
                f"SELECT it.image_id FROM image_tags it CROSS JOIN images i "
                f"ON i.id = it.image_id "
                f"WHERE it.tag_id = :first AND {VISIBLE}{rest.sql(params)} ORDER BY it.image_id"
            )
        else:
            sql = f"SELECT i.id FROM images i WHERE {VISIBLE}{self.sql(params)} ORDER BY i.id"
        ids = [row[0] for row in conn.execute(sql, params)]
        return np.asarray(ids, dtype=np.int64)
