"""Uploads, rejections, updates, deletes, permissions and privacy through the real server.

Each test talks the wire protocol to a real `server.py` process (TLS, SQLite, blob store). The
module's server is started with a small byte limit so "over the byte limit" costs no time; its
first account is the admin.
"""

from __future__ import annotations

import io
import itertools
import os
import sqlite3
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.catalog import (
    Browse,
    DeleteImage,
    GetImage,
    GetImages,
    ImageDetails,
    Images,
    ImageUpdated,
    ListingOptions,
    ListTags,
    More,
    TagList,
    TextSearch,
    UpdateImage,
    Uploaded,
    UploadImage,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import Ok
from repository.blobstore import BlobStore, load_or_create_key
from shell.connection import ServerConnection
from tests.servers import ServerProcess

BYTE_LIMIT = 200_000
_names = itertools.count()

# --- helpers shared by the image test modules ----------------------------------------------------


def unique(prefix: str) -> str:
    """A fresh user or tag name, so tests sharing a server never see each other's data."""
    return f"{prefix}{os.getpid() % 1000}x{next(_names)}"


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(picture(seed, size), "JPEG", quality=85)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


_blank_title_seeds = itertools.count(90_000)


def upload(conn: ServerConnection, data: bytes, **fields: object) -> Uploaded:
    fields.setdefault("filename", "photo.jpg")
    return conn.call(UploadImage(id=0, data=data, **fields), Uploaded)  # type: ignore[arg-type]


def upload_many(conn: ServerConnection, datas: list[bytes], **fields: object) -> list[Uploaded]:
    """Pipelined, as the shell's bulk upload does; results in submission order."""
    fields.setdefault("filename", "photo.jpg")
    futures: list[Future] = [
        conn.submit(UploadImage(id=0, data=d, **fields))  # type: ignore[arg-type]
        for d in datas
    ]
    return [f.result(timeout=120) for f in futures]


def error_of(conn: ServerConnection, request: object) -> VitrineError:
    with pytest.raises(VitrineError) as info:
        conn.call(request)  # type: ignore[arg-type]
    return info.value


def listing(conn: ServerConnection, request: object, more_limit: int | None = None) -> list[list]:
    """Run a listing to its end: the items of each batch, following cursors with More."""
    batches = []
    frames = list(conn.stream(request))  # type: ignore[arg-type]
    while True:
        batches.append([item for frame in frames for item in frame.items])
        cursor = frames[-1].cursor
        if cursor is None:
            return batches
        options = ListingOptions(limit=more_limit) if more_limit else ListingOptions(limit=10)
        frames = list(conn.stream(More(id=0, cursor=cursor, options=options)))


def ids_of(batches: list[list]) -> list[int]:
    return [item.id for batch in batches for item in batch]


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("catalog"), extra_args=["--max-image-bytes", str(BYTE_LIMIT)]
    ).start()
    admin = process.user_connection(tmp_path_factory.mktemp("admin-client"), "admin")
    admin.close()
    yield process
    process.stop()


@pytest.fixture
def alice(catalog_server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = catalog_server.user_connection(tmp_path / "a", unique("alice"))
    yield conn
    conn.close()


@pytest.fixture
def bob(catalog_server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = catalog_server.user_connection(tmp_path / "b", unique("bob"))
    yield conn
    conn.close()


@pytest.fixture
def admin(catalog_server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = catalog_server.user_connection(tmp_path / "adm", "admin")
    yield conn
    conn.close()


# --- uploads ------------------------------------------------------------------------------------


def test_upload_stores_original_byte_for_byte_with_metadata(alice: ServerConnection) -> None:
    data = jpeg(1, (300, 200))
    tag = unique("shirt")
    up = upload(
        alice,
        data,
        filename="Blue Shirt.jpg",
        title="Blue shirt",
        description="Cotton",
        tags=[tag.upper(), f"  {tag} "],
        price_cents=1250,
        quantity=3,
    )
    assert up.created
    details = alice.call(GetImage(id=0, image_id=up.image_id, with_original=True), ImageDetails)
    assert details.original == data
    assert details.format == "JPEG" and details.byte_size == len(data)
    image = details.image
    assert (image.width, image.height) == (300, 200)
    assert image.tags == [tag]  # normalised, once
    assert (image.title, image.description, image.filename) == (
        "Blue shirt",
        "Cotton",
        "Blue Shirt.jpg",
    )
    assert (image.price_cents, image.quantity, image.visibility) == (1250, 3, "public")
    thumb = Image.open(io.BytesIO(image.thumbnail or b""))
    assert max(thumb.size) <= 256 and thumb.size[0] > thumb.size[1]


def test_same_content_reports_the_existing_image(
    alice: ServerConnection, bob: ServerConnection
) -> None:
    data = jpeg(2)
    first = upload(alice, data)
    again = upload(alice, data, filename="other-name.jpg", title="ignored")
    assert (again.image_id, again.created) == (first.image_id, False)
    # Someone else uploading the same bytes gets an image of their own.
    theirs = upload(bob, data)
    assert theirs.created and theirs.image_id != first.image_id
    assert bob.call(GetImage(id=0, image_id=theirs.image_id), ImageDetails).image.owner != (
        alice.call(GetImage(id=0, image_id=first.image_id), ImageDetails).image.owner
    )


def test_duplicates_in_flight_at_once_give_one_image(alice: ServerConnection) -> None:
    results = upload_many(alice, [jpeg(3)] * 8)
    assert len({r.image_id for r in results}) == 1
    assert sum(r.created for r in results) == 1


def test_thumbnails_palette_from_a_coloured_picture(alice: ServerConnection) -> None:
    red = Image.new("RGB", (120, 80), (210, 30, 30))
    up = upload(alice, encode(red, "PNG"), filename="red.png")
    image = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image
    assert image.palette, "a plain red picture has a dominant colour"
    assert image.palette[0].hue < 15 or image.palette[0].hue > 345


@pytest.mark.parametrize(
    ("name", "data", "code", "reason"),
    [
        (
            "notes.jpg",
            b"just some text, not a picture\n" * 10,
            ErrorCode.UNSUPPORTED_IMAGE,
            "not_an_image",
        ),
        ("cut.jpg", jpeg(4, (200, 150))[:900], ErrorCode.UNSUPPORTED_IMAGE, "truncated"),
        ("bomb.png", png_declaring(20_000, 20_000), ErrorCode.TOO_LARGE, "too_many_pixels"),
        ("empty.jpg", b"", ErrorCode.UNSUPPORTED_IMAGE, "empty"),
        ("huge.jpg", b"\xff\xd8\xff" + b"\0" * BYTE_LIMIT, ErrorCode.TOO_LARGE, "too_large"),
        ("scan.tif", encode(picture(5), "TIFF"), ErrorCode.UNSUPPORTED_IMAGE, "unsupported_format"),
        (
            "logo.svg",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
            ErrorCode.UNSUPPORTED_IMAGE,
            "unsupported_format",
        ),
    ],
)
def test_every_rejection_has_its_own_code_and_reason(
    alice: ServerConnection, name: str, data: bytes, code: ErrorCode, reason: str
) -> None:
    error = error_of(alice, UploadImage(id=0, filename=name, data=data))
    assert error.code == code
    assert error.details == [reason]
    assert len(error.message) > 20  # a sentence, not a code


def test_a_bad_file_does_not_stop_the_others(alice: ServerConnection) -> None:
    futures = [
        alice.submit(UploadImage(id=0, filename=f"{n}.jpg", data=d))
        for n, d in enumerate([jpeg(6), b"junk", jpeg(7), b"", jpeg(8)])
    ]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(timeout=60).created)
        except VitrineError as exc:
            outcomes.append(exc.code)
    assert outcomes == [True, ErrorCode.UNSUPPORTED_IMAGE, True, ErrorCode.UNSUPPORTED_IMAGE, True]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("C:\\Users\\me\\shot.jpg", "shot.jpg"),
        ("evil\x1b[2Jname\x07.jpg", "evil\ufffd[2Jname\ufffd.jpg"),
        ("/", "unnamed"),
    ],
)
def test_odd_file_names_are_harmless_metadata(
    alice: ServerConnection, raw: str, shown: str, catalog_server: ServerProcess
) -> None:
    up = upload(alice, jpeg(hash(raw) % 10_000 + 100), filename=raw)
    image = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image
    assert image.filename == shown
    assert not any(p.name == "passwd.jpg" for p in catalog_server.data_dir.rglob("*"))


# --- tags and values ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["   ", "a,b", "-lead", "semi;colon", "slash/tag", "x" * 70])
def test_odd_tags_are_refused_with_the_rule(alice: ServerConnection, bad: str) -> None:
    error = error_of(alice, UploadImage(id=0, filename="x.jpg", data=jpeg(9), tags=[bad]))
    assert error.code == ErrorCode.BAD_REQUEST
    assert "tag" in error.message.lower()


#: Words whose letters carry combining marks: vowel signs, Hebrew points, and the dot above
#: that lower-casing `İ` adds (`İstanbul` becomes `i` + U+0307 + `stanbul`).
MARKED_TAGS = ["हिंदी", "สวัสดี", "שָׁלוֹם", "İstanbul"]


@pytest.mark.parametrize("raw", MARKED_TAGS)
def test_tags_with_combining_marks_round_trip(alice: ServerConnection, raw: str) -> None:
    tag = raw.lower()
    uploaded = upload(alice, jpeg(hash(raw) % 10_000 + 300), tags=[raw])
    updated = upload(alice, jpeg(hash(raw) % 10_000 + 400))
    image = alice.call(
        UpdateImage(id=0, image_id=updated.image_id, add_tags=[raw]), ImageUpdated
    ).image
    stored = alice.call(GetImage(id=0, image_id=uploaded.image_id), ImageDetails).image
    assert stored.tags == [tag] and image.tags == [tag]
    found = ids_of(listing(alice, Browse(id=0, tags=[raw])))
    assert {uploaded.image_id, updated.image_id} <= set(found)
    assert ids_of(listing(alice, Browse(id=0, tags=[tag]))) == found  # one spelling
    counts = alice.call(ListTags(id=0), TagList).tags
    assert tag in [count.name for count in counts]


@pytest.mark.parametrize("bad", ["\u0301", "\u0301abc", "\u093f", "\u0e31\u0e35", "\u05b8\u05e9"])
def test_tags_starting_with_a_combining_mark_are_refused(alice: ServerConnection, bad: str) -> None:
    up = upload(alice, jpeg(14))
    for request in (
        UploadImage(id=0, filename="x.jpg", data=jpeg(15), tags=[bad]),
        UpdateImage(id=0, image_id=up.image_id, add_tags=[bad]),
        Browse(id=0, tags=[bad]),
    ):
        error = error_of(alice, request)
        assert error.code == ErrorCode.BAD_REQUEST
        assert f"starts with the combining mark U+{ord(bad[0]):04X}" in error.message
        assert "starting with a letter or digit" in error.message


def test_tags_are_normalised(alice: ServerConnection) -> None:
    up = upload(alice, jpeg(10), tags=["Summer  Dress", "ÉTÉ", "t-shirt"])
    image = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image
    assert sorted(image.tags) == ["summer-dress", "t-shirt", "été"]


@pytest.mark.parametrize(
    "fields",
    [{"price_cents": -1}, {"quantity": -5}, {"price_cents": 10**13}, {"price_cents": "12.50"}],
)
def test_bad_money_and_stock_are_refused(alice: ServerConnection, fields: dict) -> None:
    up = upload(alice, jpeg(11))
    # Built unchecked, the way a hostile client could send it; the server's decoder refuses it.
    request = UpdateImage(id=0, image_id=up.image_id)
    for key, value in fields.items():
        setattr(request, key, value)
    error = error_of(alice, request)
    assert error.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("filename", "title"),
    [("linen-shirt.jpg", "linen-shirt"), (".hidden.jpg", ".hidden"), ("noext", "noext")],
)
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_title_at_upload_becomes_the_file_stem(
    alice: ServerConnection, blank: str, filename: str, title: str
) -> None:
    up = upload(alice, jpeg(next(_blank_title_seeds)), title=blank, filename=filename)
    assert alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image.title == title


def test_a_title_cannot_be_changed_to_a_blank_one(alice: ServerConnection) -> None:
    up = upload(alice, jpeg(18), title="Straw hat")
    for blank in ("", "  \t "):
        error = error_of(alice, UpdateImage(id=0, image_id=up.image_id, title=blank))
        assert error.code == ErrorCode.BAD_REQUEST and "cannot be blank" in error.message
    assert alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image.title == "Straw hat"


def test_update_with_nothing_to_change_is_refused(alice: ServerConnection) -> None:
    up = upload(alice, jpeg(12))
    error = error_of(alice, UpdateImage(id=0, image_id=up.image_id))
    assert error.code == ErrorCode.BAD_REQUEST and "Nothing to change" in error.message


def test_owner_updates_fields_and_tags(alice: ServerConnection) -> None:
    old, new = unique("old"), unique("new")
    up = upload(alice, jpeg(13), tags=[old], price_cents=100)
    updated = alice.call(
        UpdateImage(
            id=0,
            image_id=up.image_id,
            title="Renamed",
            price_cents=999,
            quantity=7,
            add_tags=[new],
            remove_tags=[old],
            private=True,
        ),
        ImageUpdated,
    ).image
    assert (updated.title, updated.price_cents, updated.quantity) == ("Renamed", 999, 7)
    assert updated.tags == [new] and updated.visibility == "private"
    found = [i.id for b in listing(alice, TextSearch(id=0, text="renamed")) for i in b]
    assert up.image_id in found


# --- permissions --------------------------------------------------------------------------------


def test_others_may_not_change_or_delete(alice: ServerConnection, bob: ServerConnection) -> None:
    up = upload(alice, jpeg(14), price_cents=500)
    assert error_of(bob, UpdateImage(id=0, image_id=up.image_id, price_cents=1)).code == (
        ErrorCode.FORBIDDEN
    )
    assert error_of(bob, DeleteImage(id=0, image_id=up.image_id)).code == ErrorCode.FORBIDDEN
    image = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails).image
    assert image.price_cents == 500


def test_admin_may_change_and_delete(alice: ServerConnection, admin: ServerConnection) -> None:
    up = upload(alice, jpeg(15))
    changed = admin.call(UpdateImage(id=0, image_id=up.image_id, quantity=4), ImageUpdated)
    assert changed.image.quantity == 4
    assert isinstance(admin.call(DeleteImage(id=0, image_id=up.image_id)), Ok)
    assert error_of(alice, GetImage(id=0, image_id=up.image_id)).code == ErrorCode.NOT_FOUND


def test_only_the_owner_may_change_who_sees_an_image(
    alice: ServerConnection, admin: ServerConnection
) -> None:
    """An admin could make someone's image private, and then, the image being private from the
    admin too, never see it or undo it."""
    up = upload(alice, jpeg(16))
    error = error_of(admin, UpdateImage(id=0, image_id=up.image_id, private=True))
    assert error.code == ErrorCode.FORBIDDEN and "may make it private or public" in error.message
    still = admin.call(GetImage(id=0, image_id=up.image_id), ImageDetails)
    assert still.image.visibility == "public"
    hidden = alice.call(UpdateImage(id=0, image_id=up.image_id, private=True), ImageUpdated)
    assert hidden.image.visibility == "private"


def test_a_private_image_is_private_from_the_admin_too(
    alice: ServerConnection, admin: ServerConnection
) -> None:
    """A no-op update used to answer the admin with the whole summary of someone's private image
    (title, description, tags, price) while GetImage said it did not exist."""
    up = upload(alice, jpeg(17), private=True)
    for request in (
        UpdateImage(id=0, image_id=up.image_id, remove_tags=["no-such-tag"]),
        UpdateImage(id=0, image_id=up.image_id, quantity=4),
        DeleteImage(id=0, image_id=up.image_id),
        GetImage(id=0, image_id=up.image_id),
    ):
        error = error_of(admin, request)
        assert error.code == ErrorCode.NOT_FOUND
        assert error.message == error_of(admin, GetImage(id=0, image_id=2**40)).message.replace(
            str(2**40), str(up.image_id)
        )
    mine = alice.call(GetImage(id=0, image_id=up.image_id), ImageDetails)
    assert (mine.image.quantity, mine.image.visibility) == (0, "private")  # as uploaded


def test_unknown_ids_are_not_found(alice: ServerConnection) -> None:
    for request in (
        GetImage(id=0, image_id=2**40),
        UpdateImage(id=0, image_id=2**40, quantity=1),
        DeleteImage(id=0, image_id=2**40),
    ):
        assert error_of(alice, request).code == ErrorCode.NOT_FOUND


def test_login_is_needed(catalog_server: ServerProcess, tmp_path: Path) -> None:
    conn = catalog_server.connect(tmp_path)
    try:
        error = error_of(conn, UploadImage(id=0, filename="a.jpg", data=jpeg(16)))
        assert error.code == ErrorCode.UNAUTHENTICATED
    finally:
        conn.close()


# --- privacy and deletes ------------------------------------------------------------------------


def _everywhere(conn: ServerConnection, image_id: int, tag: str, word: str) -> dict[str, bool]:
    """Where `conn`'s user can see `image_id`, on every read path."""
    seen = {}
    seen["browse tag"] = image_id in ids_of(listing(conn, Browse(id=0, tags=[tag])))
    seen["browse any"] = image_id in ids_of(
        listing(conn, Browse(id=0, tags=[tag, "zz-none"], match_any=True))
    )
    seen["browse all"] = image_id in ids_of(
        listing(conn, Browse(id=0, options=ListingOptions(limit=500)), more_limit=500)
    )
    seen["search"] = image_id in ids_of(listing(conn, TextSearch(id=0, text=word)))
    tags = conn.call(ListTags(id=0), TagList).tags
    seen["tags"] = any(t.name == tag for t in tags)
    try:
        conn.call(GetImage(id=0, image_id=image_id), ImageDetails)
        seen["get"] = True
    except VitrineError as exc:
        assert exc.code == ErrorCode.NOT_FOUND
        seen["get"] = False
    items = conn.call(GetImages(id=0, image_ids=[image_id]), Images).items
    seen["get many"] = [i.id for i in items] == [image_id]
    return seen


def test_private_images_are_invisible_to_others_everywhere(
    alice: ServerConnection, bob: ServerConnection
) -> None:
    tag, word = unique("secret"), unique("hush")
    up = upload(alice, jpeg(17), tags=[tag], title=f"{word} item", private=True)
    assert all(_everywhere(alice, up.image_id, tag, word).values())
    assert not any(_everywhere(bob, up.image_id, tag, word).values())
    # Existence does not leak through the write paths either.
    assert error_of(bob, UpdateImage(id=0, image_id=up.image_id, quantity=1)).code == (
        ErrorCode.NOT_FOUND
    )
    assert error_of(bob, DeleteImage(id=0, image_id=up.image_id)).code == ErrorCode.NOT_FOUND
    # Made public, it appears for bob on every path.
    alice.call(UpdateImage(id=0, image_id=up.image_id, private=False), ImageUpdated)
    assert all(_everywhere(bob, up.image_id, tag, word).values())


def test_deleted_images_vanish_everywhere(alice: ServerConnection, bob: ServerConnection) -> None:
    tag, word = unique("gone"), unique("vanish")
    up = upload(alice, jpeg(18), tags=[tag], title=f"{word} item")
    assert all(_everywhere(bob, up.image_id, tag, word).values())
    assert isinstance(alice.call(DeleteImage(id=0, image_id=up.image_id)), Ok)
    assert not any(_everywhere(alice, up.image_id, tag, word).values())
    assert not any(_everywhere(bob, up.image_id, tag, word).values())
    assert error_of(alice, DeleteImage(id=0, image_id=up.image_id)).code == ErrorCode.NOT_FOUND
    # Uploading the same bytes again makes a new image rather than reviving the old one.
    again = upload(alice, jpeg(18))
    assert again.created and again.image_id != up.image_id


def test_get_images_keeps_order_and_drops_what_is_hidden(
    alice: ServerConnection, bob: ServerConnection
) -> None:
    public = upload(alice, jpeg(19), price_cents=250, quantity=2)
    private = upload(alice, jpeg(20), private=True)
    mine = upload(bob, jpeg(21))
    items = bob.call(
        GetImages(id=0, image_ids=[mine.image_id, private.image_id, 2**40, public.image_id]),
        Images,
    ).items
    assert [i.id for i in items] == [mine.image_id, public.image_id]
    assert all(i.thumbnail is None for i in items)
    assert (items[1].price_cents, items[1].quantity) == (250, 2)
    with_thumbs = bob.call(GetImages(id=0, image_ids=[mine.image_id], thumbnails=True), Images)
    assert with_thumbs.items[0].thumbnail


# --- storage faults -----------------------------------------------------------------------------
# Each on a fresh server of its own (conftest's `server`), since the test damages its blob store.
# As root, permissions stop nothing, so a blob becomes a directory (reading it fails with
# IsADirectoryError) and a blob directory becomes a file (writing into it: NotADirectoryError).

#: Long enough for any answer on a loaded machine, short enough that a request the server never
#: answers fails the test in seconds rather than after the client's default 120 s.
ANSWER_TIMEOUT_S = 15.0


def impatient(server: ServerProcess, config_dir: Path, name: str) -> ServerConnection:
    conn = server.user_connection(config_dir, name)
    conn.answer_timeout = ANSWER_TIMEOUT_S
    return conn


def blob_store(server: ServerProcess) -> BlobStore:
    """The server's own blob store, to name blobs the way it does (the key is in its data)."""
    return BlobStore(server.data_dir / "blobs", load_or_create_key(server.data_dir / "blob.key"))


def stored_blobs(server: ServerProcess, image_id: int) -> tuple[str, str]:
    """(original, thumbnail) blob names of a row."""
    db = sqlite3.connect(f"file:{server.data_dir / 'vitrine.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT blob, thumb_blob FROM images WHERE id = ?", (image_id,)).fetchone()
    finally:
        db.close()
    return row[0], row[1]


def make_unreadable(server: ServerProcess, name: str) -> None:
    path = blob_store(server).path_for(name)
    path.unlink()
    path.mkdir()


def test_an_unreadable_thumbnail_leaves_only_its_picture_out(
    server: ServerProcess, tmp_path: Path
) -> None:
    conn = impatient(server, tmp_path / "c", "seller")
    tag = unique("shoes")
    broken = upload(conn, jpeg(31), tags=[tag]).image_id
    fine = upload(conn, jpeg(32), tags=[tag]).image_id
    make_unreadable(server, stored_blobs(server, broken)[1])

    for _ in range(2):  # the second time, nothing new is logged
        (items,) = listing(conn, Browse(id=0, tags=[tag]))
        thumbnails = {item.id: item.thumbnail for item in items}
        assert thumbnails.keys() == {broken, fine}
        assert thumbnails[broken] is None and thumbnails[fine]
        (found,) = conn.call(GetImages(id=0, image_ids=[broken], thumbnails=True), Images).items
        assert found.thumbnail is None
    details = conn.call(GetImage(id=0, image_id=broken, with_original=True), ImageDetails)
    assert details.image.thumbnail is None and details.original == jpeg(31)
    conn.close()

    log = server.settled_log(tmp_path / "s")
    assert log.count(f"image {broken} is listed without its thumbnail") == 1, log
    assert "outcome=disconnected" not in log and "Traceback" not in log, log


def test_an_unreadable_original_is_answered_at_once(server: ServerProcess, tmp_path: Path) -> None:
    conn = impatient(server, tmp_path / "c", "seller")
    image_id = upload(conn, jpeg(33)).image_id
    original = stored_blobs(server, image_id)[0]
    make_unreadable(server, original)

    error = error_of(conn, GetImage(id=0, image_id=image_id, with_original=True))
    assert error.code == ErrorCode.INTERNAL
    assert "could not read" in error.message and "storage" in error.message
    assert str(server.data_dir) not in error.message and original not in error.message
    # The connection goes on: the row itself, without the original, is still there.
    assert conn.call(GetImage(id=0, image_id=image_id), ImageDetails).image.thumbnail
    conn.close()

    log = server.settled_log(tmp_path / "s")
    assert f"image {image_id}: its original (blob {original}) cannot be read" in log
    assert "request=GetImage outcome=INTERNAL" in log
    assert "outcome=disconnected" not in log and "never retrieved" not in log, log


def test_a_damaged_original_is_named_in_the_log(server: ServerProcess, tmp_path: Path) -> None:
    """The client is told to run `server.py --check`; the log used to say only
    `outcome=INTERNAL`, naming neither the image nor its blob."""
    conn = impatient(server, tmp_path / "c", "seller")
    image_id = upload(conn, jpeg(34)).image_id
    original = stored_blobs(server, image_id)[0]
    path = blob_store(server).path_for(original)
    path.write_bytes(path.read_bytes()[:20])

    error = error_of(conn, GetImage(id=0, image_id=image_id, with_original=True))
    assert error.code == ErrorCode.INTERNAL and "server.py --check" in error.message
    conn.close()
    log = server.settled_log(tmp_path / "s")
    assert f"image {image_id}: its original (blob {original}) fails to read: " in log


def test_a_failed_blob_write_is_answered_and_the_server_goes_on(
    server: ServerProcess, tmp_path: Path
) -> None:
    conn = impatient(server, tmp_path / "c", "seller")
    other = impatient(server, tmp_path / "o", "other")
    first = upload(conn, jpeg(34)).image_id
    blobs = blob_store(server)
    # A picture whose original would go to a blob directory not made yet: a file takes its place.
    data = next(
        d
        for d in (jpeg(seed) for seed in itertools.count(35))
        if not (blobs.root / blobs.name_for(d)[:2]).exists()
    )
    name = blobs.name_for(data)
    blocker = blobs.root / name[:2]
    blocker.write_bytes(b"")

    error = error_of(conn, UploadImage(id=0, filename="red.jpg", data=data, tags=["red"]))
    assert error.code == ErrorCode.INTERNAL
    assert "not stored" in error.message and "storage" in error.message
    assert str(server.data_dir) not in error.message and "Errno" not in error.message
    # Everyone, this connection included, is still served, and nothing was half stored.
    assert other.call(GetImage(id=0, image_id=first), ImageDetails).image.thumbnail
    assert listing(conn, Browse(id=0, tags=["red"])) == [[]]

    blocker.unlink()
    again = upload(conn, data, filename="red.jpg", tags=["red"])
    assert again.created
    assert ids_of(listing(other, Browse(id=0, tags=["red"]))) == [again.image_id]
    conn.close()
    other.close()

    log = server.settled_log(tmp_path / "s")
    assert "upload of 'red.jpg' by user " in log and f"(blob {name}) not stored" in log, log
    assert "request=UploadImage outcome=INTERNAL" in log
    assert "outcome=disconnected" not in log and "never retrieved" not in log, log
