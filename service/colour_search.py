"""Search by colour: the ColourSearch route.

The request's COLOR is parsed again here with `util.colour_spec` (the shell already did, but the
server trusts no client), so a name or hex colour brings its lightness/saturation regions (brown
is not orange, pink is not red) and a bad one is refused with the same sentence the shell shows.
Ranking is `repository.colour_table` (every colour row in memory, scored with numpy; visibility
and filters checked in SQL for the candidates), which answers exactly what the SQL ranking
of `tests/colour_oracle.py` does (the tests' reference; it served requests before the table),
about twice as fast at 100k images. `start` builds the table in a background thread right
after start-up (0.35 s at 100k images warm; logged), so the first colour search does not pay
for it; a search that arrives before the build is done waits for it rather than ranking in SQL
meanwhile, since a build competing for the GIL made those searches slower than either. The
table follows uploads and deletes through the `Services.on_stored` / `on_deleted` hooks;
updates change visibility, stock and tags only, and those are read in SQL at search time.
Batches, `More` and the visibility re-check of every batch come from
`service.listings.open_ranked`, which reads thumbnails for the batch only.

Images stored under `--no-colours` enter the table only once the colour backfill
(`service.colour_backfill`) has computed their colours. Until then a search's first batch
carries `Batch.unindexed`, how many of them the viewer may see that pass the filters, as search
by image does during its backfill; without it, three searches a second after start-up answered
"7 images in all", then 24, then 30, for the same catalogue. It is counted just before the
ranking and without a lock, so it can be off by the chunk (64 images) the backfill commits in
between; once the backfill has finished it is 0 without a query, so a search then costs what
it did before. A server started with `--no-colours` answers UNAVAILABLE: it computes no
colours at all, so every image uploaded since would be missing from the results, with no
backfill to wait for.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass

from models.colours import warm_up
from protocol.catalog import Colour, ColourSearch
from protocol.errors import ErrorCode, VitrineError
from repository import colour_queries as colours_repo
from repository import images as repo
from repository.colour_table import ColourTable, count_uncomputed
from service.context import RequestContext, Services
from service.listings import Ranked, Recheck, checked_filter_tags, open_ranked
from service.registry import Frames, route
from util.colour_spec import (
    ColourQuery,
    ColourSpecError,
    LSBox,
    check_min_share,
    check_tolerance,
    hue_ranges,
    parse_colour,
)

log = logging.getLogger("vitrine.colours")

_BUILDER = "colour_table_builder"
_EXTRA = "colour_table"
_PROGRESS = "colour_backfill_progress"
_INSTALL_LOCK = threading.Lock()

NO_COLOURS = (
    "Search by colour is unavailable on this server: it was started with --no-colours, so it "
    "computes no colours, and a search would miss every image uploaded since."
)


@dataclass(slots=True)
class BackfillProgress:
    """What the colour backfill tells searches, kept here rather than in the backfill's module
    because the backfill already depends on this one for the table.

    Read without a lock: each field is replaced, never changed in place."""

    #: False from the backfill's start until it has put every waiting image it could compute
    #: into the table; searches count what still waits only while it is False.
    complete: bool = False
    #: Waiting images whose originals could not be read or decoded: never ranked in this run,
    #: so not counted as coming.
    failed: frozenset[int] = frozenset()


def backfill_progress(services: Services) -> BackfillProgress:
    """The progress of this server's colour backfill, made by its first caller (the backfill's
    `start`, before its thread runs, so a search right after start-up already counts)."""
    with _INSTALL_LOCK:
        return services.extras.setdefault(_PROGRESS, BackfillProgress())


def _waiting(services: Services) -> BackfillProgress | None:
    """The backfill's progress while it runs; None once it has finished, or when none runs."""
    progress: BackfillProgress | None = services.extras.get(_PROGRESS)
    return None if progress is None or progress.complete else progress


def colour_table(services: Services) -> ColourTable:
    """The server's colour table, installed on first use (by `start`'s build, or a search
    before it). Its hooks go in before the build reads the database, so no upload falls
    between the two."""
    table = services.extras.get(_EXTRA)
    if table is not None:
        return table
    with _INSTALL_LOCK:
        table = services.extras.get(_EXTRA)
        if table is None:
            table = ColourTable()
            services.on_stored.append(_table_stored)
            services.on_deleted.append(_table_deleted)
            services.extras[_EXTRA] = table
    return table


def start(services: Services) -> None:
    """Build the colour table in the background right after start-up, so the first colour
    search does not pay for it (0.35 s at 100,000 images); searches before it is ready wait
    for this one build. The same thread readies colour extraction's compiled kernels, so the
    first upload does not pay for them either. A `--no-colours` server builds nothing: it
    answers no search by colour."""
    if not services.config.colours:
        return

    def build() -> None:
        try:
            colour_table(services).ensure_built(services.db.conn)
        except Exception:
            log.exception("building the colour table failed; the first colour search retries")
        try:
            warm_up()
        except Exception:  # the first upload compiles them instead
            log.exception("readying the colour kernels failed")

    builder = threading.Thread(target=build, name="vitrine-colour-table", daemon=True)
    services.extras[_BUILDER] = builder
    builder.start()


def stop(services: Services, timeout: float = 20.0) -> None:
    """Wait for the start-up build: the database closes next, and closing a connection
    that a thread is still reading through is not safe."""
    builder: threading.Thread | None = services.extras.pop(_BUILDER, None)
    if builder is not None:
        builder.join(timeout)


def _table_stored(
    services: Services, conn: sqlite3.Connection, image_id: int, new: repo.NewImage
) -> None:
    table: ColourTable | None = services.extras.get(_EXTRA)
    if table is not None:
        table.add(conn, [image_id])


async def _table_deleted(services: Services, image_id: int) -> None:
    table: ColourTable | None = services.extras.get(_EXTRA)
    if table is not None:
        await services.run(table.remove, [image_id])


def colour_query(request: ColourSearch) -> tuple[ColourQuery, float, float]:
    """(query, tolerance, min share) for a request; ColourSpecError says what is wrong."""
    if request.spec is not None:
        query = parse_colour(request.spec)
    else:
        for what, low, high in (
            ("lightness", request.min_lightness, request.max_lightness),
            ("saturation", request.min_saturation, request.max_saturation),
        ):
            if low > high:  # as an upside-down price range is refused, not answered empty
                raise ColourSpecError(
                    f"the minimum {what} ({low:g}) is above the maximum ({high:g}); swap them"
                )
        box = LSBox(
            l_lo=request.min_lightness,
            l_hi=request.max_lightness,
            s_lo=request.min_saturation,
            s_hi=request.max_saturation,
        )
        bounded = box != LSBox()
        query = ColourQuery(
            hue=request.hue % 360.0,
            tolerance=request.tolerance,
            boxes=(box,) if bounded else (),
            text=f"{request.hue:g}",
        )
    return query, check_tolerance(request.tolerance), check_min_share(request.min_share)


def _ranked(
    conn: sqlite3.Connection,
    viewer: int,
    query: colours_repo.HueQuery,
    asked: Recheck,
    table: ColourTable,
    limit: int,
    waiting: BackfillProgress | None,
) -> Ranked:
    """The best `limit` ids with their scores and matching colours (in the executor), under
    the filters `asked` (those its later batches are re-checked with), and, while the backfill
    runs (`waiting`), how many images that pass could not be ranked yet: counted first, so an
    image the backfill adds in between is counted and ranked rather than neither."""
    filters = asked.resolve(conn)
    if filters.impossible:
        return Ranked([], {}, {})  # a tag nobody has used: nothing carries it
    unindexed = 0
    if waiting is not None:
        unindexed = count_uncomputed(conn, viewer, filters, waiting.failed)
    table.ensure_built(conn)
    hits = table.rank(conn, viewer, query, filters, limit=limit)
    scores = {h.image_id: round(h.score, 6) for h in hits}
    matches = {
        h.image_id: Colour(
            r=h.rgb[0],
            g=h.rgb[1],
            b=h.rgb[2],
            hue=h.hue,
            saturation=h.saturation,
            lightness=h.lightness,
            share=h.share,
        )
        for h in hits
    }
    return Ranked([h.image_id for h in hits], scores, matches, unindexed)


@route(ColourSearch)
async def colour_search(ctx: RequestContext, request: ColourSearch) -> Frames:
    try:
        query, tolerance, min_share = colour_query(request)
        ranges = hue_ranges(query.hue, tolerance)
    except ColourSpecError as exc:
        raise VitrineError(ErrorCode.BAD_REQUEST, str(exc)) from None
    if not ctx.services.config.colours:
        raise VitrineError(ErrorCode.UNAVAILABLE, NO_COLOURS)
    flt = request.filters
    tags = checked_filter_tags(flt)
    store_query = colours_repo.HueQuery(
        hue=query.hue,
        tolerance=tolerance,
        ranges=ranges,
        min_share=min_share,
        boxes=query.boxes,
    )
    table = colour_table(ctx.services)
    viewer = ctx.user.id
    asked = Recheck.of(tags, flt)
    return await open_ranked(
        ctx,
        request.id,
        request.options,
        lambda conn, limit: _ranked(
            conn, viewer, store_query, asked, table, limit, _waiting(ctx.services)
        ),
        asked,
        keep=colours_repo.MAX_RESULTS,
    )
