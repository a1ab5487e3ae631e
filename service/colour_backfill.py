"""Colours for images stored without them, computed in the background after start-up.

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

Searches by colour meanwhile say how many images they could not rank yet; they learn whether
this is still running, and which images it could not compute, from
`colour_search.BackfillProgress`, which it marks complete once every image it could compute is
in the colour table. From then on a search counts nothing: an upload on this server computes
its colours before its commit, so no new image waits.
"""

from __future__ import annotations

import logging
import threading
import time

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
        return
    colour_search.backfill_progress(services)  # before the thread: searches count from now on
    stopping = threading.Event()
    thread = threading.Thread(
        target=_run, args=(services, stopping), name="vitrine-colour-backfill", daemon=True
    )
    services.extras[_KEY] = (thread, stopping)
    thread.start()


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
    """Compute and store the colours of every live image waiting for them; return how many
    were stored. Marks the progress complete when it got to the end, not when stopped or when
    it fails, so searches keep counting what still waits."""
    conn = services.db.conn
    progress = colour_search.backfill_progress(services)
    progress.complete = False
    total = repo.count_colours_pending(conn)
    if not total:
        progress.complete = True
        return 0
    log.info("colour backfill: %d images have no colours yet; computing them", total)
    t0 = last_log = time.monotonic()
    done = failed = after = 0
    while not stopping.is_set():
        rows = repo.colours_pending(conn, after, CHUNK)
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
                progress.failed = progress.failed | {image_id}
                log.warning("image %d: its colours cannot be computed: %s", image_id, exc)
        stored = repo.store_palettes(conn, palettes)
        colour_search.colour_table(services).add(conn, stored)
        done += len(stored)
        if time.monotonic() - last_log >= LOG_EVERY_S:
            last_log = time.monotonic()
            log.info("colour backfill: %d/%d images", done, total)
    # Only now is every computed image in the table: from here a search counts nothing.
    progress.complete = not stopping.is_set()
    elapsed = time.monotonic() - t0
    left = f"; {failed} could not be read or decoded" if failed else ""
    stopped = " (stopped: the next start goes on)" if stopping.is_set() else ""
    log.info(
        "colour backfill done: %d images in %.1f s (%.0f img/s)%s%s",
        done,
        elapsed,
        done / max(elapsed, 1e-9),
        left,
        stopped,
    )
    return done
