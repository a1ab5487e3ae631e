"""An owner's change of visibility (or a delete) that commits between a handler's two
statements must still win: the second statement repeats the rule instead of trusting the first.

Exploratory testing found three such gaps, each a race between real connections: a browse read
its ids with the viewer's rule and then the rows without it (a stranger got an image made
private a moment before, with its new private title); an admin's update or delete checked
permission in one read and wrote in another (the admin changed, and was shown, an image made
private in between); and a login as another user on the same connection kept the first user's
listing cursors. The interleavings are made deterministic here: the commit is placed exactly
between the two statements, on a real SQLite database or a real server.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from protocol import codec, framing
from protocol.catalog import Batch, ListingOptions, More, TextSearch
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import Login, Session
from repository import images as repo
from repository.accounts import User
from repository.database import Database
from service import listings
from service.context import ConnectionState, RequestContext, ServerConfig, Services
from service.registry import Frames
from shell.connection import ServerConnection
from tests.rows import add_users, new_image
from tests.servers import ServerProcess
from tests.test_images_server import jpeg, unique, upload_many

OWNER, STRANGER = 1, 2


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "vitrine.db")
    add_users(database.conn, "owner", "stranger")
    return database


def _make_private(conn: sqlite3.Connection, image_id: int) -> None:
    changed = repo.update_image(
        conn, image_id, repo.Changes(private=True, title="secret"), editor=OWNER
    )
    assert changed is not None and changed.private


def test_a_write_checked_before_the_owner_hid_the_image_changes_nothing(db: Database) -> None:
    conn = db.conn
    image_id = repo.insert_image(conn, new_image(1, owner_id=OWNER, title="public"))
    # The stranger's permission was checked while the image was public (as `_editable` does);
    # the owner hides it before the write.
    _make_private(conn, image_id)
    assert repo.update_image(conn, image_id, repo.Changes(price_cents=1), editor=STRANGER) is None
    assert not repo.soft_delete(conn, image_id, editor=STRANGER)
    row = repo.image_by_id(conn, image_id)
    assert row is not None and (row.price_cents, row.deleted_at) == (0, None)
    # The refused delete left it in the text index too: its owner still finds it by its words.
    assert repo.search_ids(conn, OWNER, '"secret"') == [image_id]
    # The owner's own writes still apply, and return the row as changed.
    changed = repo.update_image(conn, image_id, repo.Changes(price_cents=5), editor=OWNER)
    assert changed is not None and changed.price_cents == 5
    assert repo.soft_delete(conn, image_id, editor=OWNER)


def _batch_ids(encoded: Frames) -> list[int]:
    ids, frames = [], encoded.data
    while frames:
        (length,) = framing.HEADER.unpack_from(frames)
        body = frames[framing.HEADER.size : framing.HEADER.size + length]
        frames = frames[framing.HEADER.size + length :]
        message = codec.decode_response(body)
        assert isinstance(message, Batch)
        ids += [item.id for item in message.items]
    return ids


def test_a_browse_does_not_show_an_image_hidden_between_its_two_reads(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = db.conn
    shown = repo.insert_image(conn, new_image(1, owner_id=OWNER, title="stays"))
    hidden = repo.insert_image(conn, new_image(2, owner_id=OWNER, title="public"))
    gone = repo.insert_image(conn, new_image(3, owner_id=OWNER, title="deleted"))
    real_browse_ids = repo.browse_ids

    def browse_ids_then_owner_commits(*args: object, **kwargs: object) -> list[int]:
        ids = real_browse_ids(*args, **kwargs)  # type: ignore[arg-type]
        _make_private(conn, hidden)  # the owner's commit lands between the two statements
        assert repo.soft_delete(conn, gone, editor=OWNER)
        return ids

    monkeypatch.setattr(listings.repo, "browse_ids", browse_ids_then_owner_commits)
    cursor = listings.KeysetCursor([], False, 2**62)
    frames, more = listings._keyset_frames(
        conn,
        None,
        STRANGER,
        7,
        cursor,
        10,
        False,
        "token",  # type: ignore[arg-type]
    )
    assert (_batch_ids(frames), more) == ([shown], False)


# --- through a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    process = ServerProcess(tmp_path_factory.mktemp("races")).start()
    yield process
    process.stop()


def _log_in(conn: ServerConnection, name: str) -> None:
    conn.call(Login(id=0, name=name, password="correct horse"), Session)


def test_a_login_as_someone_else_leaves_the_last_users_listings_behind(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = unique("alice"), unique("bob")
    server.user_connection(tmp_path / "b", bob).close()
    conn = server.user_connection(tmp_path / "a", alice)
    try:
        word = unique("hush")
        upload_many(conn, [jpeg(900 + k) for k in range(3)], title=f"{word} item", private=True)
        frames = list(conn.stream(TextSearch(id=0, text=word, options=ListingOptions(limit=1))))
        cursor = frames[-1].cursor
        assert cursor is not None and [i.id for f in frames for i in f.items]
        _log_in(conn, bob)  # same connection, another user, no logout between
        with pytest.raises(VitrineError) as refused:
            list(conn.stream(More(id=0, cursor=cursor, options=ListingOptions(limit=10))))
        assert refused.value.code == ErrorCode.NOT_FOUND
        assert "no longer open" in refused.value.message
    finally:
        conn.close()


def test_a_search_cursor_stays_with_the_same_user_logging_in_again(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = unique("alice")
    conn = server.user_connection(tmp_path / "a", alice)
    try:
        word = unique("own")
        upload_many(conn, [jpeg(950 + k) for k in range(3)], title=f"{word} item")
        first = list(conn.stream(TextSearch(id=0, text=word, options=ListingOptions(limit=1))))
        _log_in(conn, alice)
        rest = list(conn.stream(More(id=0, cursor=first[-1].cursor, options=ListingOptions())))
        assert len([i for f in first + rest for i in f.items]) == 3
    finally:
        conn.close()


def test_a_listing_answered_after_a_login_as_someone_else_keeps_no_cursor() -> None:
    """Requests of one connection run concurrently: a search by alice that ends after the
    connection logged in as bob must not leave its cursor for bob to page through."""
    alice, bob = (User(n, name, "x", False) for n, name in ((1, "alice"), (2, "bob")))
    state = ConnectionState(peer="test")
    ctx = RequestContext(cast(Services, SimpleNamespace(config=ServerConfig())), state)
    state.start(alice, 1)
    cursor = listings.KeysetCursor([], False, 10)
    state.start(bob, 2)  # the login lands while alice's search is still being read
    listings._keep(ctx, "alices", cursor, viewer=alice.id)
    assert listings._cursors(ctx) == {}
    listings._keep(ctx, "bobs", cursor, viewer=bob.id)
    assert list(listings._cursors(ctx)) == ["bobs"]
