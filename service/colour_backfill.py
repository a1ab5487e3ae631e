"""Colours for images stored without them (or with an older rule's), computed in the background
after start-up.

A server run with `--no-colours` stores its uploads with the flag `colours_pending` and no
colours. Without this, those images would stay out of search by colour for good once the shop
turned colours on. A server that extracts colours therefore starts one thread that computes
them, a chunk at a time, and logs its progress as the embedding backfill does. Searches and
uploads go on meanwhile.

The palette comes from the original, decoded and thumbnailed exactly as at upload
(`service.ingest.palette_of`), not from the stored thumbnail: that is a re-encoded JPEG
whose colours differ slightly, and an image's colours must not depend on when they were
computed (another owner's upload of the same bytes copies them).

An original that cannot be read or decoded is logged and left waiting: the next start tries
again, and `server.py --check` counts what still waits.

It also computes again the colours an older rule made (`colours_outdated`: schema v12 marked
every stored palette when extraction changed in ways a stored palette cannot show). Those
keep their old colours, found by searches and shown by listings, until the new ones replace
them in one transaction; that pass comes after the missing ones, which no search can rank.

Searches by colour meanwhile say how many images they could not rank yet; they learn whether
this is still running, and which images it could not compute, from
`colour_search.BackfillProgress`, which it marks complete once every image it could compute is
in the colour table. From then on a search counts nothing: an upload on this server computes
its colours before its commit, so no new image waits.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from repository import images as repo
from repository.blobstore import BlobError
from service import colour_search
from service.context import Services
from service.ingest import palette_of
from util import images as imaging

log = logging.getLogger("vitrine.colours")

#: Images computed per transaction: one commit per chunk, not per image, and a chunk is small
#: enough (~0.3 s) that a stop never waits long for it.
CHUNK = 64
#: Seconds between progress lines.
LOG_EVERY_S = 10.0

_KEY = "colour_backfill"


def start(services: Services) -> None:
    """Begin computing missing colours in the background, when this server extracts colours."""
    if not services.config.colours:
        _say_what_waits(services)
        return
    colour_search.backfill_progress(services)  # before the thread: searches count from now on
    stopping = threading.Event()
    thread = threading.Thread(
        target=_run, args=(services, stopping), name="vitrine-colour-backfill", daemon=True
    )
    services.extras[_KEY] = (thread, stopping)
    thread.start()


def _say_what_waits(services: Services) -> None:
    """A server run with `--no-colours` computes nothing, so say once what waits for a start
    with colours: otherwise an upgrade's marks would wait without a word."""
    conn = services.db.conn
    missing, outdated = repo.count_colours_pending(conn), repo.count_colours_outdated(conn)
    if missing or outdated:
        log.info(
            "colours: %d images have none computed and %d have an older rule's (shown and "
            "kept meanwhile); a start without --no-colours computes them",
            missing,
            outdated,
        )


def stop(services: Services, timeout: float = 20.0) -> None:
    """Stop after the chunk in hand: the database closes next, and closing a connection that a
    thread is still writing through is not safe. What is not done waits for the next start."""
    entry: tuple[threading.Thread, threading.Event] | None = services.extras.pop(_KEY, None)
    if entry is not None:
        thread, stopping = entry
        stopping.set()
        thread.join(timeout)


def _run(services: Services, stopping: threading.Event) -> None:
    try:
        backfill(services, stopping)
    except Exception:
        log.exception("the colour backfill failed; the next start tries again")


def backfill(services: Services, stopping: threading.Event) -> int:
    """Compute the colours of every live image waiting for them, then compute again those an
    older rule made (`colours_outdated`, schema v12); return how many were stored.

    The missing ones go first: no search can rank them, and searches count them until this
    marks the progress complete, which it does when it got to the end of them, not when
    stopped or when it fails. Outdated ones are ranked by their old colours meanwhile, and one
    whose original cannot be read keeps them."""
    conn = services.db.conn
    progress = colour_search.backfill_progress(services)
    progress.complete = False
    total = repo.count_colours_pending(conn)
    done = 0
    if total:
        log.info("colour backfill: %d images have no colours yet; computing them", total)
        done = _run_pass(
            services, stopping, "colour backfill", total, repo.colours_pending,
            repo.store_palettes, progress,
        )  # fmt: skip
    # Only now is every computed image in the table: from here a search counts nothing.
    progress.complete = not stopping.is_set()
    outdated = 0 if stopping.is_set() else repo.count_colours_outdated(conn)
    if outdated:
        log.info(
            "colour recompute: %d images' colours were computed by an older rule; computing "
            "them again (they keep their current ones until then)",
            outdated,
        )
        done += _run_pass(
            services, stopping, "colour recompute", outdated, repo.colours_outdated,
            repo.replace_palettes, None,
        )  # fmt: skip
    return done


def _run_pass(
    services: Services,
    stopping: threading.Event,
    name: str,
    total: int,
    chunk_after: Callable[[sqlite3.Connection, int, int], list[tuple[int, str]]],
    store: Callable[[sqlite3.Connection, dict[int, list[repo.ColourRecord]]], list[int]],
    progress: colour_search.BackfillProgress | None,
) -> int:
    """One pass over the images `chunk_after` lists, a chunk per transaction; `progress`
    learns which images cannot be computed (None: they keep colours a search can rank)."""
    conn = services.db.conn
    t0 = last_log = time.monotonic()
    done = failed = after = 0
    while not stopping.is_set():
        rows = chunk_after(conn, after, CHUNK)
        if not rows:
            break
        after = rows[-1][0]
        palettes: dict[int, list[repo.ColourRecord]] = {}
        for image_id, blob in rows:
            if stopping.is_set():
                break
            try:
                original = services.blobs.get(blob)
                palettes[image_id] = palette_of(services.config, original, stored=True)
            except (imaging.ImageRejected, BlobError, OSError) as exc:
                failed += 1
                if progress is not None:
                    progress.failed = progress.failed | {image_id}
                kept = "" if progress is not None else " (it keeps its current ones)"
                log.warning("image %d: its colours cannot be computed%s: %s", image_id, kept, exc)
        stored = store(conn, palettes)
        colour_search.colour_table(services).add(conn, stored)
        done += len(stored)
        if time.monotonic() - last_log >= LOG_EVERY_S:
            last_log = time.monotonic()
            log.info("%s: %d/%d images", name, done, total)
    elapsed = time.monotonic() - t0
    left = f"; {failed} could not be read or decoded" if failed else ""
    stopped = " (stopped: the next start goes on)" if stopping.is_set() else ""
    log.info(
        "%s done: %d images in %.1f s (%.0f img/s)%s%s",
        name,
        done,
        elapsed,
        done / max(elapsed, 1e-9),
        left,
        stopped,
    )
    return done
