"""Session 20's tidying: one table-fitting loop, one text-index row, one pending warning.

These changes keep behaviour: the tests pin what the shared code must keep doing for each of
its users (listings, the cart, `orders`; uploads, `bench.fill`, the migrations; `view_cart`).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from bench.fill import fill
from repository import images as repo
from repository.database import Database
from service.listings import fts_query
from shell import listing
from shell.cart_store import CartItem, PendingCheckout
from shell.connection import ServerConnection
from tests import test_cart_e2e as e2e
from tests.rows import add_users, new_image, rewind_schema
from tests.test_cart_e2e import Buyer, item
from util.catalogue_text import index_text

# The cart tests' server, seller and buyer.
server, home, seller, buyer = e2e.server, e2e.home, e2e.seller, e2e.buyer


# --- one table-fitting loop ---------------------------------------------------------------------


def _columns(title: str) -> list[listing.Column]:
    return [
        listing.Column("id", ["123456"], justify="right"),
        listing.Column("title", [title], least=12, weight=1),
        listing.Column("price", ["1,234.56"], justify="right"),
    ]


def test_first_fit_takes_the_first_shape_that_fits_and_lays_out_no_more() -> None:
    columns = _columns("a title of some forty cells, give or take")
    laid_out: list[int | None] = []

    def lay_out(picture: int | None) -> tuple[list[listing.Column], bool, int | None]:
        laid_out.append(picture)
        return columns, False, picture

    fit = listing.first_fit([40, 20, None], 60, lay_out)
    assert fit is not None and fit.shape == 20 and fit.columns is columns
    assert fit.widths == listing.fold_widths(columns, 60, False, 20)
    assert laid_out == [40, 20]


def test_first_fit_is_none_when_not_even_the_narrowest_shape_fits() -> None:
    columns = _columns("a title")
    assert listing.first_fit([False, True], 20, lambda compact: (columns, compact, None)) is None
    assert listing.first_fit([False, True], 30, lambda compact: (columns, compact, None))


# --- one text-index row -------------------------------------------------------------------------


def _fts_row(conn: sqlite3.Connection, image_id: int) -> tuple[str, ...]:
    row = conn.execute(
        "SELECT title, description, tags, filename FROM images_fts WHERE rowid = ?", (image_id,)
    ).fetchone()
    return tuple(row)


def test_an_upload_writes_its_index_row_folded_and_set_apart(tmp_path: Path) -> None:
    db = Database(tmp_path / "vitrine.db")
    try:
        add_users(db.conn, "a")
        fields = {
            "title": "ＦＵＬＬＷＩＤＴＨ",
            "description": "Straße",
            "filename": "東京.jpg",
            "tags": ["连衣裙", "summer"],
        }
        tagged = repo.insert_image(db.conn, new_image(1, **fields))
        expected = ("fullwidth", "strasse", " 连 衣 裙  summer", " 東 京 .jpg")
        assert _fts_row(db.conn, tagged) == expected
        assert (
            repo.index_row("ＦＵＬＬＷＩＤＴＨ", "Straße", ["连衣裙", "summer"], "東京.jpg")
            == expected
        )
        bare = repo.insert_image(db.conn, new_image(2, title="No tags"))
        assert _fts_row(db.conn, bare) == (index_text("No tags"), "", "", "")
        assert set(repo.search_ids(db.conn, 1, fts_query("连衣裙"))) == {tagged}
        assert set(repo.search_ids(db.conn, 1, fts_query("fullwidth strasse"))) == {tagged}
    finally:
        db.close()


def test_a_filled_image_has_the_index_row_an_upload_would_have(tmp_path: Path) -> None:
    filled = fill(tmp_path / "server", 12, distinct=3, weights="", embeddings=False)
    conn = sqlite3.connect(filled.data_dir / "vitrine.db")
    try:
        ids = [row[0] for row in conn.execute("SELECT id FROM images ORDER BY id")]
        assert len(ids) == 12
        for image_id in ids:
            expected = repo.fts_texts(conn, image_id)
            assert expected is not None
            title, description, tags, filename = _fts_row(conn, image_id)
            # fill writes the tags sorted, an upload in the order of their ids
            assert (title, description, filename) == (expected[0], expected[1], expected[3])
            assert sorted(tags.split()) == sorted(expected[2].split())
    finally:
        conn.close()


def test_a_database_from_before_v7_is_searched_as_a_new_one(tmp_path: Path) -> None:
    """The v7 and v8 rewrites one after the other, from an index that held the text as typed."""
    path = tmp_path / "vitrine.db"
    db = Database(path)
    add_users(db.conn, "a")
    wide = repo.insert_image(db.conn, new_image(1, title="ＦＵＬＬＷＩＤＴＨ dress"))
    dress = repo.insert_image(db.conn, new_image(2, title="红色连衣裙", tags=["Straße"]))
    gone = repo.insert_image(db.conn, new_image(3, title="连衣裙 gone"))
    repo.soft_delete(db.conn, gone)
    db.conn.execute("DELETE FROM images_fts")  # what a version-6 server wrote: the text as typed
    db.conn.execute(
        "INSERT INTO images_fts (rowid, title, description, tags, filename) "
        "VALUES (?, 'ＦＵＬＬＷＩＤＴＨ dress', '', '', ''), (?, '红色连衣裙', '', 'Straße', '')",
        (wide, dress),
    )
    rewind_schema(db.conn, 6)
    assert set(repo.search_ids(db.conn, 1, fts_query("连衣裙"))) == set()
    db.close()

    db = Database(path)
    try:
        assert db.schema_version >= 8
        assert set(repo.search_ids(db.conn, 1, fts_query("连衣裙"))) == {dress}
        assert set(repo.search_ids(db.conn, 1, fts_query("fullwidth"))) == {wide}
        assert set(repo.search_ids(db.conn, 1, fts_query("strasse"))) == {dress}
        assert _fts_row(db.conn, dress) == repo.fts_texts(db.conn, dress)
        assert repo.database_problems(db.conn) == []
    finally:
        db.close()


# --- view_cart's warning of a checkout without an answer ----------------------------------------


def _leave_a_checkout_pending(buyer: Buyer, image: int) -> None:
    with buyer.store().edit() as cart:
        sent = [CartItem(image_id=image, quantity=1, price_cents=500, title="")]
        cart.pending = PendingCheckout(key="k" * 32, lines=sent, sent_at=time.time())


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_view_cart_warns_once_of_a_checkout_without_an_answer(
    seller: ServerConnection, buyer: Buyer, as_json: bool
) -> None:
    image = item(seller, 500, 5, title="Waiting for an answer")
    assert buyer(f"add_to_cart {image}").code == 0
    _leave_a_checkout_pending(buyer, image)
    seen = buyer("view_cart --json" if as_json else "view_cart --no-images")
    assert seen.code == 0, seen
    assert seen.err.count("got no answer") == 1, seen
    assert "got no answer" not in seen.out, seen
    if as_json:
        lines = seen.json_lines()
        assert len(lines) == len(seen.out.splitlines()) == 2, seen  # stdout is JSON alone
        assert lines[-1]["checkout_pending"] is True, seen
    else:
        assert "Waiting for an answer" in seen.out, seen


def test_an_empty_cart_still_warns_once_of_a_checkout_without_an_answer(
    seller: ServerConnection, buyer: Buyer
) -> None:
    image = item(seller, 600, 5, title="Bought, perhaps")
    _leave_a_checkout_pending(buyer, image)
    seen = buyer("view_cart")
    assert seen.code == 0, seen
    assert seen.err.count("got no answer") == 1, seen
    assert "Your cart is empty" in seen.out, seen
