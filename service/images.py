"""Image requests: upload, update, delete, fetch one, fetch several (for carts).

Permission rule, the same for every path: a live public image, or one's own, can be seen; a
private image of someone else answers NOT_FOUND exactly like a missing id, so its existence
does not leak, to the admin too. Changing or deleting a visible image needs its owner or an
admin (FORBIDDEN otherwise); only the owner may change its visibility. The write repeats the
visibility rule, so an owner who makes an image private while an admin edits it wins.
"""

from __future__ import annotations

import logging
import sqlite3

from protocol.catalog import (
    Colour,
    DeleteImage,
    GetImage,
    GetImages,
    ImageDetails,
    Images,
    ImageSummary,
    ImageUpdated,
    UpdateImage,
    Uploaded,
    UploadImage,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_QUANTITY, MAX_TAGS, MAX_TITLE_CHARS
from protocol.messages import Ok
from repository import images as repo
from repository.blobstore import BlobError, BlobStore
from service.context import RequestContext
from service.ingest import Upload, ingest
from service.registry import route
from util import catalogue_text
from util.filenames import display_name

log = logging.getLogger("vitrine.images")

# --- tags and text ------------------------------------------------------------------------------


def normalise_tags(raw: list[str]) -> list[str]:
    """util.catalogue_text's rule, refusals answered BAD_REQUEST."""
    try:
        return catalogue_text.normalise_tags(raw)
    except catalogue_text.TextRefused as exc:
        raise VitrineError(ErrorCode.BAD_REQUEST, str(exc)) from None


def _clean_text(text: str, what: str) -> str:
    try:
        return catalogue_text.clean_text(text, what)
    except catalogue_text.TextRefused as exc:
        raise VitrineError(ErrorCode.BAD_REQUEST, str(exc)) from None


def _upload_title(title: str, filename: str) -> str:
    """Every image has a title to show and search: a blank one (nothing visible, see
    `catalogue_text.is_blank`) becomes the file's stem, which is what the shell sends when none
    is given."""
    cleaned = _clean_text(title, "title")
    if not catalogue_text.is_blank(cleaned):
        return cleaned
    stem = filename.rsplit(".", 1)[0] if "." in filename.lstrip(".") else filename
    stem = stem.strip()[:MAX_TITLE_CHARS]
    return filename[:MAX_TITLE_CHARS] if catalogue_text.is_blank(stem) else stem


def _new_title(title: str | None) -> str | None:
    if title is None:
        return None
    cleaned = _clean_text(title, "title")
    if catalogue_text.is_blank(cleaned):  # zero-width characters alone show as nothing
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "A title cannot be blank: give one, or leave the title out to keep the current one.",
        )
    return cleaned


# --- wire shapes --------------------------------------------------------------------------------


def summary(record: repo.ImageRecord, thumbnail: bytes | None = None) -> ImageSummary:
    return ImageSummary(
        id=record.id,
        title=record.title,
        description=record.description,
        filename=record.filename,
        tags=list(record.tags),
        price_cents=record.price_cents,
        quantity=record.quantity,
        owner=record.owner,
        visibility="private" if record.private else "public",
        created_at=record.created_at,
        width=record.width,
        height=record.height,
        palette=[
            Colour(
                r=c.r,
                g=c.g,
                b=c.b,
                hue=c.hue,
                saturation=c.saturation,
                lightness=c.lightness,
                share=c.share,
            )
            for c in record.palette
        ],
        colours_pending=record.colours_pending,
        thumbnail=thumbnail,
    )


#: Thumbnails already logged as unusable in this run (bounded: forgotten all at once when full).
_reported_thumbnails: set[str] = set()
_MAX_REPORTED = 10_000


def read_thumbnails(blobs: BlobStore, records: list[repo.ImageRecord]) -> list[bytes | None]:
    """Decrypt the thumbnails of one batch (run in the executor). One that cannot be shown
    (missing, damaged, or unreadable on disk) is left out rather than failing the whole
    listing: the row is still worth seeing, and `server.py --check` reports it. Each is logged
    once per run, since a popular listing would otherwise repeat the same line at every page."""
    out: list[bytes | None] = []
    for record in records:
        try:
            out.append(blobs.get(record.thumb_blob))
        except (BlobError, OSError) as exc:
            _report_thumbnail(record, exc)
            out.append(None)
    return out


def _report_thumbnail(record: repo.ImageRecord, exc: Exception) -> None:
    if record.thumb_blob in _reported_thumbnails:
        return
    if len(_reported_thumbnails) >= _MAX_REPORTED:
        _reported_thumbnails.clear()
    _reported_thumbnails.add(record.thumb_blob)
    log.warning(
        "image %d is listed without its thumbnail: blob %s cannot be read: %s",
        record.id,
        record.thumb_blob,
        exc,
    )


def build_summaries(
    blobs: BlobStore, records: list[repo.ImageRecord], thumbnails: bool
) -> list[ImageSummary]:
    """Wire summaries for a batch (run in the executor, next to the query that found the rows,
    so the event loop only writes); thumbnails are read only for these rows, only if asked."""
    if not thumbnails or not records:
        return [summary(r) for r in records]
    thumbs = read_thumbnails(blobs, records)
    return [summary(r, t) for r, t in zip(records, thumbs, strict=True)]


#: GetImages of at most this many ids (a cart's lines, one image's details) is short enough
#: for `Services.quick_db_call`.
QUICK_GET_IMAGES = 20


def _not_found(image_id: int) -> VitrineError:
    return VitrineError(ErrorCode.NOT_FOUND, f"There is no image {image_id} you can see.")


async def _editable(ctx: RequestContext, image_id: int) -> repo.ImageRecord:
    """The live image `image_id` if the user may change it; the errors say why not."""
    record = await ctx.services.db_call(repo.image_by_id, image_id)
    user = ctx.user
    if record is None or record.deleted_at is not None:
        raise _not_found(image_id)
    if record.owner_id == user.id:
        return record
    if record.private:  # private to its owner, the admin included: not even its existence shows
        raise _not_found(image_id)
    if user.is_admin:
        return record
    raise VitrineError(
        ErrorCode.FORBIDDEN,
        f"Image {image_id} belongs to {record.owner}; only its owner or an admin may change it.",
    )


# --- handlers -----------------------------------------------------------------------------------


@route(UploadImage)
async def upload_image(ctx: RequestContext, request: UploadImage) -> Uploaded:
    filename = display_name(request.filename)
    upload = Upload(
        owner_id=ctx.user.id,
        data=request.data,
        filename=filename,
        title=_upload_title(request.title, filename),
        description=_clean_text(request.description, "description"),
        tags=normalise_tags(request.tags),
        price_cents=request.price_cents,
        quantity=request.quantity,
        private=request.private,
    )
    what = f"upload {request.id} of {filename!r} ({len(request.data)} bytes) user={ctx.user.name}"
    image_id, created = await ctx.services.finish_regardless(ingest(ctx.services, upload), what)
    return Uploaded(id=request.id, image_id=image_id, created=created)


@route(UpdateImage)
async def update_image(ctx: RequestContext, request: UpdateImage) -> ImageUpdated:
    add = normalise_tags(request.add_tags)
    remove = normalise_tags(request.remove_tags)
    both = set(add) & set(remove)
    if both:
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            f"Tags both added and removed: {', '.join(sorted(both))}; choose one.",
        )
    changes = repo.Changes(
        title=_new_title(request.title),
        description=(
            None if request.description is None else _clean_text(request.description, "description")
        ),
        price_cents=request.price_cents,
        quantity=request.quantity,
        add_quantity=request.add_quantity,
        private=request.private,
        add_tags=add,
        remove_tags=remove,
    )
    if request.quantity is not None and request.add_quantity is not None:
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "Give either a new quantity or an amount to add to the stock, not both.",
        )
    if (
        all(
            v is None
            for v in (
                changes.title,
                changes.description,
                changes.price_cents,
                changes.quantity,
                changes.add_quantity,
                changes.private,
            )
        )
        and not add
        and not remove
    ):
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "Nothing to change: give a new title, description, price, quantity, tags or "
            "visibility.",
        )
    record = await _editable(ctx, request.image_id)
    if changes.private is not None and record.owner_id != ctx.user.id:
        # An admin who made someone's image private could never see it again, let alone undo
        # it (a private image is private from the admin too); delete_image is the admin's way
        # to take an image out of the shop.
        raise VitrineError(
            ErrorCode.FORBIDDEN,
            f"Only the owner of image {request.image_id} ({record.owner}) may make it private "
            "or public; an admin may change the rest of it, or delete it.",
        )
    try:
        changed = await ctx.services.db_call(
            repo.update_image, request.image_id, changes, editor=ctx.user.id
        )
    except repo.StockOutOfRange as exc:
        raise _stock_out_of_range(request.image_id, exc.stock, request.add_quantity or 0) from None
    except repo.TooManyTags as exc:
        raise VitrineError(
            ErrorCode.CONFLICT,
            f"Image {request.image_id} has {exc.had} tags; this change would give it "
            f"{exc.would_have}, more than the limit of {MAX_TAGS} per image. Remove some "
            "of its tags first. Nothing was changed.",
        ) from None
    if changed is None:  # deleted, or made private by its owner, since `_editable` read it
        raise _not_found(request.image_id)
    return ImageUpdated(id=request.id, image=summary(changed))


def _stock_out_of_range(image_id: int, stock: int, change: int) -> VitrineError:
    """CONFLICT, since the count the change met may be one the seller has not seen yet."""
    if change < 0:
        return VitrineError(
            ErrorCode.CONFLICT,
            f"Image {image_id} has {stock} in stock now; taking {-change} would leave less "
            "than none. Nothing was changed.",
        )
    return VitrineError(
        ErrorCode.CONFLICT,
        f"Image {image_id} has {stock} in stock now; adding {change} would pass the largest "
        f"quantity, {MAX_QUANTITY}. Nothing was changed.",
    )


@route(DeleteImage)
async def delete_image(ctx: RequestContext, request: DeleteImage) -> Ok:
    await _editable(ctx, request.image_id)
    if not await ctx.services.db_call(repo.soft_delete, request.image_id, editor=ctx.user.id):
        raise _not_found(request.image_id)
    for hook in ctx.services.on_deleted:  # e.g. the vector index forgets it
        try:
            await hook(ctx.services, request.image_id)
        except Exception:  # the delete is committed; listings re-check visibility anyway
            log.exception("post-delete hook %r failed for image %d", hook, request.image_id)
    return Ok(id=request.id)


@route(GetImage)
async def get_image(ctx: RequestContext, request: GetImage) -> ImageDetails:
    services = ctx.services
    found = await services.db_call(repo.images_by_ids, [request.image_id], ctx.user.id)
    if not found:
        raise _not_found(request.image_id)
    record = found[0]

    def read() -> tuple[bytes | None, bytes | None]:
        thumb = read_thumbnails(services.blobs, [record])[0]
        return thumb, services.blobs.get(record.blob) if request.with_original else None

    try:
        thumbnail, original = await services.run(read)
    except BlobError as exc:  # damaged or forged: the operator needs the blob's name
        log.error("image %d: its original (blob %s) fails to read: %s", record.id, record.blob, exc)
        raise VitrineError(
            ErrorCode.INTERNAL,
            f"The stored original of image {record.id} cannot be read; the server operator "
            "should run `server.py --check`.",
        ) from None
    except OSError as exc:  # the disk, not the blob: a permission, an I/O error
        log.error(
            "image %d: its original (blob %s) cannot be read from storage: %s",
            record.id,
            record.blob,
            exc,
        )
        raise VitrineError(
            ErrorCode.INTERNAL,
            f"The server could not read the original of image {record.id} from its storage; "
            "the error has been logged for its operator.",
        ) from None
    return ImageDetails(
        id=request.id,
        image=summary(record, thumbnail),
        original=original,
        format=record.format,
        byte_size=record.byte_size,
    )


@route(GetImages)
async def get_images(ctx: RequestContext, request: GetImages) -> Images:
    viewer, blobs = ctx.user.id, ctx.services.blobs

    def read(conn: sqlite3.Connection) -> list[ImageSummary]:
        """Rows and thumbnails: one trip to the executor."""
        records = repo.images_by_ids(conn, request.image_ids, viewer)
        return build_summaries(blobs, records, request.thumbnails)

    if len(request.image_ids) <= QUICK_GET_IMAGES:  # a cart's few lines: the quick lane
        return Images(id=request.id, items=await ctx.services.quick_db_call(read))
    return Images(id=request.id, items=await ctx.services.db_call(read))
