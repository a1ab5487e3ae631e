"""Text search folds compatibility forms and case the same way on both sides: full-width
letters, ligatures, Roman numerals, `ß` and Greek (final sigma, accents) are found by their
plain spellings, accents still do not matter for Latin, prefixes still work, and the titles
shown stay as typed. The version-7 migration refolds the text index of an existing database.
Checked on a real database, through the same query builder as the server, and on a real
server."""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.catalog import TextSearch
from repository import images as repo
from repository.database import Database
from repository.migrations import MIGRATIONS
from service.listings import fts_query
from shell.connection import ServerConnection
from tests.rows import add_users, new_image, rewind_schema
from tests.servers import ServerProcess
from tests.test_images_server import ids_of, jpeg, listing, unique, upload
from util.catalogue_text import fold_for_search

MISSING_WEIGHTS = "/nonexistent/vitrine-test/no-such.weights.h5"

TITLES = {
    "wide": "ＦＵＬＬＷＩＤＴＨ ﬁne Ⅻ",
    "greek": "ΣΊΣΥΦΟΣ",
    "street": "Große Straße",
    "cafe": "Café crème",
    "turkish": "İstanbul kilim",
    "plain": "Fine xii fullwidth",
}

#: (what is typed, which titles it finds)
CASES = [
    ("fullwidth", {"wide", "plain"}),
    ("ＦＵＬＬＷＩＤＴＨ", {"wide", "plain"}),
    ("fine", {"wide", "plain"}),
    ("ﬁne", {"wide", "plain"}),
    ("xii", {"wide", "plain"}),
    ("Ⅻ", {"wide", "plain"}),
    ("fullw*", {"wide", "plain"}),
    ("σισυφος", {"greek"}),
    ("Σίσυφος", {"greek"}),
    ("σισυ*", {"greek"}),
    ("strasse", {"street"}),
    ("straße", {"street"}),
    ("STRASSE grosse", {"street"}),
    ("stra*", {"street"}),
    ("cafe", {"cafe"}),
    ("café", {"cafe"}),
    ("CAFÉ creme", {"cafe"}),
    ("caf*", {"cafe"}),
    ("istanbul", {"turkish"}),
    ("İstanbul", {"turkish"}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, dict[str, int]]]:
    db = Database(tmp_path_factory.mktemp("folding") / "vitrine.db")
    add_users(db.conn, "a")
    ids = {
        key: repo.insert_image(db.conn, new_image(n, title=title))
        for n, (key, title) in enumerate(TITLES.items())
    }
    yield db, ids
    db.close()


def found(conn: sqlite3.Connection, text: str) -> set[int]:
    return set(repo.search_ids(conn, 1, fts_query(text)))


@pytest.mark.parametrize(("text", "keys"), CASES)
def test_folded_spellings_find_each_other(
    store: tuple[Database, dict[str, int]], text: str, keys: set[str]
) -> None:
    db, ids = store
    assert found(db.conn, text) == {ids[k] for k in keys}


def test_titles_are_stored_as_typed(store: tuple[Database, dict[str, int]]) -> None:
    db, ids = store
    records = repo.images_by_ids(db.conn, list(ids.values()), 1)
    assert {r.title for r in records} == set(TITLES.values())


def test_the_version_7_migration_refolds_an_existing_index(tmp_path: Path) -> None:
    """A database from before v7 has its text index unfolded; opening it folds it, live images
    only (a deleted image has no row and gets none)."""
    path = tmp_path / "vitrine.db"
    db = Database(path)
    add_users(db.conn, "a")
    ids = {
        key: repo.insert_image(db.conn, new_image(n, title=t))
        for n, (key, t) in enumerate(TITLES.items())
    }
    gone = repo.insert_image(db.conn, new_image(99, title="ＦＵＬＬＷＩＤＴＨ gone"))
    repo.soft_delete(db.conn, gone)
    # What a version-6 server wrote: the columns as they are.
    db.conn.execute("DELETE FROM images_fts")
    db.conn.execute(
        "INSERT INTO images_fts (rowid, title, description, tags, filename) "
        "SELECT id, title, description, '', filename FROM images WHERE deleted_at IS NULL"
    )
    rewind_schema(db.conn, 6)
    assert found(db.conn, "fullwidth") == {ids["plain"]}
    db.close()

    db = Database(path)
    try:
        assert db.schema_version == len(MIGRATIONS) >= 7
        assert found(db.conn, "fullwidth") == {ids["wide"], ids["plain"]}
        assert found(db.conn, "σισυφος") == {ids["greek"]}
        assert repo.database_problems(db.conn) == []
    finally:
        db.close()


# --- a title finds itself -----------------------------------------------------------------------

#: Letters the index's tokenizer and Python agree are letters, in the forms that fold: ASCII,
#: accented and decomposed Latin, ß and ẞ, Greek with accents and final sigma, Cyrillic,
#: full-width Latin and digits, ligatures, Roman numerals, dotted İ; and what separates words.
LETTERS = "abcxyzABCXYZ019éÉèñÑçøœæßẞαβγσςΣΑάΆίΐΰώΏжйёЖЙЁＡＢｘｙ０９ﬁﬂﬀⅫⅳİ\u0301\u0308"
SEPARATORS = " -'’.,!/"

word = st.text(st.sampled_from(LETTERS), min_size=1, max_size=8).filter(lambda w: w[0].isalnum())
title = st.lists(st.tuples(word, st.sampled_from(SEPARATORS)), min_size=1, max_size=5).map(
    lambda parts: "".join(w + s for w, s in parts).strip()
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database(tmp_path_factory.mktemp("folding-property") / "vitrine.db")
    add_users(db.conn, "a")
    yield db
    db.close()


_blobs = iter(range(1000, 10**9))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(title)
def test_a_title_finds_itself_by_each_of_its_words(scratch: Database, text: str) -> None:
    """By every space-separated piece as typed, upper-cased, and as a prefix of its first
    two letters."""
    image_id = repo.insert_image(scratch.conn, new_image(next(_blobs), title=text))
    try:
        for piece in text.split():
            if not any(ch.isalnum() for ch in piece):
                continue
            for typed in (piece, piece.upper(), fold_for_search(piece)):
                assert image_id in found(scratch.conn, typed), (text, typed, fts_query(typed))
            # A prefix of one or two letters, never cutting a letter from its marks.
            folded = fold_for_search(piece)
            cut = 2 if len(folded) > 2 and folded[1].isalnum() else 1
            while cut < len(folded) and unicodedata.category(folded[cut])[0] == "M":
                cut += 1
            if folded[0].isalnum():
                head = folded[:cut] + "*"
                assert image_id in found(scratch.conn, head), (text, head, fts_query(head))
    finally:
        repo.soft_delete(scratch.conn, image_id)


# --- on a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("folding-server"), env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}
    ).start()
    yield process
    process.stop()


@pytest.fixture
def seller(server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(tmp_path / "s", unique("seller"))
    yield conn
    conn.close()


def test_search_on_a_server_folds_and_keeps_joined_words_together(seller: ServerConnection) -> None:
    mark = unique("fold")
    wide = upload(seller, jpeg(71, (32, 24)), title=f"ＦＵＬＬＷＩＤＴＨ ﬁne Ⅻ {mark}").image_id
    greek = upload(seller, jpeg(72, (32, 24)), title=f"ΣΊΣΥΦΟΣ {mark}").image_id
    sleeve = upload(seller, jpeg(73, (32, 24)), title=f"Long-sleeve top {mark}").image_id
    short = upload(
        seller, jpeg(74, (32, 24)), title=f"Long dress with short sleeves {mark}"
    ).image_id
    tagged = upload(
        seller, jpeg(75, (32, 24)), title=f"Linen {mark}", tags=["summer-dress"]
    ).image_id
    torn = upload(seller, jpeg(77, (32, 24)), title=f"Long coat, one sleeve torn {mark}").image_id
    summer = upload(
        seller, jpeg(76, (32, 24)), title=f"Something for summer {mark}", tags=["dress"]
    ).image_id

    def search(text: str) -> list[int]:
        return ids_of(listing(seller, TextSearch(id=0, text=f"{text} {mark}")))

    assert search("fullwidth fine xii") == [wide]
    assert search("σισυφος") == [greek]
    assert sorted(search("long-sleeve")) == [sleeve]
    assert sorted(search("long sleeve*")) == sorted([sleeve, short, torn])
    assert search("summer-dress") == [tagged]
    assert sorted(search("summer dress")) == sorted([tagged, summer])
    (batch,) = listing(seller, TextSearch(id=0, text=f"xii {mark}"))
    assert batch[0].title == f"ＦＵＬＬＷＩＤＴＨ ﬁne Ⅻ {mark}"  # shown as typed
