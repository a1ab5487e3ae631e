"""SQL for the catalogue: images, tags, full-text search, listings, tag counts, deletes, checks.

Choices that hold the rest together:

* **Newest first is `id DESC`.** Ids are handed out in upload order and never reused (a purge
  leaves a tombstone row, see `purge_deleted`), so the rowid is the listing order. Every listing
  is then a walk down the table's own B-tree, or down `image_tags_by_tag (tag_id, image_id)`,
  stopping after one batch: no sort, no COUNT(*), and a keyset cursor is just the last id.
* **Visibility in one place.** `VISIBLE` is the only definition of "this user may see this
  image" (live, and public or theirs); every read path uses it.
* **One transaction per write**: row, tags, FTS row, colours and embedding commit together,
  after the blobs are durable (the caller's job), so no reader ever sees half an image.
* **FTS rows exist for live images only**; rowid = images.id, text folded for search (`index_row`).

Nothing here knows the wire format: rows come back as `ImageRecord`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from protocol.limits import MAX_QUANTITY, MAX_SEARCH_RESULTS, MAX_TAGS
from repository.database import transaction
from util.catalogue_text import index_text

if TYPE_CHECKING:
    from repository.filters import SearchFilters

#: Serialises the catalogue's write transactions inside this process (images, tags, colours,
#: embeddings, orders: `repository.orders` and `repository.embeddings` take it too). SQLite
#: allows one writer anyway; taking a Python lock first turns its sleep-and-retry busy handler
#: (millisecond naps) into a plain hand-off under bulk uploads. The accounts' single-statement
#: writes (sessions, users) do not take it: they are rare and short enough for the busy handler.
WRITE_LOCK = threading.Lock()

#: A tombstone's blob columns hold this instead of a blob name (the data was purged).
PURGED = ""


#: bm25 weights per FTS column: title, description, tags, filename.
BM25_WEIGHTS = (10.0, 2.0, 5.0, 1.0)

VISIBLE = "i.deleted_at IS NULL AND (i.private = 0 OR i.owner_id = :viewer)"


def passing_ids(
    conn: sqlite3.Connection,
    viewer: int,
    ids: Sequence[int],
    filters: SearchFilters | None = None,
) -> set[int]:
    """Which of some ranked candidates `viewer` may see and pass the filters, in one query:
    the post-filter of every ranked search (text, vectors, colours; through
    `SearchFilters.passing`, or with no filters for the visibility alone, as `search_ids`).

    The query returns the candidates that fail (or have no row at all), which are normally
    few, rather than the hundreds that pass: reading rows back is Python work under the GIL,
    and this runs on every search.
    """
    wanted = [int(i) for i in ids]
    params: dict[str, object] = {"viewer": viewer, "ids": json.dumps(wanted)}
    where = "" if filters is None else filters.sql(params)
    sql = (
        f"SELECT j.value FROM json_each(:ids) j LEFT JOIN images i ON i.id = j.value "
        f"WHERE i.id IS NULL OR NOT ({VISIBLE}{where})"
    )
    failing = {row[0] for row in conn.execute(sql, params)}
    return set(wanted) - failing


def matching_text(conn: sqlite3.Connection, fts_query: str, ids: Sequence[int]) -> set[int]:
    """Which of `ids` an FTS5 query still finds: a text search's later batches leave out an
    image whose title, description or tags were changed since so that it no longer matches."""
    rows = conn.execute(
        "SELECT rowid FROM images_fts WHERE images_fts MATCH ? "
        "AND rowid IN (SELECT value FROM json_each(?))",
        (fts_query, json.dumps([int(i) for i in ids])),
    )
    return {row[0] for row in rows}


@dataclass(frozen=True, slots=True)
class ColourRecord:
    r: int
    g: int
    b: int
    hue: float
    saturation: float
    lightness: float
    share: float


@dataclass(slots=True)
class ImageRecord:
    id: int
    owner_id: int
    owner: str
    blob: str
    thumb_blob: str
    filename: str
    title: str
    description: str
    price_cents: int
    quantity: int
    private: bool
    format: str
    width: int
    height: int
    byte_size: int
    created_at: float
    updated_at: float
    deleted_at: float | None
    tags: list[str] = field(default_factory=list)
    palette: list[ColourRecord] = field(default_factory=list)
    #: No colours computed yet (stored under --no-colours), as opposed to none found.
    colours_pending: bool = False


@dataclass(slots=True)
class NewImage:
    """Everything an upload commits in one transaction."""

    owner_id: int
    blob: str
    thumb_blob: str
    filename: str
    title: str
    description: str
    price_cents: int
    quantity: int
    private: bool
    format: str
    width: int
    height: int
    byte_size: int
    tags: list[str]
    palette: list[ColourRecord] = field(default_factory=list)
    #: (model name, vector bytes) when an embedding was computed at upload.
    embedding: tuple[str, bytes] | None = None
    #: Copy the embedding, and the colours unless `palette` is given, from this existing image
    #: (same content, another owner).
    copy_analysis_from: int | None = None
    #: `palette` was computed for this upload, so even an empty one (a grey picture) is its
    #: answer and the colours of `copy_analysis_from` are not copied.
    palette_computed: bool = False
    #: No colours were computed (a `--no-colours` server): a later run with colours computes
    #: them. False with an empty palette means the picture has no chromatic colour.
    colours_pending: bool = False


class DuplicateImage(Exception):
    """The owner already has a live image with this content; `image_id` is that image."""

    def __init__(self, image_id: int) -> None:
        super().__init__(image_id)
        self.image_id = image_id


# --- reading rows -------------------------------------------------------------------------------

_ROW_COLUMNS = (
    "i.id, i.owner_id, u.name AS owner, i.blob, i.thumb_blob, i.filename, i.title, "
    "i.description, i.price_cents, i.quantity, i.private, i.format, i.width, i.height, "
    "i.byte_size, i.created_at, i.updated_at, i.deleted_at, i.colours_pending"
)


def _record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=row["id"],
        owner_id=row["owner_id"],
        owner=row["owner"],
        blob=row["blob"],
        thumb_blob=row["thumb_blob"],
        filename=row["filename"],
        title=row["title"],
        description=row["description"],
        price_cents=row["price_cents"],
        quantity=row["quantity"],
        private=bool(row["private"]),
        format=row["format"],
        width=row["width"],
        height=row["height"],
        byte_size=row["byte_size"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
        colours_pending=bool(row["colours_pending"]),
    )


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _attach_details(conn: sqlite3.Connection, records: Sequence[ImageRecord]) -> None:
    """Fill tags and palettes for a batch with two indexed queries, not two per image."""
    if not records:
        return
    by_id = {r.id: r for r in records}
    ids = list(by_id)
    marks = _placeholders(len(ids))
    for image_id, name in conn.execute(
        f"SELECT it.image_id, t.name FROM image_tags it JOIN tags t ON t.id = it.tag_id "
        f"WHERE it.image_id IN ({marks}) ORDER BY t.name",
        ids,
    ):
        by_id[image_id].tags.append(name)
    for row in conn.execute(
        f"SELECT image_id, r, g, b, hue, saturation, lightness, share FROM image_colours "
        f"WHERE image_id IN ({marks}) ORDER BY image_id, rank",
        ids,
    ):
        by_id[row[0]].palette.append(ColourRecord(*row[1:]))


def images_by_ids(
    conn: sqlite3.Connection, ids: Sequence[int], viewer: int | None = None
) -> list[ImageRecord]:
    """Rows for `ids` in the order given; with `viewer`, only those that user may see."""
    if not ids:
        return []
    params: dict[str, object] = {f"p{n}": v for n, v in enumerate(ids)}
    where = "i.id IN (" + ",".join(f":p{n}" for n in range(len(ids))) + ")"
    if viewer is not None:
        where += f" AND {VISIBLE}"
        params["viewer"] = viewer
    rows = conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM images i JOIN users u ON u.id = i.owner_id WHERE {where}",
        params,
    ).fetchall()
    found = {row["id"]: _record(row) for row in rows}
    ordered = [found[i] for i in dict.fromkeys(ids) if i in found]
    _attach_details(conn, ordered)
    return ordered


def image_by_id(conn: sqlite3.Connection, image_id: int) -> ImageRecord | None:
    """Any row, live or deleted, whoever owns it: permission checks are the caller's."""
    found = images_by_ids(conn, [image_id])
    return found[0] if found else None


def live_image_by_owner_blob(conn: sqlite3.Connection, owner_id: int, blob: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM images WHERE owner_id = ? AND blob = ? AND deleted_at IS NULL",
        (owner_id, blob),
    ).fetchone()
    return row[0] if row else None


@dataclass(frozen=True, slots=True)
class StoredContent:
    """What is already known about some content from any row that holds it."""

    image_id: int
    thumb_blob: str
    format: str
    width: int
    height: int
    #: that row's colours were never computed (it was stored under --no-colours)
    colours_pending: bool
    #: that row's colours were computed by an older rule and wait to be computed again
    colours_outdated: bool


def dedup_lookup(
    conn: sqlite3.Connection, owner_id: int, blob: str
) -> tuple[int | None, StoredContent | None]:
    """(the owner's live image with this content, any row's facts about this content).

    One indexed query decides the cheap paths of an upload before anything is decoded.
    """
    rows = conn.execute(
        "SELECT id, owner_id, thumb_blob, format, width, height, deleted_at, colours_pending, "
        "colours_outdated FROM images WHERE blob = ? "
        "ORDER BY deleted_at IS NOT NULL, colours_pending, colours_outdated, id LIMIT 50",
        (blob,),
    ).fetchall()
    mine = next(
        (r["id"] for r in rows if r["owner_id"] == owner_id and r["deleted_at"] is None), None
    )
    if not rows:
        return mine, None
    r = rows[0]
    return mine, StoredContent(
        r["id"],
        r["thumb_blob"],
        r["format"],
        r["width"],
        r["height"],
        bool(r["colours_pending"]),
        bool(r["colours_outdated"]),
    )


# --- tags ---------------------------------------------------------------------------------------


def tag_ids(conn: sqlite3.Connection, names: Iterable[str]) -> dict[str, int]:
    """Ids of the existing tags among `names` (unknown names are simply absent)."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    rows = conn.execute(
        f"SELECT name, id FROM tags WHERE name IN ({_placeholders(len(names))})", names
    )
    return {name: tag_id for name, tag_id in rows}


def _ensure_tags(conn: sqlite3.Connection, names: Sequence[str]) -> list[int]:
    conn.executemany(
        "INSERT INTO tags (name) VALUES (?) ON CONFLICT (name) DO NOTHING", [(n,) for n in names]
    )
    known = tag_ids(conn, names)
    return [known[n] for n in names]


def tag_image_counts(conn: sqlite3.Connection, tag_id_list: Sequence[int]) -> dict[int, int]:
    """How many rows each tag has, deleted images' too (an estimate is enough): which tag is
    rarest to walk first, and for search by image whether tags are selective enough to list
    the allowed ids before ranking."""
    return {
        tag_id: conn.execute(
            "SELECT COUNT(*) FROM image_tags WHERE tag_id = ?", (tag_id,)
        ).fetchone()[0]
        for tag_id in tag_id_list
    }


def visible_tag_counts(conn: sqlite3.Connection, viewer: int) -> list[tuple[str, int]]:
    """Every tag with its number of images `viewer` can see; tags with none are left out.

    Counted as "all rows of the tag" (a walk of the tag index, no sort) minus "rows the viewer
    cannot see" (deleted, or someone else's private: usually few). At 100,000 images this is
    ~15x faster than grouping the visible join, which needs a temporary B-tree.
    """
    totals = dict(conn.execute("SELECT tag_id, COUNT(*) FROM image_tags GROUP BY tag_id"))
    hidden = dict(
        conn.execute(
            f"SELECT it.tag_id, COUNT(*) FROM images i CROSS JOIN image_tags it "
            f"ON it.image_id = i.id WHERE NOT ({VISIBLE}) GROUP BY it.tag_id",
            {"viewer": viewer},
        )
    )
    names = dict(conn.execute("SELECT id, name FROM tags"))
    out = [
        (names[tag_id], total - hidden.get(tag_id, 0))
        for tag_id, total in totals.items()
        if total > hidden.get(tag_id, 0)
    ]
    return sorted(out)


def index_row(
    title: str, description: str, tags: Iterable[str], filename: str
) -> tuple[str, str, str, str]:
    """The text-index row of an image, in the index's column order (title, description, tags,
    filename), each folded for search and with Chinese and Japanese characters set apart
    (`index_text`). Uploads, edits and `bench.fill` all write it through here, so a search
    finds a filled image exactly as it would find an uploaded one."""
    return (
        index_text(title),
        index_text(description),
        index_text(" ".join(tags)),
        index_text(filename),
    )


def fts_texts(conn: sqlite3.Connection, image_id: int) -> tuple[str, str, str, str] | None:
    """The text-index row (`index_row`) of a live image from its current columns and tags;
    None if the image is not live. The stored columns keep what the seller typed: only the
    index holds the folded spelling."""
    row = conn.execute(
        "SELECT i.title, i.description, "
        "  (SELECT json_group_array(t.name) FROM image_tags it "
        "   JOIN tags t ON t.id = it.tag_id WHERE it.image_id = i.id), "
        "  i.filename "
        "FROM images i WHERE i.id = ? AND i.deleted_at IS NULL",
        (image_id,),
    ).fetchone()
    if row is None:
        return None
    title, description, tags, filename = row
    return index_row(str(title), str(description), json.loads(tags), str(filename))


def _fts_row(conn: sqlite3.Connection, image_id: int) -> None:
    """(Re)write the FTS row of a live image from its current columns and tags."""
    conn.execute("DELETE FROM images_fts WHERE rowid = ?", (image_id,))
    texts = fts_texts(conn, image_id)
    if texts is not None:
        conn.execute(
            "INSERT INTO images_fts (rowid, title, description, tags, filename) "
            "VALUES (?, ?, ?, ?, ?)",
            (image_id, *texts),
        )


# --- writes -------------------------------------------------------------------------------------


def insert_image(conn: sqlite3.Connection, new: NewImage) -> int:
    """Commit an uploaded image with its tags, FTS row, colours and embedding; return its id.

    Raises DuplicateImage if the owner already has a live image with this content (two
    identical uploads in flight at once: the loser reports the winner's id).
    """
    now = time.time()
    with WRITE_LOCK, transaction(conn, immediate=True):
        existing = live_image_by_owner_blob(conn, new.owner_id, new.blob)
        if existing is not None:
            raise DuplicateImage(existing)
        cursor = conn.execute(
            "INSERT INTO images (owner_id, blob, thumb_blob, filename, title, description, "
            "price_cents, quantity, private, format, width, height, byte_size, created_at, "
            "updated_at, colours_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.owner_id,
                new.blob,
                new.thumb_blob,
                new.filename,
                new.title,
                new.description,
                new.price_cents,
                new.quantity,
                int(new.private),
                new.format,
                new.width,
                new.height,
                new.byte_size,
                now,
                now,
                int(new.colours_pending),
            ),
        )
        image_id = int(cursor.lastrowid or 0)
        if new.tags:
            conn.executemany(
                "INSERT INTO image_tags (image_id, tag_id) VALUES (?, ?)",
                [(image_id, t) for t in _ensure_tags(conn, new.tags)],
            )
        source = new.copy_analysis_from
        if source is not None and not new.palette and not new.palette_computed:
            conn.execute(
                "INSERT INTO image_colours (image_id, rank, r, g, b, hue, saturation, lightness, "
                "share) SELECT ?, rank, r, g, b, hue, saturation, lightness, share "
                "FROM image_colours WHERE image_id = ?",
                (image_id, source),
            )
            # colours an older rule made are copied as what they are: due to be computed again
            conn.execute(
                "UPDATE images SET colours_outdated = "
                "(SELECT colours_outdated FROM images WHERE id = ?) WHERE id = ?",
                (source, image_id),
            )
        else:
            _insert_palette(conn, image_id, new.palette)
        if source is not None:
            conn.execute(
                "INSERT INTO embeddings (image_id, model, vector) "
                "SELECT ?, model, vector FROM embeddings WHERE image_id = ?",
                (image_id, source),
            )
        elif new.embedding is not None:
            conn.execute(
                "INSERT INTO embeddings (image_id, model, vector) VALUES (?, ?, ?)",
                (image_id, *new.embedding),
            )
        _fts_row(conn, image_id)
    return image_id


@dataclass(slots=True)
class Changes:
    title: str | None = None
    description: str | None = None
    price_cents: int | None = None
    quantity: int | None = None
    #: Added to the stock inside the write, so that sales committed meanwhile are kept.
    add_quantity: int | None = None
    private: bool | None = None
    add_tags: list[str] = field(default_factory=list)
    remove_tags: list[str] = field(default_factory=list)


class StockOutOfRange(Exception):
    """A relative stock change would take the count below 0 or above MAX_QUANTITY; nothing was
    changed. `stock` is the count the change met, which the seller needs to choose another."""

    def __init__(self, stock: int) -> None:
        super().__init__(stock)
        self.stock = stock


class TooManyTags(Exception):
    """Adding tags would give an image more than MAX_TAGS; nothing was changed. `had` is its
    count before the change, `would_have` the count the change would have left."""

    def __init__(self, had: int, would_have: int) -> None:
        super().__init__(had, would_have)
        self.had = had
        self.would_have = would_have


def _tag_count(conn: sqlite3.Connection, image_id: int) -> int:
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM image_tags WHERE image_id = ?", (image_id,)
    ).fetchone()
    return int(count)


def _insert_palette(
    conn: sqlite3.Connection, image_id: int, palette: Sequence[ColourRecord]
) -> None:
    conn.executemany(
        "INSERT INTO image_colours (image_id, rank, r, g, b, hue, saturation, lightness, share) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (image_id, rank, c.r, c.g, c.b, c.hue, c.saturation, c.lightness, c.share)
            for rank, c in enumerate(palette)
        ],
    )


#: The marks an image's colours carry for the colour backfill: `colours_pending`, never
#: computed (stored under --no-colours; no rows), and `colours_outdated`, an older rule's
#: (schema v12; the rows are kept and used until replaced).
ColourMark = Literal["colours_pending", "colours_outdated"]


def _marked(
    conn: sqlite3.Connection, mark: ColourMark, after: int, limit: int
) -> list[tuple[int, str]]:
    rows = conn.execute(
        f"SELECT id, blob FROM images WHERE {mark} = 1 AND deleted_at IS NULL "
        "AND id > ? ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def _count_marked(conn: sqlite3.Connection, mark: ColourMark) -> int:
    sql = f"SELECT COUNT(*) FROM images WHERE {mark} = 1 AND deleted_at IS NULL"
    return int(conn.execute(sql).fetchone()[0])


def _store_marked(
    conn: sqlite3.Connection, mark: ColourMark, palettes: dict[int, list[ColourRecord]]
) -> list[int]:
    """Commit computed colours in place of any stored ones, clearing `mark`, in one
    transaction; return the ids stored. An image deleted meanwhile is left out, so its colours
    cannot come back with it into the colour table."""
    stored = []
    with WRITE_LOCK, transaction(conn, immediate=True):
        for image_id, palette in palettes.items():
            cursor = conn.execute(
                f"UPDATE images SET {mark} = 0 WHERE id = ? AND {mark} = 1 AND deleted_at IS NULL",
                (image_id,),
            )
            if cursor.rowcount == 1:
                conn.execute("DELETE FROM image_colours WHERE image_id = ?", (image_id,))
                _insert_palette(conn, image_id, palette)
                stored.append(image_id)
    return stored


def colours_pending(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, str]]:
    """(id, original's blob) of live images whose colours were never computed, id > `after`,
    in id order: the colour backfill's next chunk."""
    return _marked(conn, "colours_pending", after, limit)


def count_colours_pending(conn: sqlite3.Connection) -> int:
    return _count_marked(conn, "colours_pending")


def store_palettes(conn: sqlite3.Connection, palettes: dict[int, list[ColourRecord]]) -> list[int]:
    """Commit computed colours (an empty palette: the picture has none) for images still
    waiting for them; return the ids stored."""
    return _store_marked(conn, "colours_pending", palettes)


def colours_outdated(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, str]]:
    """(id, original's blob) of live images whose colours an older rule computed (schema v12),
    id > `after`, in id order: what the colour backfill computes again after the missing ones."""
    return _marked(conn, "colours_outdated", after, limit)


def count_colours_outdated(conn: sqlite3.Connection) -> int:
    return _count_marked(conn, "colours_outdated")


def replace_palettes(
    conn: sqlite3.Connection, palettes: dict[int, list[ColourRecord]]
) -> list[int]:
    """Commit colours computed again for images whose colours are outdated, in place of the
    old ones; return the ids replaced."""
    return _store_marked(conn, "colours_outdated", palettes)


#: The write-side twin of VISIBLE: a change by `:editor` applies only while they may still
#: see the image. Their permission was checked by an earlier read, which the owner's making
#: the image private (or deleting it) may have overtaken since.
STILL_EDITABLE = " AND (private = 0 OR owner_id = :editor)"


def update_image(
    conn: sqlite3.Connection, image_id: int, changes: Changes, *, editor: int | None = None
) -> ImageRecord | None:
    """Apply `changes` to a live image in one transaction and return the image as changed;
    None if it is gone (deleted) or, with `editor`, private to someone else by now."""
    columns = {
        name: value
        for name, value in (
            ("title", changes.title),
            ("description", changes.description),
            ("price_cents", changes.price_cents),
            ("quantity", changes.quantity),
            ("private", None if changes.private is None else int(changes.private)),
        )
        if value is not None
    }
    if changes.quantity is not None and changes.add_quantity is not None:
        raise ValueError("a stock count and a stock change at once")
    restock, in_range = "", ""
    if changes.add_quantity is not None:  # applied to the count as this write finds it
        restock = "quantity = quantity + :add_quantity, "
        in_range = f" AND quantity + :add_quantity BETWEEN 0 AND {MAX_QUANTITY}"
    editable = STILL_EDITABLE if editor is not None else ""
    with WRITE_LOCK, transaction(conn, immediate=True):
        sets = "".join(f"{name} = :{name}, " for name in columns)
        cursor = conn.execute(
            f"UPDATE images SET {sets}{restock}updated_at = :now "
            f"WHERE id = :id AND deleted_at IS NULL{editable}{in_range}",
            {
                **columns,
                "add_quantity": changes.add_quantity,
                "now": time.time(),
                "id": image_id,
                "editor": editor,
            },
        )
        if cursor.rowcount == 0:
            if in_range:  # gone, or there and the change would leave it out of range
                row = conn.execute(
                    f"SELECT quantity FROM images WHERE id = :id AND deleted_at IS NULL{editable}",
                    {"id": image_id, "editor": editor},
                ).fetchone()
                if row is not None:
                    raise StockOutOfRange(row[0])
            return None
        if changes.add_tags:
            had = _tag_count(conn, image_id)
            conn.executemany(
                "INSERT INTO image_tags (image_id, tag_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(image_id, t) for t in _ensure_tags(conn, changes.add_tags)],
            )
        if changes.remove_tags:
            known = tag_ids(conn, changes.remove_tags)
            conn.executemany(
                "DELETE FROM image_tags WHERE image_id = ? AND tag_id = ?",
                [(image_id, t) for t in known.values()],
            )
        if changes.add_tags:
            # The wire bounds one request's tags only; the total is counted here, in the write,
            # so that repeated additions (or two at once) cannot pass it. An image already over
            # the limit (from before this check) may still lose tags, or keep its count.
            has = _tag_count(conn, image_id)
            if has > MAX_TAGS and has > had:
                raise TooManyTags(had, has)  # the transaction rolls back: nothing is changed
        _fts_row(conn, image_id)
        return images_by_ids(conn, [image_id])[0]  # read in the transaction that changed it


def soft_delete(conn: sqlite3.Connection, image_id: int, *, editor: int | None = None) -> bool:
    """Hide an image everywhere at once; the data stays until a purge. False if already gone
    or, with `editor`, private to someone else by now."""
    with WRITE_LOCK, transaction(conn, immediate=True):
        cursor = conn.execute(
            "UPDATE images SET deleted_at = :now WHERE id = :id AND deleted_at IS NULL"
            + (STILL_EDITABLE if editor is not None else ""),
            {"now": time.time(), "id": image_id, "editor": editor},
        )
        if cursor.rowcount == 0:  # gone already, or hidden from `editor`: it stays searchable
            return False
        conn.execute("DELETE FROM images_fts WHERE rowid = ?", (image_id,))
    return True


def purge_due(conn: sqlite3.Connection, deleted_before: float) -> list[int]:
    """The soft-deleted images whose grace period ended before `deleted_before` and that still
    hold their data: what `purge_deleted` removes, and what `server.py --check` reports."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT id FROM images WHERE deleted_at IS NOT NULL AND deleted_at < ? AND blob != ?",
            (deleted_before, PURGED),
        )
    ]


def purge_deleted(conn: sqlite3.Connection, deleted_before: float) -> int:
    """Remove for good what soft-deleted images hold (tags, colours, embedding, blob names).

    The row stays as a tombstone (blob columns = PURGED) so that its id is never handed out
    again, which keeps cart lines and order history from ever pointing at a different picture.
    The blobs themselves go with the next sweep, which removes whatever no row names.
    """
    with WRITE_LOCK, transaction(conn, immediate=True):
        ids = purge_due(conn, deleted_before)
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = _placeholders(len(chunk))
            for table in ("image_tags", "image_colours", "embeddings"):
                conn.execute(f"DELETE FROM {table} WHERE image_id IN ({marks})", chunk)
            conn.execute(
                f"UPDATE images SET blob = ?, thumb_blob = ?, title = '', description = '', "
                f"filename = '' WHERE id IN ({marks})",
                [PURGED, PURGED, *chunk],
            )
    return len(ids)


# --- listings -----------------------------------------------------------------------------------


def browse_ids(
    conn: sqlite3.Connection,
    viewer: int,
    tag_id_list: Sequence[int],
    *,
    match_any: bool,
    before: int | None,
    limit: int,
) -> list[int]:
    """Ids of the next `limit` visible images, newest first, strictly older than `before`.

    * no tags: a walk down the images rowid;
    * all of the tags: a walk down the first tag's index entries (callers pass the rarest
      first), each candidate checked against the other tags by primary key;
    * any of the tags: the same walk per tag, each cut at `limit`, merged.
    Each walk stops once it has `limit` visible rows, so the cost follows the batch size, not
    the repository size.
    """
    bound = before if before is not None else 2**62
    params: dict[str, object] = {"viewer": viewer, "before": bound, "limit": limit}
    if not tag_id_list:
        sql = (
            f"SELECT i.id FROM images i WHERE i.id < :before AND {VISIBLE} "
            "ORDER BY i.id DESC LIMIT :limit"
        )
        return [row[0] for row in conn.execute(sql, params)]
    if match_any:
        parts = []
        for n, tag_id in enumerate(dict.fromkeys(tag_id_list)):
            params[f"t{n}"] = tag_id
            parts.append(
                f"SELECT id FROM (SELECT it.image_id AS id FROM image_tags it "
                f"CROSS JOIN images i ON i.id = it.image_id "
                f"WHERE it.tag_id = :t{n} AND it.image_id < :before AND {VISIBLE} "
                f"ORDER BY it.image_id DESC LIMIT :limit)"
            )
        sql = " UNION ".join(parts) + " ORDER BY 1 DESC LIMIT :limit"
        return [row[0] for row in conn.execute(sql, params)]
    first, *others = tag_id_list
    params["t0"] = first
    checks = ""
    for n, tag_id in enumerate(others, start=1):
        params[f"t{n}"] = tag_id
        checks += (
            f" AND EXISTS (SELECT 1 FROM image_tags x{n} "
            f"WHERE x{n}.image_id = it.image_id AND x{n}.tag_id = :t{n})"
        )
    sql = (
        f"SELECT it.image_id FROM image_tags it CROSS JOIN images i ON i.id = it.image_id "
        f"WHERE it.tag_id = :t0 AND it.image_id < :before AND {VISIBLE}{checks} "
        f"ORDER BY it.image_id DESC LIMIT :limit"
    )
    return [row[0] for row in conn.execute(sql, params)]


def search_ids(
    conn: sqlite3.Connection, viewer: int, fts_query: str, limit: int = MAX_SEARCH_RESULTS
) -> list[int]:
    """Visible images matching an FTS5 query, best first (bm25), at most `limit`.

    Ranked in the FTS index alone, then the visibility rule is applied to the best candidates,
    going deeper only if too many of them were hidden (hidden images are few: other people's
    private ones and soft-deleted ones). Joining every match to `images` before the cut cost
    as much again as the ranking itself: a common word matches a third of the catalogue.
    """
    weights = ", ".join(str(w) for w in BM25_WEIGHTS)
    sql = (
        f"SELECT rowid FROM images_fts WHERE images_fts MATCH :query "
        f"ORDER BY bm25(images_fts, {weights}), rowid DESC LIMIT :limit"
    )
    depth = limit + limit // 4
    while True:
        ranked = [row[0] for row in conn.execute(sql, {"query": fts_query, "limit": depth})]
        visible = passing_ids(conn, viewer, ranked)
        kept = [i for i in ranked if i in visible]
        if len(kept) >= limit or len(ranked) < depth:
            return kept[:limit]
        depth *= 4


# --- consistency --------------------------------------------------------------------------------


def referenced_blobs(conn: sqlite3.Connection) -> set[str]:
    """Every blob name any row needs (soft-deleted rows too: they can still be purged later)."""
    names: set[str] = set()
    for blob, thumb in conn.execute("SELECT blob, thumb_blob FROM images"):
        names.add(blob)
        names.add(thumb)
    names.discard(PURGED)
    return names


def stored_blob_rows(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
    """(id, blob, thumb_blob) of every row that must still have its blobs."""
    return [
        (row[0], row[1], row[2])
        for row in conn.execute(
            "SELECT id, blob, thumb_blob FROM images WHERE blob != ? ORDER BY id", (PURGED,)
        )
    ]


def database_problems(conn: sqlite3.Connection) -> list[str]:
    """What SQL alone can find wrong: stock, orders, FTS and tag rows out of step."""
    problems: list[str] = []
    (integrity,) = conn.execute("PRAGMA quick_check").fetchone()
    if integrity != "ok":
        problems.append(f"SQLite quick_check: {integrity}")
    for (fk,) in conn.execute("SELECT COUNT(*) FROM pragma_foreign_key_check"):
        if fk:
            problems.append(f"{fk} rows break a foreign key")
    for image_id, quantity, price in conn.execute(
        "SELECT id, quantity, price_cents FROM images WHERE quantity < 0 OR price_cents < 0"
    ):
        problems.append(f"image {image_id} has quantity {quantity}, price {price}")
    for (order_id,) in conn.execute(
        "SELECT o.id FROM orders o WHERE NOT EXISTS "
        "(SELECT 1 FROM order_lines l WHERE l.order_id = o.id)"
    ):
        problems.append(f"order {order_id} has no lines")
    for order_id, total, lines_total in conn.execute(
        "SELECT o.id, o.total_cents, SUM(l.quantity * l.unit_price_cents) FROM orders o "
        "JOIN order_lines l ON l.order_id = o.id GROUP BY o.id "
        "HAVING SUM(l.quantity * l.unit_price_cents) != o.total_cents"
    ):
        problems.append(f"order {order_id} totals {total} but its lines add up to {lines_total}")
    (missing_fts,) = conn.execute(
        "SELECT COUNT(*) FROM images i WHERE i.deleted_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM images_fts f WHERE f.rowid = i.id)"
    ).fetchone()
    if missing_fts:
        problems.append(f"{missing_fts} live images are missing from the text index")
    (stale_fts,) = conn.execute(
        "SELECT COUNT(*) FROM images_fts f WHERE NOT EXISTS "
        "(SELECT 1 FROM images i WHERE i.id = f.rowid AND i.deleted_at IS NULL)"
    ).fetchone()
    if stale_fts:
        problems.append(f"{stale_fts} text-index rows belong to no live image")
    (bad_purge,) = conn.execute(
        "SELECT COUNT(*) FROM images WHERE (blob = ?) != (thumb_blob = ?) "
        "OR (blob = ? AND deleted_at IS NULL)",
        (PURGED, PURGED, PURGED),
    ).fetchone()
    if bad_purge:
        problems.append(f"{bad_purge} rows are half purged or purged while live")
    return problems


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Headline numbers for the check report."""
    out = {}
    for label, sql in (
        ("live images", "SELECT COUNT(*) FROM images WHERE deleted_at IS NULL"),
        ("deleted images", "SELECT COUNT(*) FROM images WHERE deleted_at IS NOT NULL"),
        ("tags", "SELECT COUNT(*) FROM tags"),
        ("orders", "SELECT COUNT(*) FROM orders"),
    ):
        out[label] = conn.execute(sql).fetchone()[0]
    return out
