"""Listings: browse by tags, text search, `More` on a cursor, and tag counts.

Cursors live on the connection (`ConnectionState.extras["cursors"]`), at most
`ServerConfig.max_cursors` of them; opening one more drops the oldest, and `More` on a dropped,
finished or unknown cursor answers NOT_FOUND ("run the listing again"). A cursor is either:

* a **keyset** (browse): the last id sent; the next batch is "visible, older than that", so
  images uploaded meanwhile never shift a page and deleted ones simply stop appearing;
* a **snapshot** (ranked searches): the ordered ids found when the search ran; each batch
  re-reads its rows with the visibility rule, so anything deleted or made private since is
  skipped. Every ranked listing (text, by image, by colour) opens with `open_ranked`.

A batch is sent as `Batch` frames of at most STREAM_CHUNK items; all but the last have
`final=False`, and only the last carries the cursor (present while more results remain).
"""

from __future__ import annotations

import secrets
import sqlite3
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from protocol import codec, framing
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
from repository.blobstore import BlobStore
from repository.filters import SearchFilters
from service.context import RequestContext
from service.images import build_summaries, normalise_tags
from service.registry import Frames, route
from util.catalogue_text import fold_for_search, split_unspaced

_CURSORS = "cursors"
_BUSY = "cursors_busy"


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


@dataclass(frozen=True, slots=True)
class Recheck:
    """The filters a ranked search was asked with, applied again to every later batch: a
    price, a stock count or a tag can change between `more`s, and a listing headed "up to
    5.00" must not then show an image at 99.00. For a text search, the text too: an image
    renamed from "hat" to "boot" meanwhile is no longer a result of `search hat`.

    The tags are kept as names and resolved again each time (`resolve`), since a tag's id can
    change between batches; the first ranking resolves them the same way."""

    tags: tuple[str, ...] = ()
    #: The plain conditions (price, stock), with no tags: those are `tags`, still unresolved.
    conditions: SearchFilters = field(default_factory=SearchFilters)
    #: The FTS5 query of a text search (`fts_query`), else None.
    text: str | None = None

    @classmethod
    def of(cls, tags: list[str], filters: Filters) -> Recheck:
        """From the normalised tags (`checked_filter_tags`) and the wire filters: the one place
        the wire's filters become the repository's."""
        conditions = SearchFilters(
            min_price_cents=filters.min_price_cents,
            max_price_cents=filters.max_price_cents,
            in_stock=filters.in_stock,
        )
        return cls(tuple(tags), conditions)

    def resolve(self, conn: sqlite3.Connection, *, rarest_first: bool = False) -> SearchFilters:
        """The filters with their tags as the database names them now."""
        return self.conditions.with_tags(conn, self.tags, rarest_first=rarest_first)

    def passing(self, conn: sqlite3.Connection, viewer: int, ids: list[int]) -> set[int]:
        allowed = self.resolve(conn).passing(conn, viewer, ids)
        if self.text is not None and allowed:
            allowed &= repo.matching_text(conn, self.text, list(allowed))
        return allowed


@dataclass
class SnapshotCursor:
    ids: list[int]
    position: int = 0
    #: Per-id extras for ranked searches: score and the matching colour.
    scores: dict[int, float] = field(default_factory=dict)
    matches: dict[int, Colour] = field(default_factory=dict)
    recheck: Recheck | None = None
    #: The search kept only these best `ids` of more matches (`Batch.kept`).
    cut: bool = False


ListingCursor = KeysetCursor | SnapshotCursor


def _cursors(ctx: RequestContext) -> OrderedDict[str, ListingCursor]:
    return ctx.connection.extras.setdefault(_CURSORS, OrderedDict())


def _new_token() -> str:
    return secrets.token_urlsafe(12)


def _busy(ctx: RequestContext) -> set[str]:
    """Cursors whose next batch a worker is reading now (see `more`)."""
    return ctx.connection.extras.setdefault(_BUSY, set())


def _keep(ctx: RequestContext, token: str, cursor: ListingCursor, viewer: int) -> None:
    """Remember a cursor of `viewer`'s listing. The store is touched on the event loop only; a
    cursor itself is advanced by a worker thread, one batch at a time (`more` refuses a second
    at once).

    Requests of one connection run concurrently, so a listing may end after a login as someone
    else (which forgets the last user's cursors): its cursor is then not kept for the new user.
    """
    current = ctx.connection.user
    if current is None or current.id != viewer:
        return
    store = _cursors(ctx)
    store[token] = cursor
    while len(store) > ctx.services.config.max_cursors:
        store.popitem(last=False)


def _encode_batch(
    request_id: int,
    items: list[ImageSummary],
    cursor: str | None,
    kept: int = 0,
    unindexed: int = 0,
) -> Frames:
    """A batch as `Batch` frames of at most STREAM_CHUNK items, only the last one final and
    carrying the cursor (and `kept`); `unindexed` is on every frame, so a reader of the first
    or of the last finds it. Encoded by the worker that built the items, so the event loop
    only writes bytes."""
    if not items:
        messages = [
            Batch(
                id=request_id, items=[], cursor=cursor, final=True, kept=kept, unindexed=unindexed
            )
        ]
    else:
        messages = []
        for start in range(0, len(items), STREAM_CHUNK):
            last = start + STREAM_CHUNK >= len(items)
            messages.append(
                Batch(
                    id=request_id,
                    items=items[start : start + STREAM_CHUNK],
                    cursor=cursor if last else None,
                    final=last,
                    kept=kept if last else 0,
                    unindexed=unindexed,
                )
            )
    return Frames(b"".join(framing.frame(codec.encode(m)) for m in messages))


def _limit(ctx: RequestContext, options: ListingOptions) -> int:
    return min(options.limit, ctx.services.config.max_batch)


# --- keyset (browse) ----------------------------------------------------------------------------


def _keyset_frames(
    conn: sqlite3.Connection,
    blobs: BlobStore,
    viewer: int,
    request_id: int,
    cursor: KeysetCursor,
    limit: int,
    thumbnails: bool,
    token: str,
) -> tuple[Frames, bool]:
    """One batch from the cursor's position, encoded with `token` as its cursor if more
    remain; advances the cursor. Returns (frames, more remain)."""
    ids = repo.browse_ids(
        conn,
        viewer,
        cursor.tag_ids,
        match_any=cursor.match_any,
        before=cursor.last_id,
        limit=limit + 1,
    )
    shown = ids[:limit]
    if shown:
        cursor.last_id = shown[-1]
    more = len(ids) > limit
    # The rows are read by a second statement, after which a commit may have hidden or
    # deleted one of the ids: the viewer's rule is applied again here.
    items = build_summaries(blobs, repo.images_by_ids(conn, shown, viewer), thumbnails)
    return _encode_batch(request_id, items, token if more else None), more


@route(Browse)
async def browse(ctx: RequestContext, request: Browse) -> Frames:
    names = normalise_tags(request.tags)
    limit = _limit(ctx, request.options)
    viewer = ctx.user.id
    blobs = ctx.services.blobs
    token = _new_token()

    def run(conn: sqlite3.Connection) -> tuple[KeysetCursor, Frames, bool]:
        """Tags, then the first batch: one trip to the executor."""
        known = repo.tag_ids(conn, names)
        if not request.match_any and len(known) >= 2:
            counts = repo.tag_image_counts(conn, list(known.values()))
            known = dict(sorted(known.items(), key=lambda kv: counts[kv[1]]))
        cursor = KeysetCursor(list(known.values()), request.match_any, 2**62)
        if names and (not known or (not request.match_any and len(known) < len(names))):
            # A tag nobody has used yet matches nothing (all: the whole listing; any: that tag).
            return cursor, _encode_batch(request.id, [], None), False
        frames, more = _keyset_frames(
            conn, blobs, viewer, request.id, cursor, limit, request.options.thumbnails, token
        )
        return cursor, frames, more

    cursor, frames, more = await ctx.services.db_call(run)
    if more:
        _keep(ctx, token, cursor, viewer)
    return frames


# --- snapshot (ranked searches) -----------------------------------------------------------------


class Ranked(NamedTuple):
    """What a ranked search hands to `open_ranked`, computed in one executor trip."""

    #: Best first; may hold images the viewer cannot see (re-checked batch by batch).
    ids: list[int]
    scores: dict[int, float]
    #: The matching colour by id (colour search only).
    matches: dict[int, Colour]
    #: What a search by image or by colour could not rank yet, its backfill still running
    #: (`Batch.unindexed`, on the first batch).
    unindexed: int = 0


def _snapshot_frames(
    conn: sqlite3.Connection,
    blobs: BlobStore,
    viewer: int,
    request_id: int,
    cursor: SnapshotCursor,
    limit: int,
    thumbnails: bool,
    token: str,
    unindexed: int = 0,
) -> tuple[Frames, bool]:
    """The next `limit` items of a snapshot still visible (and, after the first batch, still
    passing its filters), encoded with `token` as cursor if more remain; advances the cursor
    past what it read. Returns (frames, more remain).

    The first batch needs no recheck: it is read in the same trip as the ranking."""
    recheck = cursor.recheck if cursor.position > 0 else None
    found: list[repo.ImageRecord] = []
    while len(found) < limit and cursor.position < len(cursor.ids):
        want = limit - len(found)
        chunk = cursor.ids[cursor.position : cursor.position + want]
        cursor.position += len(chunk)
        if recheck is not None:
            allowed = recheck.passing(conn, viewer, chunk)
            chunk = [image_id for image_id in chunk if image_id in allowed]
        found.extend(repo.images_by_ids(conn, chunk, viewer))
    items = build_summaries(blobs, found, thumbnails)
    for item in items:
        item.score = cursor.scores.get(item.id)
        item.match = cursor.matches.get(item.id)
    more = cursor.position < len(cursor.ids)
    kept = len(cursor.ids) if cursor.cut and not more else 0
    return _encode_batch(request_id, items, token if more else None, kept, unindexed), more


async def open_ranked(
    ctx: RequestContext,
    request_id: int,
    options: ListingOptions,
    rank: Callable[[sqlite3.Connection, int], Ranked],
    recheck: Recheck | None = None,
    *,
    keep: int,
) -> Frames:
    """Run a ranked search and make its first batch in one trip to the executor (the event
    loop, which every connection shares, only writes the result), keeping the cursor for
    `More`.

    For every ranked search (text, by image, by colour): `rank(conn)` may return candidates
    the viewer cannot see; visibility is re-checked here, batch by batch, and so are the
    search's filters (`recheck`) from the second batch on. A search keeps its best `keep`
    results: `rank(conn, limit)` is asked for one more, so that the last batch can say the
    listing was cut when more matched (it said "500 images in all" of a search that matched
    556).
    """
    limit = _limit(ctx, options)
    viewer = ctx.user.id
    blobs = ctx.services.blobs
    token = _new_token()

    def run(conn: sqlite3.Connection) -> tuple[SnapshotCursor, Frames, bool]:
        ranked = rank(conn, keep + 1)
        ids = ranked.ids
        cursor = SnapshotCursor(
            ids[:keep], 0, ranked.scores, ranked.matches, recheck, cut=len(ids) > keep
        )
        frames, more = _snapshot_frames(
            conn,
            blobs,
            viewer,
            request_id,
            cursor,
            limit,
            options.thumbnails,
            token,
            ranked.unindexed,
        )
        return cursor, frames, more

    cursor, frames, more = await ctx.services.db_call(run)
    if more:
        _keep(ctx, token, cursor, viewer)
    return frames


#: Marks that join two words into one as typed (`t-shirt`, `o'neill`, `o’neill`): a hyphen,
#: an apostrophe, the typographic apostrophe and the Unicode hyphens (NFKC maps U+2011 to U+2010).
_JOINERS = frozenset("-'\u2019\u2010")


def _starts_word(ch: str) -> bool:
    """A letter or digit: what the index's tokenizer keeps (`_` alone is no word, so `search _`
    is refused like `search %` instead of finding nothing)."""
    return ch.isalnum()


def _in_word(ch: str) -> bool:
    """Also an underscore between letters (`snake_case` stays one phrase) and a combining mark
    (`İ` folds to `i` + U+0307, and a Devanagari vowel sign belongs to its word)."""
    return _starts_word(ch) or ch == "_" or unicodedata.category(ch)[0] == "M"


def _words(piece: str) -> list[tuple[str, int]]:
    """(word, index just past it) for each word of `piece`: a run of word characters that
    starts with a letter or digit, with single joiners (`_JOINERS`) between its
    parts; each joiner becomes a space, so the word is a phrase (`t-shirt` is `t shirt`).
    Each Chinese or Japanese character is set apart as the index sets it apart
    (`split_unspaced`), so such a run is a phrase of single characters (`连衣裙` is `连 衣 裙`,
    `tシャツ` is `t シ ャ ツ`)."""
    found: list[tuple[str, int]] = []
    i, n = 0, len(piece)
    while i < n:
        if not _starts_word(piece[i]):
            i += 1
            continue
        start = i
        while i < n and (
            _in_word(piece[i])
            or (piece[i] in _JOINERS and i + 1 < n and _starts_word(piece[i + 1]))
        ):
            i += 1
        word = "".join(" " if ch in _JOINERS else ch for ch in piece[start:i])
        found.append((" ".join(split_unspaced(word).split()), i))
    return found


def fts_query(text: str) -> str:
    """Turn what a person typed into an FTS5 query that can never be a syntax error.

    Every word (letters and digits, with the underscores and combining marks among them)
    becomes a quoted FTS string, so operators (`AND`, `OR`, `NOT`, `NEAR`), column filters
    (`title:`), `^`, parentheses and stray quotes in the input are plain text; terms are
    ANDed. A word joined by `-` or an apostrophe, without spaces (`long-sleeve`, `o'neill`),
    is one phrase (`"long sleeve"`), as the index's tokenizer split the title: its parts must
    stand together, in that order (`long-sleeve` used to find "Long dress with short sleeves").
    Words between a pair of double quotes are one phrase too (`"straw hat"` does not find "hat
    with straw"); an unpaired quote is ignored. A word or a closing quote followed by `*` is a
    prefix search (`shir*` finds `shirt`, `t-shi*` finds `t-shirt`). Chinese and Japanese are
    written without spaces, and the index holds each of their characters as a word of its own
    (`util.catalogue_text.index_text`): a run of them is a phrase of its characters, so
    `连衣裙` finds "红色连衣裙" but not a title with 连, 衣 and 裙 apart. Raises BAD_REQUEST if
    no word is left.

    The text is folded exactly as the index is (`fold_for_search`: NFKC, casefold, Greek
    accents): full-width letters, ligatures, `ß` and final sigma then match their plain
    spellings, and "été" typed as e + U+0301 (a macOS file name) composes again.
    """
    text = fold_for_search(text)
    terms = []
    pieces = text.split('"')
    paired = len(pieces) - (len(pieces) % 2 == 0)  # an odd count of quotes leaves the last open
    for index, piece in enumerate(pieces):
        after = pieces[index + 1][:1] if index + 1 < len(pieces) else ""
        if index % 2 == 1 and index < paired:
            words = [word for word, _ in _words(piece)]
            if words:
                terms.append('"' + " ".join(words) + '"' + ("*" if after == "*" else ""))
            continue
        for word, end in _words(piece):
            terms.append(f'"{word}"' + ("*" if piece[end : end + 1] == "*" else ""))
    if not terms:
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "The search text has no words (letters or digits) to look for.",
        )
    return " ".join(terms)


@route(TextSearch)
async def text_search(ctx: RequestContext, request: TextSearch) -> Frames:
    query = fts_query(request.text)
    viewer = ctx.user.id
    return await open_ranked(
        ctx,
        request.id,
        request.options,
        lambda conn, limit: Ranked(repo.search_ids(conn, viewer, query, limit), {}, {}),
        Recheck(text=query),
        keep=repo.MAX_SEARCH_RESULTS,
    )


# --- more and tags ------------------------------------------------------------------------------


@route(More)
async def more(ctx: RequestContext, request: More) -> Frames:
    store = _cursors(ctx)
    cursor = store.get(request.cursor)
    if cursor is None:
        raise VitrineError(
            ErrorCode.NOT_FOUND,
            "That listing is no longer open: it ended, it was one of the oldest (only the "
            "most recent are kept), or the server restarted since. Run the listing again.",
        )
    # Two pipelined `more`s for one cursor would run in two workers, both read its position
    # before either moved it, and send the same batch twice: the second is refused instead.
    busy = _busy(ctx)
    if request.cursor in busy:
        raise VitrineError(
            ErrorCode.CONFLICT,
            "The previous `more` of this listing is still being answered; ask again once it "
            "has arrived.",
        )
    store.move_to_end(request.cursor)
    next_frames = _keyset_frames if isinstance(cursor, KeysetCursor) else _snapshot_frames
    busy.add(request.cursor)
    try:
        frames, remaining = await ctx.services.db_call(
            next_frames,  # type: ignore[arg-type]  (each gets its own kind of cursor)
            ctx.services.blobs,
            ctx.user.id,
            request.id,
            cursor,
            _limit(ctx, request.options),
            request.options.thumbnails,
            request.cursor,
        )
    finally:
        busy.discard(request.cursor)
    if not remaining:
        store.pop(request.cursor, None)
    return frames


@route(ListTags)
async def list_tags(ctx: RequestContext, request: ListTags) -> TagList:
    rows = await ctx.services.db_call(repo.visible_tag_counts, ctx.user.id)
    return TagList(id=request.id, tags=[TagCount(name=n, count=c) for n, c in rows])
