"""Search by image: the ImageSearch route, and the ranking under filters it answers with.

The engine (`service.similarity`) holds the model and the vector index; this module turns a
request into a ranking. The query is a photo, decoded and embedded as an upload would be, or
the id of a stored image the viewer may see (its stored vector, or one computed from its
original the way the backfill would when it has none yet).

Filters (tags all-of, price range, in stock) and visibility apply before the cut. Without
tags, or with tags that most images carry, the index is asked for its best
``POST_FILTER_CANDIDATES`` and those are checked in one SQL query (cheap at any size: an
allowed-id list of 100k rows costs tens of milliseconds to build); when that leaves fewer than
``MAX_RESULTS``, the allowed ids are computed in SQL and the index searches among them only.
Selective tags go straight to the allowed-id path (a walk of the rarest tag's index). The
ranked ids and cosines then go into a listing snapshot: batches, ``More`` and visibility
re-checks come from ``service.listings``.

While the backfill (`service.embedding_backfill`) runs, a search can rank only the images
already in the index: its first batch carries ``Batch.unindexed``, about how many images the
viewer may see that pass the filters have no embedding yet (the query's own image and
undecodable ones left out). It is a notice for people, counted in SQL just before the ranking
and without the index lock, so searches never queue behind each other or behind the backfill;
what it can be off by is in `rank_counting`. Once a backfill pass finds nothing left, it is 0
without a query.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

import numpy as np

from models.embeddings import prepare_input
from protocol.catalog import ImageSearch
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_SEARCH_RESULTS
from repository.embeddings import count_missing_visible, visible_vector
from repository.filters import SearchFilters
from service.context import RequestContext, Services
from service.ingest import decode_upload, rejection_error
from service.listings import Ranked, Recheck, checked_filter_tags, open_ranked
from service.registry import Frames, route
from service.similarity import FAILURE_ADVICE, SimilarityEngine, engine_of
from util import images as imaging

if TYPE_CHECKING:
    from repository.vector_index import VectorIndex

#: Ranked results a search snapshot holds (batches of 20, then `More`, up to this many).
MAX_RESULTS = MAX_SEARCH_RESULTS
#: Unfiltered candidates checked against the filters in SQL before falling back to allowed ids.
POST_FILTER_CANDIDATES = 640
#: Tags carried by at least this share of the indexed images are post-filtered, not pre-listed.
TAG_POST_FILTER_SHARE = 0.5


# --- ranking ------------------------------------------------------------------------------------


def rank_counting(
    engine: SimilarityEngine,
    conn: sqlite3.Connection,
    viewer: int,
    query: np.ndarray,
    filters: SearchFilters,
    exclude: int | None,
    limit: int = MAX_RESULTS,
) -> tuple[list[tuple[int, float]], int]:
    """`rank`, and about how many images the viewer may see that pass the filters this
    search could not rank because the backfill has not embedded them yet (`Batch.unindexed`).

    Without that count a search during the backfill answered "143 in all", then 207, then
    399, for the same 400 images. It is a notice for people ("N images are still being
    indexed"), so it is counted first and ranked after, neither under the index lock:
    searches run side by side during the backfill, and uploads and deletes never wait for
    them. Ranked + unindexed therefore is not exact:

    * it can be too high by the images the backfill embedded between the count and the
      ranking (counted, then ranked too): a chunk or two (`BACKFILL_CHUNK`), or images
      deleted or made private in between;
    * it can be too low by uploads whose row and embedding committed but which are not
      indexed yet (`index_stored` runs right after the commit), and by an upload stored
      without an embedding while a finished backfill has not been woken yet: milliseconds,
      at most the uploads in flight.

    The backfill's own images are never missed: it indexes a chunk before committing it
    (`EmbeddingBackfill._store_and_index`). Images it cannot decode are left out: they never
    will be ranked. The count says how many images, not results: `limit` still caps what is
    ranked. Once the backfill is done this costs nothing."""
    backfill = engine.backfill
    missing = 0
    if not backfill.complete:
        assert engine.model_name is not None
        skip = backfill.failed if exclude is None else backfill.failed | {exclude}
        missing = count_missing_visible(conn, engine.model_name, viewer, filters, skip)
    index = engine.index
    assert index is not None
    return rank(index, conn, viewer, query, filters, exclude, limit), missing


def rank(
    index: VectorIndex,
    conn: sqlite3.Connection,
    viewer: int,
    query: np.ndarray,
    filters: SearchFilters,
    exclude: int | None,
    limit: int = MAX_RESULTS,
) -> list[tuple[int, float]]:
    """The best `limit` (id, cosine) the viewer may see that pass the filters."""
    n = len(index)
    if filters.impossible or not n:
        return []
    selective_tags = bool(filters.tag_ids) and (filters.tag_counts[0] < TAG_POST_FILTER_SHARE * n)
    if not selective_tags:
        k = min(n, POST_FILTER_CANDIDATES)
        found = index.search(query, k, exclude=exclude)
        ok = filters.passing(conn, viewer, [i for i, _ in found])
        kept = [(i, s) for i, s in found if i in ok]
        # Every vector was a candidate; the query's own image (left out) counts only if it
        # is in the index: one searched by id before its backfill is not.
        exhaustive = len(found) < k or k >= n - (exclude is not None and exclude in index)
        if len(kept) >= limit or exhaustive:
            return kept[:limit]
    allowed = filters.allowed_ids(conn, viewer)
    return index.search(query, limit, allowed=allowed, exclude=exclude)


# --- the route ----------------------------------------------------------------------------------


def _unavailable(engine: SimilarityEngine | None) -> VitrineError:
    if engine is not None and engine.state == "loading":
        waited = time.monotonic() - engine.started_at
        return VitrineError(
            ErrorCode.UNAVAILABLE,
            f"The image model is still loading (for {waited:.0f} s so far); "
            "try again in a few seconds.",
        )
    if engine is not None and engine.batcher is not None:
        return VitrineError(
            ErrorCode.UNAVAILABLE,
            "Search by image is unavailable on this server: its vector index could not be "
            "built. The server's log says why.",
        )
    # Whose failure it was is decided once, where it was caught (SimilarityEngine.model_failure);
    # the sentence for each is beside the log's in FAILURE_ADVICE.
    failure = engine.model_failure if engine is not None else ""
    return VitrineError(ErrorCode.UNAVAILABLE, FAILURE_ADVICE[failure or "download"].answer)


def _decode_query(data: bytes, services: Services) -> np.ndarray:
    return prepare_input(decode_upload(services.config, data).image)


@route(ImageSearch)
async def image_search(ctx: RequestContext, request: ImageSearch) -> Frames:
    if (request.data is None) == (request.image_id is None):
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "Search by image needs either a photo or the id of a stored image (one of them).",
        )
    tags = checked_filter_tags(request.filters)
    services = ctx.services
    engine = engine_of(services)
    if engine is None or not engine.ready or engine.batcher is None:
        raise _unavailable(engine)
    if request.image_id is not None:
        exclude = request.image_id
        try:
            # The stored vector is read in the same executor trip as the ranking.
            return await _open_search(ctx, engine, request, tags, None, exclude)
        except _NotEmbedded as missing:  # not backfilled yet: embed it the way the backfill would
            ids, vectors = await services.run(
                engine.backfill.embed_stored, [(exclude, missing.blob)]
            )
            if not ids:
                raise VitrineError(
                    ErrorCode.INTERNAL,
                    f"The stored picture of image {exclude} cannot be read to search with it; "
                    "the server operator should run `server.py --check`.",
                ) from None
            return await _open_search(ctx, engine, request, tags, vectors[0], exclude)
    data = request.data or b""
    if not data or len(data) > services.config.max_image_bytes:
        try:
            imaging.precheck(data[:1024], len(data), max_bytes=services.config.max_image_bytes)
        except imaging.ImageRejected as exc:
            raise rejection_error(exc) from None
    try:
        model_input = await services.run(_decode_query, data, services)
    except imaging.ImageRejected as exc:
        raise rejection_error(exc) from None
    vector = await engine.batcher.embed_async(model_input)
    return await _open_search(ctx, engine, request, tags, vector, None)


class _NotEmbedded(Exception):
    """The image to search by has no vector of the current model yet."""

    def __init__(self, blob: str) -> None:
        super().__init__(blob)
        self.blob = blob


async def _open_search(
    ctx: RequestContext,
    engine: SimilarityEngine,
    request: ImageSearch,
    tags: list[str],
    vector: np.ndarray | None,
    exclude: int | None,
) -> Frames:
    """Rank by `vector` (or by the stored vector of `exclude` when None) and send the first
    batch, all in one executor trip."""
    model = engine.model_name
    assert model is not None
    viewer = ctx.user.id
    asked = Recheck.of(tags, request.filters)

    def ranked(conn: sqlite3.Connection, limit: int) -> Ranked:
        query = vector
        if query is None:
            assert exclude is not None
            visible, stored, blob = visible_vector(conn, viewer, exclude, model)
            if not visible:
                raise VitrineError(ErrorCode.NOT_FOUND, f"There is no image {exclude} you can see.")
            if stored is None:
                raise _NotEmbedded(blob)
            query = stored
        filters = asked.resolve(conn, rarest_first=True)
        found, unindexed = rank_counting(engine, conn, viewer, query, filters, exclude, limit)
        scores = {i: round(float(s), 6) for i, s in found}
        return Ranked([i for i, _ in found], scores, {}, unindexed)

    return await open_ranked(
        ctx,
        request.id,
        request.options,
        ranked,
        asked,
        keep=MAX_RESULTS,
    )
