"""Upgrading a shop made by an older Vitrine (session 22).

QA upgraded data directories made by old commits to the current code. The data survived, but:
a database from a NEWER version was served (and `--check` told the operator to start the server
to migrate it); the start's log said nothing of the schema it migrated, nor of v9 renaming
users' tags; and clients one day old failed every listing with "unknown field `unindexed`"
although both sides said protocol 1. Real servers and `--check` runs on real data directories
(built by real Services, as in tests/test_check_damaged.py, whose fixtures these share).
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
import stat
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from protocol import catalog, codec, framing
from protocol.messages import PROTOCOL_VERSION, CreateUser, Hello, Login
from repository.database import Database, SchemaTooNew, migrate
from repository.migrations import MIGRATIONS
from tests.rows import rewind_statements
from tests.servers import ServerProcess
from tests.test_check_damaged import data_dir, stored  # noqa: F401  (fixtures)
from tests.test_images_server import jpeg, upload
from tests.test_operator_startup import check_problems, refusal, start_refused

NEWER = len(MIGRATIONS) + 1


def _execute(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _user_version(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


# --- a database from a newer version -------------------------------------------------------------


def test_a_database_from_a_newer_version_is_refused_before_anything_changes(
    data_dir: Path,  # noqa: F811
) -> None:
    """It was served: this code read and wrote a schema it does not know. Refused now in one
    line, before the migration, the chmod of what others may read and the TLS identity (the
    directory has none: a start that got further would make one), and `--check` agrees."""
    db = data_dir / "vitrine.db"
    _execute(db, f"PRAGMA user_version={NEWER}", "CREATE TABLE future_thing (x)")
    db.chmod(0o644)
    before = db.read_bytes()

    line = refusal(start_refused(data_dir))

    assert line == (
        f"vitrine: {db} is at schema version {NEWER}, newer than this Vitrine's "
        f"{len(MIGRATIONS)}: it was written by a newer Vitrine; run that version (or restore a "
        "backup made before the upgrade)."
    )
    assert _user_version(db) == NEWER and db.read_bytes() == before
    assert stat.S_IMODE(db.stat().st_mode) == 0o644  # not tightened: the start went no further
    assert not (data_dir / "server-cert.pem").exists()
    assert not (data_dir / "server-key.pem").exists()
    assert check_problems(data_dir) == [line.removeprefix("vitrine: ")]


def test_migrate_refuses_a_newer_schema_without_writing(tmp_path: Path) -> None:
    """The guard under the start's: whatever opens a `Database` (scripts, tests) is refused."""
    path = tmp_path / "vitrine.db"
    Database(path).close()
    _execute(path, f"PRAGMA user_version={NEWER}")
    with pytest.raises(SchemaTooNew):
        Database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(SchemaTooNew):
            migrate(conn)
    finally:
        conn.close()
    assert _user_version(path) == NEWER


# --- what the start says it migrated -------------------------------------------------------------


def test_the_start_logs_the_upgrade_and_what_it_changed_for_users(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A version-8 database (tags stored as typed; a palette merged into one grey) is started
    on: one line for the upgrade, one for the tags v9 respelt, one for the colours v10 marked.
    The next start, with nothing to migrate, logs none of them."""
    db = data_dir / "vitrine.db"
    _execute(
        db,
        "INSERT INTO tags (id, name) VALUES (101, 'ＳＡＬＥ'), (102, 'straße'), (103, 'sale')",
        "INSERT INTO image_tags (image_id, tag_id) VALUES (1, 101), (2, 101), (2, 103), (3, 102)",
        "INSERT INTO image_colours VALUES (4, 0, 128, 128, 128, 120.0, 0.0, 0.5, 1.0)",
        "UPDATE images SET colours_pending = 0 WHERE id = 4",
        *rewind_statements(8),
    )
    server = ServerProcess(data_dir, extra_args=["--no-colours"]).start()
    try:
        log = server.wait_for_log(
            f"INFO repository.database: database schema upgraded from version 8 to "
            f"{len(MIGRATIONS)} in "
        )
        assert (
            "INFO repository.migrations: schema v9: 2 tags respelt as uploads now spell them "
            "(ＳＡＬＥ → sale, straße → strasse), 1 of them merged into a tag of the same "
            "spelling; 3 images (deleted ones included) hold the changed tags"
        ) in log
        assert "INFO repository.migrations: schema v10: 1 images' colours" in log
        server.stop()
        server.restart()
        log = server.settled_log(tmp_path / "settle")
    finally:
        server.stop()
    assert "schema upgraded" not in log and "schema v" not in log


def test_a_new_database_logs_no_upgrade(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--no-colours"]).start()
    try:
        log = server.settled_log(tmp_path / "settle")
    finally:
        server.stop()
    assert "schema upgraded" not in log and "schema v" not in log


# --- older clients -------------------------------------------------------------------------------
# The server-to-client messages as the oldest client that can read today's `Welcome` decodes
# them: commit 4908677 (2026-11-24 06:40), which added `server_id`, before `kept`,
# `colours_pending`, `unindexed` and `placed_earlier`. Copied as released, like the old server's
# `Login` in tests/test_device_token_s20.py: every one refuses unknown fields.


class _Old(msgspec.Struct, tag=True, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    id: int


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Limits(_Strict):
    max_frame_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_batch: int
    max_in_flight: int
    idle_timeout_s: float


class Welcome(_Old):
    protocol: int
    server_version: str
    limits: Limits
    server_id: str = ""


class Error(_Old):
    code: str
    message: str
    details: list[str] = []


class Ok(_Old):
    pass


class UserInfo(_Old):
    name: str
    admin: bool


class Session(_Old):
    name: str
    admin: bool
    resume_token: str


class Colour(_Strict):
    r: int
    g: int
    b: int
    hue: float
    saturation: float
    lightness: float
    share: float


class ImageSummary(_Strict):
    id: int
    title: str
    description: str
    filename: str
    tags: list[str]
    price_cents: int
    quantity: int
    owner: str
    visibility: Literal["public", "private"]
    created_at: float
    width: int
    height: int
    palette: list[Colour] = []
    thumbnail: bytes | None = None
    score: float | None = None
    match: Colour | None = None


class ImageDetails(_Old):
    image: ImageSummary
    original: bytes | None = None
    format: str = ""
    byte_size: int = 0


class Batch(_Old):
    items: list[ImageSummary]
    cursor: str | None = None
    final: bool = True


class Images(_Old):
    items: list[ImageSummary]


class OrderLine(_Strict):
    image_id: int
    title: str
    quantity: int
    unit_price_cents: int
    seller: str = ""
    buyer: str = ""


class Order(_Strict):
    id: int
    created_at: float
    total_cents: int
    lines: list[OrderLine]
    buyer: str = ""


class OrderPlaced(_Old):
    order: Order


class OrderList(_Old):
    orders: list[Order]
    next_before: int | None = None


OLD_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    Welcome
    | Error
    | Ok
    | UserInfo
    | Session
    | ImageDetails
    | Batch
    | Images
    | OrderPlaced
    | OrderList
)


class _OldClient:
    """A raw TLS connection that sends what that client sent (today's requests at their
    defaults are the same bytes) and decodes each answer with its message types, returning
    today's decoding beside it."""

    def __init__(self, server: ServerProcess) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection((server.host, server.port), timeout=60)
        self.sock = context.wrap_socket(raw, server_hostname=server.host)
        self.ids = 0

    def call(self, request: Any) -> tuple[Any, Any]:
        """(the old client's decoding, today's) of the answer; several frames of a streamed
        batch are not asked for here (every listing is one batch)."""
        self.ids += 1
        request.id = self.ids
        self.sock.sendall(framing.frame(codec.encode(request)))
        body = framing.read_frame_blocking(self.sock, framing.DEFAULT_MAX_FRAME)
        assert body is not None, "the server closed the connection"
        return OLD_DECODER.decode(body), codec.decode_response(body)

    def close(self) -> None:
        self.sock.close()


def test_a_client_from_before_the_new_fields_reads_listings_images_and_orders(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    """Every `Batch` carried `kept: 0` and `unindexed: 0` and every image
    `colours_pending: false`, which such a client refuses as unknown fields ("Invalid message:
    Object contains unknown field `unindexed`" for every listing); a checkout's answer carried
    `placed_earlier: false`. Today's client still reads the same bytes with its defaults."""
    seller = shared_server.user_connection(tmp_path / "seller", "oldseller")
    try:
        image_id = upload(
            seller, jpeg(4242, (80, 60)), title="upgrade hat", tags=["upgradehat"], quantity=3
        ).image_id
    finally:
        seller.close()
    client = _OldClient(shared_server)
    try:
        welcome, _ = client.call(Hello(id=0, protocol=PROTOCOL_VERSION, client="vitrine-shell"))
        assert isinstance(welcome, Welcome) and welcome.server_id
        created, _ = client.call(CreateUser(id=0, name="oldbuyer", password="correct horse"))
        assert isinstance(created, UserInfo), created
        session, _ = client.call(Login(id=0, name="oldbuyer", password="correct horse"))
        assert isinstance(session, Session)

        listings = [
            catalog.Browse(id=0, tags=["upgradehat"]),
            catalog.TextSearch(id=0, text="upgrade hat"),
        ]
        for request in listings:
            old, new = client.call(request)
            assert isinstance(old, Batch), old
            assert [item.id for item in old.items] == [image_id]
            assert (new.kept, new.unindexed, new.final, new.cursor) == (0, 0, True, None)
            assert new.items[0].colours_pending is False and new.items[0].thumbnail

        old, new = client.call(catalog.GetImages(id=0, image_ids=[image_id]))
        assert isinstance(old, Images) and old.items[0].quantity == 3
        old, new = client.call(catalog.GetImage(id=0, image_id=image_id))
        assert isinstance(old, ImageDetails) and old.image.title == "upgrade hat"

        line = catalog.CartLine(image_id=image_id, quantity=1)
        old, new = client.call(catalog.Checkout(id=0, lines=[line]))
        assert isinstance(old, OrderPlaced), old
        assert new.placed_earlier is False
        old, _ = client.call(catalog.ListOrders(id=0))
        assert isinstance(old, OrderList) and len(old.orders) == 1
    finally:
        client.close()


def test_new_fields_are_sent_when_they_say_something() -> None:
    """Left off only at their defaults: a value a client must see still reaches it."""
    summary = catalog.ImageSummary(
        id=1, title="", description="", filename="", tags=[], price_cents=0, quantity=0,
        owner="o", visibility="public", created_at=0.0, width=1, height=1,
        colours_pending=True,
    )  # fmt: skip
    batch = catalog.Batch(id=7, items=[summary], kept=500, unindexed=3, final=False)
    assert codec.decode_response(codec.encode(batch)) == batch
    body = codec.encode(batch)
    assert b"kept" in body and b"unindexed" in body and b"colours_pending" in body
    plain = catalog.Batch(id=7, items=[])
    assert codec.decode_response(codec.encode(plain)) == plain
    assert b"kept" not in codec.encode(plain) and b"final" not in codec.encode(plain)
