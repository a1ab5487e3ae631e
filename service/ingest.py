"""The upload pipeline: cheap dedup first, one decode, blobs durable, then one DB transaction.

Order of work for one upload, cheapest first, so re-sending a folder that is already stored
costs a keyed hash and one indexed lookup per file (no decoding at all):

1. name the content (HMAC under the blob key) and look it up: the owner already has it ->
   report that id; another row holds it -> reuse its thumbnail and analysis, no decode;
2. otherwise decode ONCE in the executor (format whitelist, byte and pixel limits, JPEG draft
   mode at the thumbnail's size), make the thumbnail and the colour palette from it;
3. run the async analysers (the embedding step plugs in here, batched across uploads);
4. write original and thumbnail to the blob store (each fsynced, renamed);
5. commit row + tags + FTS + colours + embedding in one transaction;
6. run the post-commit hooks (`Services.on_stored`: the vector index adds the new vector).

A SIGKILL between 4 and 5 leaves blobs no row names; the start-up sweep removes them, and
re-running the upload repeats 4 (a no-op for blobs already there) and 5.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
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

#: ImageRejected reasons that mean "too big" rather than "not an image we take".
_TOO_LARGE_REASONS = frozenset({imaging.TOO_LARGE, imaging.TOO_MANY_PIXELS})


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
    thumbnail side (256), enough for a 224x224 model input; other formats are full size.
    """

    blob: str
    data: bytes
    decoded: imaging.DecodedImage
    thumbnail: Image.Image
    thumbnail_bytes: bytes
    palette: list[repo.ColourRecord] = field(default_factory=list)
    #: Set by an analyser: (model name, float32 vector bytes).
    embedding: tuple[str, bytes] | None = None
    #: Free room for analysers that need to pass something along.
    extras: dict[str, Any] = field(default_factory=dict)


#: An upload step that runs after decoding and before the blobs and row are written. It must
#: not block the event loop (await an executor or a batcher) and fills fields of `Prepared`.
#: A failing analyser is logged and skipped: the upload is kept and can be analysed later.
Analyser = Callable[[Services, Prepared], Awaitable[None]]


def rejection_error(exc: imaging.ImageRejected) -> VitrineError:
    """The wire error for a refused file; `details[0]` is the stable reason code."""
    code = ErrorCode.TOO_LARGE if exc.reason in _TOO_LARGE_REASONS else ErrorCode.UNSUPPORTED_IMAGE
    return VitrineError(code, exc.message, [exc.reason])


def prepare(blob: str, data: bytes, config: ServerConfig) -> Prepared:
    """All the CPU work of a new upload, in one executor call (decode, thumbnail, palette)."""
    decoded = imaging.decode_image(
        data,
        max_bytes=config.max_image_bytes,
        max_pixels=config.max_image_pixels,
        target=config.thumbnail_side,
    )
    thumbnail, thumbnail_bytes = imaging.make_thumbnail(decoded.image, config.thumbnail_side)
    palette = [
        repo.ColourRecord(c.r, c.g, c.b, c.hue, c.saturation, c.lightness, c.share)
        for c in (extract_palette(thumbnail) if config.colours else [])
    ]
    return Prepared(blob, data, decoded, thumbnail, thumbnail_bytes, palette)


def _store_blobs(blobs: BlobStore, prepared: Prepared) -> str:
    """Original and thumbnail, durable before any row names them; returns the thumbnail's name."""
    blobs.put(prepared.data)
    return blobs.put(prepared.thumbnail_bytes)


async def ingest(services: Services, upload: Upload) -> tuple[int, bool]:
    """Store one upload; return (image id, created). Raises VitrineError for refused files."""
    config = services.config
    size = len(upload.data)
    if size == 0 or size > config.max_image_bytes:
        # Refused before hashing: the precheck message is the same one decode would give.
        try:
            imaging.precheck(upload.data[:1024], size, max_bytes=config.max_image_bytes)
        except imaging.ImageRejected as exc:
            raise rejection_error(exc) from None
    blobs = services.blobs
    if size < 64 * 1024:
        blob = blobs.name_for(upload.data)
    else:
        blob = await services.run(blobs.name_for, upload.data)
    mine, known = await services.db_call(repo.dedup_lookup, upload.owner_id, blob)
    if mine is not None:
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
    if known is not None and await services.run(_both_exist, blobs, blob, known.thumb_blob):
        # The same bytes are stored for someone else: share blobs and analysis, decode nothing.
        new.thumb_blob = known.thumb_blob
        new.format, new.width, new.height = known.format, known.width, known.height
        new.copy_analysis_from = known.image_id
    else:
        try:
            prepared = await services.run(prepare, blob, upload.data, config)
        except imaging.ImageRejected as exc:
            raise rejection_error(exc) from None
        for analyser in services.analysers:
            try:
                await analyser(services, prepared)
            except Exception:
                log.exception("upload analyser %r failed; the image is kept without it", analyser)
        new.thumb_blob = await services.run(_store_blobs, blobs, prepared)
        new.format = prepared.decoded.format
        new.width, new.height = prepared.decoded.width, prepared.decoded.height
        new.palette = prepared.palette
        new.embedding = prepared.embedding
    try:
        image_id = await services.db_call(repo.insert_image, new)
    except repo.DuplicateImage as dup:
        return dup.image_id, False
    for hook in services.on_stored:
        try:
            await hook(services, image_id, new)
        except Exception:  # the row is committed: a failing index update must not undo it
            log.exception("post-upload hook %r failed for image %d", hook, image_id)
    return image_id, True


def _both_exist(blobs: BlobStore, blob: str, thumb: str) -> bool:
    return blobs.exists(blob) and blobs.exists(thumb)
