"""The upload pipeline: cheap dedup first, one decode, blobs durable, then one DB transaction.

Order of work for one upload, cheapest first, so re-sending a folder that is already stored
costs a keyed hash and one indexed lookup per file (no decoding at all):

1. name the content (HMAC under the blob key) and look it up, in one executor trip: the owner
   already has it -> report that id; another row holds it -> reuse its thumbnail and analysis,
   no decode;
2. otherwise decode ONCE in the executor (format whitelist, byte and pixel limits, JPEG draft
   mode at the thumbnail's size). From that same worker thread: hand each analyser's work (the
   embedding) to its batcher, make the thumbnail, hand the blob writes to the I/O lane, and
   make the colour palette while those run;
3. wait for those (the blobs are durable: each fsynced, renamed);
4. commit row + tags + FTS + colours + embedding in one transaction;
5. in the same trip, run the post-commit hooks (`Services.on_stored`: the vector index and the
   colour table add the new image).

Every hop between the event loop and a thread costs context switches and GIL hand-offs (perf
put 17% of the server's CPU in the kernel during bulk ingest, much of it switching), so a new
upload makes three trips to the executor (lookup, prepare, insert) rather than the eight it
used to. Measured, that alone did not move ingest beyond the run-to-run noise (about 5%):
docs/architecture.md, "Bulk ingest".

A SIGKILL between 2 and 4 leaves blobs no row names; the start-up sweep removes them, and
re-running the upload writes them again (a no-op for blobs already there intact) and commits. An
upload that fails there without a crash (its insert refused: "database or disk is full") removes
the blobs it wrote at once, those that no row names and no other upload in flight holds
(`BlobsInFlight`), so that a full disk gets its space back without a restart.

A stored blob that is missing or damaged (truncated, bit-rotted) is never shared as it is: the
upload takes the full path of step 2, whose writes replace it, so re-uploading a good copy
repairs every row naming it. That holds for the owner's own live image too (step 1 checks its
original's size and reads and authenticates its thumbnail before reporting it present), which
is the repair a user tries first; an original of the right size that has rotted is found by
`--check`, not by the owner's re-send (see `_name_and_look_up`). A thumbnail is repaired only
if it is made again byte for byte (see `_both_intact`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from models.colours import extract_palette
from protocol.errors import ErrorCode, VitrineError
from repository import images as repo
from repository.blobstore import BlobStore
from service.context import ServerConfig, Services
from util import images as imaging

log = logging.getLogger("vitrine.ingest")


@dataclass(slots=True)
class Upload:
    """A validated upload request (tags already normalised, file name already made harmless)."""

    owner_id: int
    data: bytes
    filename: str
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    price_cents: int = 0
    quantity: int = 0
    private: bool = False


@dataclass(slots=True)
class Prepared:
    """An upload decoded once; every analysis step reads these pixels instead of decoding again.

    `decoded.image` is the picture at draft scale: for a JPEG both sides are at least the
    thumbnail side (256), enough for a 224x224 model input; other formats are full size. It is
    there only while `_prepare_and_start` runs, and None once the upload waits for its
    embedding and blob writes: a 40 Mpx PNG of 5 KB decodes to 120 MB, and with every upload in
    flight holding its pixels, 32 pipelined ones held 4 GB. `format`, `width` and `height`
    stay.
    """

    data: bytes
    decoded: imaging.DecodedImage | None
    format: str = ""
    width: int = 0
    height: int = 0
    #: Made after the analysers have started (see `_prepare_and_start`).
    thumbnail: Image.Image | None = None
    thumbnail_bytes: bytes = b""
    palette: list[repo.ColourRecord] = field(default_factory=list)
    #: Set by an analyser: (model name, float32 vector bytes).
    embedding: tuple[str, bytes] | None = None
    #: The thumbnail's blob name, held in `BlobsInFlight` with the original's from before
    #: either is written.
    thumb_blob: str = ""


@dataclass(frozen=True, slots=True)
class Analyser:
    """An upload step beside the decode (the embedding plugs in here), in three parts so that
    its heavy work starts in the worker thread that decoded the picture, without another trip
    through the event loop.

    A failing analyser is logged and skipped: the upload is kept and can be analysed later.
    """

    #: On the event loop, before decoding: whether to run for this upload (the embedding waits
    #: here, bounded, for a model that is still loading).
    ready: Callable[[Services], Awaitable[bool]]
    #: In the decoding worker thread, right after decoding: hand the work on (to a batcher or a
    #: pool) and return its future. It must not block the worker, and must take what it needs
    #: of `Prepared.decoded` now: the pixels are dropped once the worker is done.
    start: Callable[[Services, Prepared], Future[Any]]
    #: On the event loop, with the future's result: fill fields of `Prepared`.
    finish: Callable[[Services, Prepared, Any], None]


class BlobsInFlight:
    """Blob names that uploads in flight write, or wrote, for a row they have not committed.

    An upload whose insert fails removes the blobs it wrote, but a blob is shared by every row
    of the same bytes (and thumbnails of the same pixels): another row may name it, or a
    concurrent upload of the same bytes may have found it already written (`BlobStore.put` is
    then a no-op) and be about to commit a row naming it. An upload holds its names here from
    before it writes them until its row is committed or given up, and a failed one removes a
    name only when, under the lock every holder takes, no other upload holds it and no
    committed row names it: whoever holds it later writes it again. (The start-up sweep needs
    none of this: no upload is in flight then.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def hold(self, names: Iterable[str]) -> None:
        with self._lock:
            self._held.update(names)

    def release(self, names: Iterable[str]) -> None:
        """For an upload that committed its row (or one that never will)."""
        with self._lock:
            self._release(names)

    def release_and_remove(
        self, conn: sqlite3.Connection, blobs: BlobStore, names: Iterable[str]
    ) -> list[str]:
        """For an upload that failed after writing `names`: release them and remove those no
        row names and nobody else holds. Returns the names removed. Never raises once the
        names are released: a blob it could not remove is logged and left to the next start."""
        removed = []
        with self._lock:
            for name in self._release(names):
                try:
                    if self._held[name] or _named_by_a_row(conn, name):
                        continue
                    if blobs.delete(name):
                        removed.append(name)
                except (sqlite3.Error, OSError):
                    log.exception("could not remove blob %s of a failed upload", name)
        return removed

    def _release(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        self._held.subtract(names)
        self._held += Counter()  # drops the names no one holds any more
        return list(dict.fromkeys(names))


def _named_by_a_row(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM images WHERE blob = ? OR thumb_blob = ? LIMIT 1", (name, name)
    ).fetchone()
    return row is not None


def blobs_in_flight(services: Services) -> BlobsInFlight:
    """This server's one `BlobsInFlight` (in `Services.extras`, made on first use)."""
    found = services.extras.get("blobs_in_flight")
    if found is None:
        found = services.extras.setdefault("blobs_in_flight", BlobsInFlight())
    return found


def rejection_error(exc: imaging.ImageRejected) -> VitrineError:
    """The wire error for a refused file; `details[0]` is the stable reason code."""
    code = ErrorCode.TOO_LARGE if exc.too_large else ErrorCode.UNSUPPORTED_IMAGE
    return VitrineError(code, exc.message, [exc.reason])


def _refused(upload: Upload, exc: imaging.ImageRejected) -> VitrineError:
    """Log why a file was refused, then make its wire error. The request's own log line says
    only `outcome=UNSUPPORTED_IMAGE`; without the reason code and the file's name the operator
    cannot tell a user's truncated download from a decoder regression. The name is the user's
    text: %r, so a newline or an escape in it cannot forge a log line or drive a terminal."""
    log.info(
        "upload of %r by user %d refused: reason=%s bytes=%d",
        upload.filename,
        upload.owner_id,
        exc.reason,
        len(upload.data),
    )
    return rejection_error(exc)


def _prepare_and_start(
    services: Services,
    blob: str,
    data: bytes,
    analysers: list[Analyser],
    named: frozenset[str] = frozenset(),
) -> tuple[Prepared, Future[str], list[tuple[Analyser, Future[Any]]]]:
    """All the CPU work of a new upload, in one executor call: decode once, start the
    analysers, make the thumbnail and start the blob writes, then the palette. The blob names
    (`blob`, the original's, and the thumbnail's) are held in `BlobsInFlight` from before they
    are written: the caller releases them.

    The analysers start first because the embedding batcher is the slowest stage of a bulk
    upload: its model runs while this thread goes on with the thumbnail and the palette.
    """
    config = services.config
    decoded = decode_upload(config, data)
    prepared = Prepared(data, decoded, decoded.format, decoded.width, decoded.height)
    started = []
    for analyser in analysers:
        try:
            started.append((analyser, analyser.start(services, prepared)))
        except Exception:
            log.exception("upload analyser %r failed; the image is kept without it", analyser)
    prepared.thumbnail, prepared.thumbnail_bytes = imaging.make_thumbnail(
        decoded.image, config.thumbnail_side
    )
    prepared.thumb_blob = services.blobs.name_for(prepared.thumbnail_bytes)
    in_flight = blobs_in_flight(services)
    in_flight.hold((blob, prepared.thumb_blob))
    try:
        pool = services.io_executor or services.executor
        written = pool.submit(_store_blobs, services.blobs, blob, prepared, named)
        if config.colours:
            prepared.palette = _palette_records(prepared.thumbnail)
    except BaseException:
        # This upload will name nothing: what it may still write is left for the next start.
        in_flight.release((blob, prepared.thumb_blob))
        raise
    prepared.decoded = prepared.thumbnail = None  # what is left to wait for needs no pixels
    return prepared, written, started


def _palette_records(thumbnail: Image.Image) -> list[repo.ColourRecord]:
    return [
        repo.ColourRecord(c.r, c.g, c.b, c.hue, c.saturation, c.lightness, c.share)
        for c in extract_palette(thumbnail)
    ]


def palette_of(config: ServerConfig, data: bytes, stored: bool = False) -> list[repo.ColourRecord]:
    """The palette a fresh upload of `data` gets: decoded and thumbnailed the same way, so the
    colours equal those of any other upload of these bytes, whenever they are computed.
    `stored`: the bytes are an original already kept (the colour backfill's), decoded under
    `decode_stored`'s looser limits."""
    decoded = (decode_stored if stored else decode_upload)(config, data)
    thumbnail, _ = imaging.make_thumbnail(decoded.image, config.thumbnail_side)
    return _palette_records(thumbnail)


def decode_stored(config: ServerConfig, data: bytes) -> imaging.DecodedImage:
    """An original already stored, decoded as its upload was, for the backfills. Under the
    looser of today's limits and the defaults: the picture was accepted once, and a limit
    lowered since must not make it unreadable."""
    return imaging.decode_image(
        data,
        max_bytes=max(config.max_image_bytes, imaging.DEFAULT_MAX_BYTES),
        max_pixels=max(config.max_image_pixels, imaging.DEFAULT_MAX_PIXELS),
        target=config.thumbnail_side,
    )


def decode_upload(config: ServerConfig, data: bytes) -> imaging.DecodedImage:
    """Bytes sent by a client (an upload, or a query photo), under this server's limits."""
    return imaging.decode_image(
        data,
        max_bytes=config.max_image_bytes,
        max_pixels=config.max_image_pixels,
        target=config.thumbnail_side,
    )


async def _finish_analysers(
    services: Services, prepared: Prepared, started: list[tuple[Analyser, Future[Any]]]
) -> None:
    for analyser, future in started:
        try:
            analyser.finish(services, prepared, await asyncio.wrap_future(future))
        except Exception:
            log.exception("upload analyser %r failed; the image is kept without it", analyser)


def _store_blobs(blobs: BlobStore, blob: str, prepared: Prepared, named: frozenset[str]) -> str:
    """Original and thumbnail, durable before any new row names them, under the names the
    upload already computed; returns the thumbnail's name. `named` holds the names that stored
    rows already hold, so that a missing one is logged as repaired (`BlobStore.put`)."""
    blobs.put(prepared.data, blob, named=blob in named)
    thumb = prepared.thumb_blob
    return blobs.put(prepared.thumbnail_bytes, thumb, named=thumb in named)


async def ingest(services: Services, upload: Upload) -> tuple[int, bool]:
    """Store one upload; return (image id, created). Raises VitrineError for refused files."""
    config = services.config
    size = len(upload.data)
    if size == 0 or size > config.max_image_bytes:
        # Refused before hashing: the precheck message is the same one decode would give.
        try:
            imaging.precheck(upload.data[:1024], size, max_bytes=config.max_image_bytes)
        except imaging.ImageRejected as exc:
            raise _refused(upload, exc) from None
    blobs = services.blobs
    blob, mine, known, repair = await services.db_call(_name_and_look_up, blobs, upload)
    if mine is not None and not repair:
        return mine, False

    new = repo.NewImage(
        owner_id=upload.owner_id,
        blob=blob,
        thumb_blob="",
        filename=upload.filename,
        title=upload.title,
        description=upload.description,
        price_cents=upload.price_cents,
        quantity=upload.quantity,
        private=upload.private,
        format="",
        width=0,
        height=0,
        byte_size=size,
        tags=upload.tags,
    )
    if repair:
        # The owner's own image, damaged: only the full path writes (and so repairs) its blobs.
        # Its insert finds that image (`DuplicateImage`), and `_commit` reports it as present.
        # No analyser, as there is no row to keep their work, unless the owner deleted the image
        # since the lookup: a new row is then inserted, with its colours as any upload's (the
        # palette does not depend on the analysers) and without an embedding, which the
        # backfill makes (`index_stored` wakes it), as for an upload stored before the model.
        try:
            prepared, written, started = await services.run(
                _prepare_and_start, services, blob, upload.data, [], repair
            )
        except imaging.ImageRejected as exc:
            raise _refused(upload, exc) from None
        return await _write_and_commit(services, upload, new, prepared, written, started)
    if known is not None and await services.run(_both_intact, blobs, blob, known.thumb_blob):
        # The same bytes are stored for someone else: share blobs and analysis, decode nothing.
        new.thumb_blob = known.thumb_blob
        new.format, new.width, new.height = known.format, known.width, known.height
        new.copy_analysis_from = known.image_id
        if known.colours_pending and not config.colours:
            new.colours_pending = True
        elif known.colours_pending or (known.colours_outdated and config.colours):
            # That row was stored under --no-colours (extract rather than copy nothing), or
            # its colours are an older rule's (extract rather than copy what is due to go).
            try:
                new.palette = await services.run(palette_of, config, upload.data)
                new.palette_computed = True
            except imaging.ImageRejected as exc:  # the limits may have changed since
                raise _refused(upload, exc) from None
    else:
        analysers = [a for a in services.analysers if await a.ready(services)]
        named = frozenset() if known is None else frozenset((blob, known.thumb_blob))
        try:
            prepared, written, started = await services.run(
                _prepare_and_start, services, blob, upload.data, analysers, named
            )
        except imaging.ImageRejected as exc:
            raise _refused(upload, exc) from None
        return await _write_and_commit(services, upload, new, prepared, written, started)
    return await _commit(services, new)


async def _write_and_commit(
    services: Services,
    upload: Upload,
    new: repo.NewImage,
    prepared: Prepared,
    written: Future[str],
    started: list[tuple[Analyser, Future[Any]]],
) -> tuple[int, bool]:
    """The rest of a new upload, whose blob names `_prepare_and_start` holds: released once the
    row is committed, and if it never will be, the blobs this upload wrote are removed
    (`BlobsInFlight.release_and_remove`) rather than left on a disk that may be full until
    the next start. A cancelled upload keeps its hold: its write or insert may still be
    running in its thread, and a row could yet name the blobs; the next start sweeps them."""
    held = (new.blob, prepared.thumb_blob)
    in_flight = blobs_in_flight(services)
    try:
        await _finish_analysers(services, prepared, started)
        try:
            new.thumb_blob = await asyncio.wrap_future(written)
        except OSError as exc:
            raise _not_written(upload, new.blob, exc) from None
        new.format, new.width, new.height = prepared.format, prepared.width, prepared.height
        new.palette = prepared.palette
        new.colours_pending = not services.config.colours
        new.embedding = prepared.embedding
        result = await _commit(services, new)
    except asyncio.CancelledError:
        raise
    except BaseException:
        await _remove_unnamed(services, in_flight, upload, held)
        raise
    in_flight.release(held)
    return result


async def _commit(services: Services, new: repo.NewImage) -> tuple[int, bool]:
    try:
        image_id = await services.db_call(_insert_and_announce, services, new)
    except repo.DuplicateImage as dup:
        return dup.image_id, False
    return image_id, True


async def _remove_unnamed(
    services: Services, in_flight: BlobsInFlight, upload: Upload, held: tuple[str, str]
) -> None:
    """Give back the space of a failed upload's blobs; a failure here must not replace the
    upload's own error, and what is left the next start sweeps."""
    try:
        removed = await services.db_call(in_flight.release_and_remove, services.blobs, held)
    except Exception:  # it never ran (it does not raise): release here, remove nothing
        in_flight.release(held)
        log.exception("could not remove the blobs of a failed upload of %r", upload.filename)
        return
    if removed:
        log.warning(
            "upload of %r by user %d not stored: removed the %d blobs it wrote",
            upload.filename,
            upload.owner_id,
            len(removed),
        )


def _not_written(upload: Upload, blob: str, exc: OSError) -> VitrineError:
    """Log a blob write that failed (a full disk, a directory that is not writable) with what
    the operator needs to find it; the client learns only that its file was not stored, and
    why in a word when that word helps (a full disk will not empty itself on a retry)."""
    log.error(
        "upload of %r by user %d (blob %s) not stored: the blobs could not be written: %s",
        upload.filename,
        upload.owner_id,
        blob,
        exc,
    )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "the server's storage is full"
    else:
        reason = "the server could not write to its storage"
    return VitrineError(
        ErrorCode.INTERNAL,
        f"The image was not stored: {reason}. The error has been logged for the server's operator.",
    )


def _insert_and_announce(conn: sqlite3.Connection, services: Services, new: repo.NewImage) -> int:
    """Commit the row, then run the post-commit hooks in the same worker (`StoredHook`)."""
    image_id = repo.insert_image(conn, new)
    for hook in services.on_stored:
        try:
            hook(services, conn, image_id, new)
        except Exception:  # the row is committed: a failing index update must not undo it
            log.exception("post-upload hook %r failed for image %d", hook, image_id)
    return image_id


def _name_and_look_up(
    conn: sqlite3.Connection, blobs: BlobStore, upload: Upload
) -> tuple[str, int | None, repo.StoredContent | None, frozenset[str]]:
    """The content's blob name, `repo.dedup_lookup` of it, and the names of the blobs of the
    owner's own image of it when they need repairing (empty when they do not, or there is no
    such image), in one trip to the executor.

    The owner re-uploading a photo they still have is the repair a user is most likely to try
    when their image will not show, and reporting it present left it broken. So that image's
    thumbnail (small) is read and authenticated here, and its original checked by its size
    only (`BlobStore.sized_for`): re-syncing a folder of 4,000 camera originals of 8 to 25 MB
    must not read and decrypt tens of GB. A truncated or missing original, the damage found so far,
    shows in its size; an original of the right size that has rotted is left to `--check`,
    which reads every blob (and to another user's upload of it, which checks in full:
    `_both_intact`). docs/operations.md, "Start-up refusals", has the costs."""
    blob = blobs.name_for(upload.data)
    mine, known = repo.dedup_lookup(conn, upload.owner_id, blob)
    repair: frozenset[str] = frozenset()
    if mine is not None:
        row = conn.execute("SELECT thumb_blob FROM images WHERE id = ?", (mine,)).fetchone()
        if row is not None and not (
            blobs.sized_for(blob, len(upload.data)) and blobs.intact(row[0])
        ):
            repair = frozenset((blob, row[0]))
    return blob, mine, known, repair


def _both_intact(blobs: BlobStore, blob: str, thumb: str) -> bool:
    """Whether a new row may share these blobs as they are. Existence was not enough: a
    truncated original then stayed broken for every later upload of the good bytes. When one
    is missing or damaged the upload takes the full path, which holds both names
    (`BlobsInFlight`), makes the thumbnail again and writes both (`BlobStore.put` replaces a
    damaged file, logging it), so the rows already naming them read again too.

    A damaged thumbnail is repaired only when the thumbnail made again is byte-identical, as
    its name is the keyed hash of its bytes. After a Pillow upgrade (or any change in how
    thumbnails are made) it can differ: the upload then writes a new thumbnail under a new name,
    and the older rows keep naming the damaged one and list without a picture."""
    return blobs.intact(blob) and blobs.intact(thumb)
