"""Stored embeddings and the SQL that search by image needs: which vectors exist and which images
still lack one. Which ids a viewer may see under the search filters is `repository.filters`,
shared with the other ranked searches.

Vectors are stored as 1,280 little-endian float32 per image, tagged with the model that made
them, so a model change is detected (and backfilled) rather than mixed into one index.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Collection, Iterator, Sequence

import numpy as np

from repository import images as repo
from repository.database import transaction
from repository.filters import SearchFilters
from repository.images import VISIBLE
from repository.vector_index import EMBEDDING_DIM

#: Images read per backfill step by default.
BACKFILL_CHUNK = 64
#: Rows read per chunk when the index is rebuilt from SQLite (about 40 MB of vectors).
REBUILD_CHUNK = 8192
_VECTOR_BYTES = EMBEDDING_DIM * 4


def vector_bytes(vector: np.ndarray) -> bytes:
    """How a vector is stored: 1280 little-endian float32 (5,120 bytes)."""
    return np.ascontiguousarray(vector, dtype="<f4").reshape(EMBEDDING_DIM).tobytes()


def vector_from(blob: bytes) -> np.ndarray | None:
    """The stored vector, or None if the bytes are not one (never trusted blindly)."""
    if blob is None or len(blob) != _VECTOR_BYTES:
        return None
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def iter_embeddings(
    conn: sqlite3.Connection, model: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of live images with an embedding of `model`, ascending, `REBUILD_CHUNK`
    at a time, so a rebuild never holds a second full copy of the vectors."""
    after = 0
    while True:
        rows = conn.execute(
            "SELECT e.image_id, e.vector FROM embeddings e CROSS JOIN images i "
            "ON i.id = e.image_id WHERE e.image_id > ? AND e.model = ? "
            "AND i.deleted_at IS NULL ORDER BY e.image_id LIMIT ?",
            (after, model, REBUILD_CHUNK),
        ).fetchall()
        if not rows:
            return
        after = rows[-1][0]
        good = [(r[0], r[1]) for r in rows if r[1] is not None and len(r[1]) == _VECTOR_BYTES]
        if good:
            ids = np.fromiter((g[0] for g in good), dtype=np.int64, count=len(good))
            vectors = np.frombuffer(b"".join(g[1] for g in good), dtype="<f4")
            yield ids, vectors.reshape(len(good), EMBEDDING_DIM).astype(np.float32, copy=False)


def index_generation(conn: sqlite3.Connection, model: str) -> str:
    """A token that changes whenever the set of live embedded images of `model` changes: a
    digest of their ids in order. Checked before a saved index is trusted, and a vector is
    never rewritten in place under the same model name, so the ids are all that can change.

    (v1 kept the count, the largest id and the sum and sum of squares of the ids: three ids
    deleted and three others backfilled with the same sums, after a crash, would have let a
    stale index load. Reading the ids costs about 50 ms at 100,000 images, at start-up and
    at shutdown.)
    """
    rows = conn.execute(
        "SELECT e.image_id FROM embeddings e CROSS JOIN images i ON i.id = e.image_id "
        "WHERE e.model = ? AND i.deleted_at IS NULL ORDER BY e.image_id",
        (model,),
    )
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64)
    digest = hashlib.blake2b(ids.tobytes(), digest_size=16).hexdigest()
    return f"v2|{model}|{len(ids)}|{digest}"


#: The one definition of "image `i` has no embedding of the model `:model`" (a stored vector of
#: other weights or another input policy is as good as none).
_NOT_EMBEDDED = (
    "NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model = :model)"
)


def missing_embeddings(
    conn: sqlite3.Connection, model: str, after: int = 0, limit: int = BACKFILL_CHUNK
) -> list[tuple[int, str]]:
    """(id, original blob) of live images with no embedding of `model`, ascending after `after`."""
    return [
        (row[0], row[1])
        for row in conn.execute(
            f"SELECT i.id, i.blob FROM images i WHERE i.id > :after AND i.deleted_at IS NULL "
            f"AND {_NOT_EMBEDDED} ORDER BY i.id LIMIT :limit",
            {"after": after, "model": model, "limit": limit},
        )
    ]


def count_missing(conn: sqlite3.Connection, model: str, skip: Collection[int] = ()) -> int:
    """Live images still without an embedding of `model`, but those in `skip`: the backfill's
    images it cannot decode, which it will never embed. Skipped in SQL, never subtracted from
    the count: an id in `skip` whose image was deleted since is not counted to begin with, and
    subtracting it left a new image out (the backfill saw 0 to do and stopped)."""
    return _count_missing(conn, "i.deleted_at IS NULL", {"model": model}, skip)


def count_missing_visible(
    conn: sqlite3.Connection,
    model: str,
    viewer: int,
    filters: SearchFilters,
    skip: Collection[int] = (),
) -> int:
    """`count_missing` among the images `viewer` may see that pass `filters`: what a search by
    image under those filters cannot rank yet."""
    if filters.impossible:
        return 0
    params: dict[str, object] = {"model": model, "viewer": viewer}
    return _count_missing(conn, f"{VISIBLE}{filters.sql(params)}", params, skip)


def _count_missing(
    conn: sqlite3.Connection, where: str, params: dict[str, object], skip: Collection[int]
) -> int:
    """Searches run this on every request until the backfill is done: at 100,000 images it is a
    walk of the live images' partial index (`images_listing`) with a primary-key probe of
    `embeddings` each, 43-66 ms; the skip list is read once into a temporary b-tree."""
    sql = f"SELECT COUNT(*) FROM images i WHERE {where} AND {_NOT_EMBEDDED}"
    if skip:
        sql += " AND i.id NOT IN (SELECT value FROM json_each(:skip))"
        params = {**params, "skip": json.dumps([int(i) for i in skip])}
    (n,) = conn.execute(sql, params).fetchone()
    return int(n)


def store_embeddings(
    conn: sqlite3.Connection, model: str, ids: Sequence[int], vectors: np.ndarray
) -> list[int]:
    """Write vectors of `model` for live images (replacing other models'); returns the ids
    written. One transaction: bulk loaders (benchmarks) can pass thousands at once."""
    pairs = [(int(i), vector_bytes(v)) for i, v in zip(ids, vectors, strict=True)]
    if not pairs:
        return []
    with repo.WRITE_LOCK, transaction(conn, immediate=True):
        live = live_subset(conn, [p[0] for p in pairs])
        conn.executemany(
            "INSERT OR REPLACE INTO embeddings (image_id, model, vector) VALUES (?, ?, ?)",
            [(i, model, blob) for i, blob in pairs if i in live],
        )
    return [i for i, _ in pairs if i in live]


def live_subset(conn: sqlite3.Connection, ids: Sequence[int]) -> set[int]:
    return {
        row[0]
        for row in conn.execute(
            "SELECT id FROM images WHERE id IN (SELECT value FROM json_each(?)) "
            "AND deleted_at IS NULL",
            (json.dumps([int(i) for i in ids]),),
        )
    }


def visible_vector(
    conn: sqlite3.Connection, viewer: int, image_id: int, model: str
) -> tuple[bool, np.ndarray | None, str]:
    """(visible to `viewer`, its vector of `model` or None, its original blob)."""
    row = conn.execute(
        f"SELECT e.vector, e.model, i.blob FROM images i LEFT JOIN embeddings e "
        f"ON e.image_id = i.id WHERE i.id = :id AND {VISIBLE}",
        {"id": image_id, "viewer": viewer},
    ).fetchone()
    if row is None:
        return False, None, ""
    vector = vector_from(row[0]) if row[1] == model else None
    return True, vector, row[2]
