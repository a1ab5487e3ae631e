"""Listings: browse by tags, text search, `More` on a cursor, and tag counts.

Cursors live on the connection (`ConnectionState.extras["cursors"]`), at most
`ServerConfig.max_cursors` of them; opening one more drops the oldest, and `More` on a dropped,
finished or unknown cursor answers NOT_FOUND ("run the listing again"). A cursor is either:

* a **keyset** (browse): the last id sent; the next batch is "visible, older than that", so
  images uploaded meanwhile never shift a page and deleted ones simply stop appearing;
* a **snapshot** (ranked searches): the ordered ids found when the search ran; each batch
  re-reads its rows with the visibility rule, so anything deleted or made private since is
  skipped. Other ranked listings (search by image or colour) can use `open_snapshot`.

A batch is sent as `Batch` frames of at most STREAM_CHUNK items; all but the last have
`final=False`, and only the last carries the cursor (present while more results remain).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from protocol.catalog import (
    STREAM_CHUNK,
    Batch,
    Browse,
    Colour,
    Filters,
    ImageSummary,
    ListingOptions,
    ListTags,
    More,
    TagCount,
    TagList,
    TextSearch,
)
from protocol.errors import ErrorCode, VitrineError
from repository import images as repo
from service.context import RequestContext
from service.images import normalise_tags, summaries
from service.registry import route

_CURSORS = "cursors"


def checked_filter_tags(filters: Filters) -> list[str]:
    """Validate the search filters the wire cannot (a price range upside down) and return the
    normalised tags; shared by every ranked search so they refuse the same things alike."""
    low, high = filters.min_price_cents, filters.max_price_cents
    if low is not None and high is not None and low > high:
        raise VitrineError(
            ErrorCode.BAD_REQUEST, "The minimum price is above the maximum price; swap them."
        )
    return normalise_tags(filters.tags)


@dataclass
class KeysetCursor:
    tag_ids: list[int]
    match_any: bool
    last_id: int


@dataclass
class SnapshotCursor:
    ids: list[int]
    position: int = 0
    #: Per-id extras for ranked searches: score and the matching colour.
    scores: dict[int, float] = field(default_factory=dict)
    matches: dict[int, Colour] = field(default_factory=dict)


ListingCursor = KeysetCursor | SnapshotCursor


def _cursors(ctx: RequestContext) -> OrderedDict[str, ListingCursor]:
    return ctx.connection.extras.setdefault(_CURSORS, OrderedDict())


def _keep(ctx: RequestContext, cursor: ListingCursor) -> str:
    store = _cursors(ctx)
    token = secrets.token_urlsafe(12)
    store[token] = cursor
    while len(store) > ctx.services.config.max_cursors:
        store.popitem(last=False)
    return token


def _chunks(request_id: int, items: list[ImageSummary], cursor: str | None) -> AsyncIterator[Batch]:
    async def gen() -> AsyncIterator[Batch]:
        if not items:
            yield Batch(id=request_id, items=[], cursor=cursor, final=True)
            return
        for start in range(0, len(items), STREAM_CHUNK):
            last = start + STREAM_CHUNK >= len(items)
            yield Batch(
                id=request_id,
                items=items[start : start + STREAM_CHUNK],
                cursor=cursor if last else None,
                final=last,
            )

    return gen()


def _limit(ctx: RequestContext, options: ListingOptions) -> int:
    return min(options.limit, ctx.services.config.max_batch)


# --- keyset (browse) ----------------------------------------------------------------------------


async def _keyset_batch(
    ctx: RequestContext, cursor: KeysetCursor, options: ListingOptions
) -> tuple[list[ImageSummary], bool]:
    """One batch from the cursor's position; advances it. Returns (items, more remain)."""
    limit = _limit(ctx, options)
    viewer = ctx.user.id

    def query(conn: sqlite3.Connection) -> tuple[list[int], list[repo.ImageRecord]]:
        ids = repo.browse_ids(
            conn,
            viewer,
            cursor.tag_ids,
            match_any=cursor.match_any,
            before=cursor.last_id,
            limit=limit + 1,
        )
        return ids, repo.images_by_ids(conn, ids[:limit])

    ids, records = await ctx.services.db_call(query)
    if ids[:limit]:
        cursor.last_id = ids[:limit][-1]
    return await summaries(ctx.services, records, options.thumbnails), len(ids) > limit


@route(Browse)
async def browse(ctx: RequestContext, request: Browse) -> AsyncIterator[Batch]:
    names = normalise_tags(request.tags)

    def resolve(conn: sqlite3.Connection) -> dict[str, int]:
        known = repo.tag_ids(conn, names)
        if request.match_any or len(known) < 2:
            return known
        counts = repo.tag_image_counts(conn, list(known.values()))
        return dict(sorted(known.items(), key=lambda kv: counts[kv[1]]))

    known = await ctx.services.db_call(resolve)
    if names and (not known or (not request.match_any and len(known) < len(names))):
        # A tag nobody has used yet matches nothing (all: the whole listing; any: that tag).
        return _chunks(request.id, [], None)
    cursor = KeysetCursor(list(known.values()), request.match_any, 2**62)
    items, more = await _keyset_batch(ctx, cursor, request.options)
    token = _keep(ctx, cursor) if more else None
    return _chunks(request.id, items, token)


# --- snapshot (ranked searches) -----------------------------------------------------------------


async def _snapshot_batch(
    ctx: RequestContext, cursor: SnapshotCursor, options: ListingOptions
) -> list[ImageSummary]:
    """The next `limit` still-visible items of a snapshot; advances it past what it read."""
    limit = _limit(ctx, options)
    viewer = ctx.user.id

    def query(conn: sqlite3.Connection) -> list[repo.ImageRecord]:
        found: list[repo.ImageRecord] = []
        while len(found) < limit and cursor.position < len(cursor.ids):
            want = limit - len(found)
            chunk = cursor.ids[cursor.position : cursor.position + want]
            cursor.position += len(chunk)
            found.extend(repo.images_by_ids(conn, chunk, viewer))
        return found

    records = await ctx.services.db_call(query)
    items = await summaries(ctx.services, records, options.thumbnails)
    for item in items:
        item.score = cursor.scores.get(item.id)
        item.match = cursor.matches.get(item.id)
    return items


async def open_snapshot(
    ctx: RequestContext,
    request_id: int,
    ids: Sequence[int],
    options: ListingOptions,
    *,
    scores: dict[int, float] | None = None,
    matches: dict[int, Colour] | None = None,
) -> AsyncIterator[Batch]:
    """First batch of a ranked listing (ids best first) and its cursor for `More`.

    For other ranked searches (by image, by colour): pass the ids you ranked; visibility is
    re-checked here, batch by batch, so the caller's ids only need to be candidates.
    """
    cursor = SnapshotCursor(list(ids), 0, scores or {}, matches or {})
    items = await _snapshot_batch(ctx, cursor, options)
    more = cursor.position < len(cursor.ids)
    token = _keep(ctx, cursor) if more else None
    return _chunks(request_id, items, token)


_WORD = re.compile(r"\w+")


def fts_query(text: str) -> str:
    """Turn what a person typed into an FTS5 query that can never be a syntax error.

    Every word (a run of letters, digits or underscores) becomes a quoted FTS string, so
    operators (`AND`, `OR`, `NOT`, `NEAR`), column filters (`title:`), `^`, parentheses and
    quotes in the input are plain text; words are ANDed. A word typed with a trailing `*`
    stays a prefix search (`shir*` finds `shirt`). Raises BAD_REQUEST if no word is left.
    """
    terms = []
    for match in _WORD.finditer(text):
        word = match.group(0)
        prefix = text[match.end() : match.end() + 1] == "*"
        terms.append(f'"{word}"' + ("*" if prefix else ""))
    if not terms:
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "The search text has no words (letters or digits) to look for.",
        )
    return " ".join(terms)


@route(TextSearch)
async def text_search(ctx: RequestContext, request: TextSearch) -> AsyncIterator[Batch]:
    query = fts_query(request.text)
    ids = await ctx.services.db_call(repo.search_ids, ctx.user.id, query)
    return await open_snapshot(ctx, request.id, ids, request.options)


# --- more and tags ------------------------------------------------------------------------------


@route(More)
async def more(ctx: RequestContext, request: More) -> AsyncIterator[Batch]:
    store = _cursors(ctx)
    cursor = store.get(request.cursor)
    if cursor is None:
        raise VitrineError(
            ErrorCode.NOT_FOUND,
            "That listing has ended or expired (only the most recent listings are kept); "
            "run the listing again.",
        )
    store.move_to_end(request.cursor)
    if isinstance(cursor, KeysetCursor):
        items, remaining = await _keyset_batch(ctx, cursor, request.options)
    else:
        items = await _snapshot_batch(ctx, cursor, request.options)
        remaining = cursor.position < len(cursor.ids)
    token: str | None = request.cursor
    if not remaining:
        store.pop(request.cursor, None)
        token = None
    return _chunks(request.id, items, token)


@route(ListTags)
async def list_tags(ctx: RequestContext, request: ListTags) -> TagList:
    rows = await ctx.services.db_call(repo.visible_tag_counts, ctx.user.id)
    return TagList(id=request.id, tags=[TagCount(name=n, count=c) for n, c in rows])
