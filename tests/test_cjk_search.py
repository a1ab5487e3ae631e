"""Chinese and Japanese are written without spaces, and the index's tokenizer (unicode61) has no
dictionary: each ideograph and kana is a word of its own in the index, and a run of them typed in
a search is a phrase of those characters, so `连衣裙` finds "红色连衣裙" (the three characters
together, in order, anywhere) and `東京` finds "東京タワーのTシャツ". Checked on the pure
functions, on a real FTS5 table, on a real server, and through the version-8 migration, which
writes the rows of an existing database again."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
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
from util.catalogue_text import fold_for_search, index_text, is_unspaced, split_unspaced

MISSING_WEIGHTS = "/nonexistent/vitrine-test/no-such.weights.h5"

# --- what the index holds -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("红色连衣裙", ["红", "色", "连", "衣", "裙"]),
        ("東京タワーのTシャツ", ["東", "京", "タ", "ワ", "ー", "の", "t", "シ", "ャ", "ツ"]),
        ("東京2024 Summer", ["東", "京", "2024", "summer"]),
        ("ｼｬﾂ", ["シ", "ャ", "ツ"]),  # half-width katakana: full-width after NFKC
        ("人々", ["人", "々"]),  # the iteration mark is a letter (Lm) of its own
        ("二〇二四年", ["二", "〇", "二", "四", "年"]),
        ("𠮷野家", ["𠮷", "野", "家"]),  # Extension B, outside the Basic Multilingual Plane
        ("\uf900\uf901", ["豈", "更"]),  # compatibility ideographs: NFKC makes them unified
        ("ㇷ゚ab", ["ㇷ゚", "ab"]),  # a combining sound mark stays with its kana
    ],
)
def test_index_text_sets_each_ideograph_and_kana_apart(text: str, tokens: list[str]) -> None:
    assert index_text(text).split() == tokens


def test_index_text_is_the_folding_with_the_unspaced_characters_set_apart() -> None:
    for text in ("Café crème", "ΣΊΣΥΦΟΣ", "ＦＵＬＬＷＩＤＴＨ ﬁne Ⅻ", "t-shirt o'neill"):
        assert index_text(text) == fold_for_search(text)  # nothing else changes
    assert index_text("한국어 옷") == "한국어 옷"  # Korean has spaces between words
    assert index_text("เสื้อ") == "เสื้อ"  # Thai: left to the tokenizer
    assert index_text("Ｔシャツ") == "t シ ャ ツ "
    assert split_unspaced("连衣裙") == " 连 衣 裙 "
    flags = "".join("1" if is_unspaced(ch) else "0" for ch in "a々ー〇漢かカ한ไ\u3099")
    assert flags == "0111111000"


# --- the query ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("连衣裙", '"连 衣 裙"'),
        ("红色 连衣裙", '"红 色" "连 衣 裙"'),
        ("東京*", '"東 京"*'),
        ('"東京 タワー"', '"東 京 タ ワ ー"'),
        ('"東京 タワ"*', '"東 京 タ ワ"*'),
        ("Tシャツ", '"t シ ャ ツ"'),
        ("東京2024", '"東 京 2024"'),
        ("東京・大阪", '"東 京" "大 阪"'),
        ("ｼｬﾂ", '"シ ャ ツ"'),
        ("t-シャツ", '"t シ ャ ツ"'),
        ("连衣裙 dress-shirt", '"连 衣 裙" "dress shirt"'),
        ("連衣 OR 裙", '"連 衣" "or" "裙"'),
    ],
)
def test_a_run_of_ideographs_or_kana_is_a_phrase_of_its_characters(text: str, query: str) -> None:
    assert fts_query(text) == query


TITLES = {
    "dress": "红色连衣裙",
    "two": "连衣",
    "apart": "衣裙和连帽衫",
    "tokyo": "東京タワーのTシャツ",
    "kyoto": "京都の東山",
    "games": "東京2024記念",
    "latin": "Red summer dress",
    "mixed": "Linen dress 连衣裙",
}


@pytest.fixture(scope="module")
def index() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE VIRTUAL TABLE t USING fts5(title, tokenize = 'unicode61 remove_diacritics 2')"
    )
    conn.executemany(
        "INSERT INTO t(rowid, title) VALUES (?, ?)",
        [(n, index_text(title)) for n, title in enumerate(TITLES.values(), 1)],
    )
    yield conn
    conn.close()


def found(index: sqlite3.Connection, text: str) -> set[str]:
    keys = list(TITLES)
    rows = index.execute("SELECT rowid FROM t WHERE t MATCH ?", (fts_query(text),))
    return {keys[rowid - 1] for (rowid,) in rows}


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("连衣裙", {"dress", "mixed"}),
        ("衣裙", {"dress", "apart", "mixed"}),
        ("连衣", {"dress", "two", "mixed"}),
        ('"连衣裙"', {"dress", "mixed"}),
        ("東京", {"tokyo", "games"}),  # not "kyoto", which has 東 and 京 apart
        ("京都", {"kyoto"}),
        ("シャツ", {"tokyo"}),
        ("Tシャツ", {"tokyo"}),
        ("ｼｬﾂ", {"tokyo"}),
        ("タワー", {"tokyo"}),
        ("シャ*", {"tokyo"}),
        ('"京 タワ"*', {"tokyo"}),
        ('"東京 タワー"', {"tokyo"}),
        ("東京2024", {"games"}),
        ("dress 衣裙", {"mixed"}),
    ],
)
def test_a_run_finds_titles_holding_it_anywhere(
    index: sqlite3.Connection, text: str, keys: set[str]
) -> None:
    assert found(index, text) == keys


def test_the_characters_must_stand_together_in_order(index: sqlite3.Connection) -> None:
    assert found(index, "连衣裙") == {"dress", "mixed"}
    assert found(index, "裙连衣") == set()  # all three are in "apart", but not together
    assert found(index, "红色连衣裙") == {"dress"}
    assert found(index, "東京") == {"tokyo", "games"}  # not "kyoto": 東 and 京 apart
    assert found(index, '"東京 タワー"') == {"tokyo"}
    assert found(index, '"タワー 東京"') == set()


def test_latin_words_and_prefixes_are_unaffected(index: sqlite3.Connection) -> None:
    assert found(index, "dress") == {"latin", "mixed"}
    assert found(index, "dre*") == {"latin", "mixed"}
    assert found(index, "東京*") == {"tokyo", "games"}
    assert found(index, "dress 连衣") == {"mixed"}


#: Pieces of a title: single ideographs and kana (with ー and 々), or Latin words and numbers.
unspaced = st.sampled_from("连衣裙红色東京京都タワーのシャツ々ひらがなカタカナ𠮷")
latin = st.text(st.sampled_from("abcxyz019"), min_size=1, max_size=5)
pieces = st.lists(st.one_of(unspaced, latin), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(pieces, st.data())
def test_every_run_of_pieces_finds_its_title(parts: list[str], data: st.DataObject) -> None:
    """A title made of the pieces, written without spaces except between two Latin words, is
    found by any run of consecutive pieces, written the same way."""

    def written(run: list[str]) -> str:
        out = run[0]
        for before, part in pairwise(run):
            out += " " + part if before.isascii() and part.isascii() else part
        return out

    start = data.draw(st.integers(0, len(parts) - 1))
    end = data.draw(st.integers(start + 1, len(parts)))
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(title, tokenize = 'unicode61')")
        conn.execute("INSERT INTO t(rowid, title) VALUES (1, ?)", (index_text(written(parts)),))
        query = fts_query(written(parts[start:end]))
        assert conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (query,)).fetchall() == [(1,)], (
            written(parts),
            query,
        )
    finally:
        conn.close()


# --- the version-8 migration --------------------------------------------------------------------


def test_the_version_8_migration_splits_an_existing_index(tmp_path: Path) -> None:
    """A database from before v8 holds each run of ideographs and kana as one word, which the
    query now made no longer matches; opening it writes every live row again."""
    path = tmp_path / "vitrine.db"
    db = Database(path)
    add_users(db.conn, "a")
    ids = {
        key: repo.insert_image(db.conn, new_image(n, title=title))
        for n, (key, title) in enumerate(TITLES.items())
    }
    tagged = repo.insert_image(db.conn, new_image(50, title="Linen", tags=["连衣裙"]))
    gone = repo.insert_image(db.conn, new_image(99, title="连衣裙 gone"))
    repo.soft_delete(db.conn, gone)
    MIGRATIONS[6](db.conn)  # what a version-7 server wrote: folded, runs left whole
    rewind_schema(db.conn, 7)
    assert search(db.conn, "连衣裙") == set()
    assert search(db.conn, "dress") == {ids["latin"], ids["mixed"]}
    db.close()

    db = Database(path)
    try:
        assert db.schema_version == len(MIGRATIONS) >= 8
        assert search(db.conn, "连衣裙") == {ids["dress"], ids["mixed"], tagged}
        assert search(db.conn, "東京") == {ids["tokyo"], ids["games"]}
        assert search(db.conn, "シャツ") == {ids["tokyo"]}
        assert search(db.conn, "dress") == {ids["latin"], ids["mixed"]}
        assert repo.database_problems(db.conn) == []
    finally:
        db.close()


def search(conn: sqlite3.Connection, text: str) -> set[int]:
    return set(repo.search_ids(conn, 1, fts_query(text)))


def test_the_rewrite_does_not_read_a_damaged_index(tmp_path: Path) -> None:
    """The upgrade replaces everything the index holds, so blocks of it that no longer parse
    must not stop it (and with it the server's start), nor survive it."""
    path = tmp_path / "vitrine.db"
    db = Database(path)
    add_users(db.conn, "a")
    dress = repo.insert_image(db.conn, new_image(1, title="红色连衣裙"))
    for n in range(2, 300):
        repo.insert_image(db.conn, new_image(n, title=f"plain shirt number {n}"))
    MIGRATIONS[6](db.conn)
    db.conn.execute("UPDATE images_fts_data SET block = randomblob(length(block)) WHERE id > 10")
    rewind_schema(db.conn, 7)
    db.conn.commit()
    db.close()

    db = Database(path)
    try:
        assert db.schema_version == len(MIGRATIONS)
        assert search(db.conn, "连衣裙") == {dress}
        assert len(search(db.conn, "shirt")) == 298
        db.conn.execute("INSERT INTO images_fts(images_fts) VALUES('integrity-check')")
    finally:
        db.close()


# --- on a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("cjk-server"), env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}
    ).start()
    yield process
    process.stop()


@pytest.fixture
def seller(server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(tmp_path / "s", unique("seller"))
    yield conn
    conn.close()


def test_search_on_a_server_finds_chinese_and_japanese_inside_titles(
    seller: ServerConnection,
) -> None:
    mark = unique("cjk")

    def add(seed: int, title: str, **fields: object) -> int:
        return upload(seller, jpeg(seed, (32, 24)), title=f"{title} {mark}", **fields).image_id

    dress = add(81, "红色连衣裙")
    two = add(82, "连衣")
    apart = add(83, "衣裙和连帽衫")
    tokyo = add(84, "東京タワーのTシャツ")
    kyoto = add(85, "京都の東山")
    latin = add(86, "Red summer dress")
    tagged = add(87, "Linen", tags=["连衣裙"])

    def search(text: str) -> set[int]:
        return set(ids_of(listing(seller, TextSearch(id=0, text=f"{text} {mark}"))))

    assert search("连衣裙") == {dress, tagged}
    assert search("连衣") == {dress, two, tagged}
    assert search("裙连衣") == set()  # all in "衣裙和连帽衫", but not together
    assert search("東京") == {tokyo}
    assert search("京都") == {kyoto}
    assert search("シャツ") == {tokyo}
    assert search("Tシャツ") == {tokyo}
    assert search("東京*") == {tokyo}
    assert search('"東京 タワー"') == {tokyo}
    assert search("dress") == {latin}
    assert search("red") == {latin}
    assert search("连") == {dress, two, apart, tagged}
    (batch,) = listing(seller, TextSearch(id=0, text=f"東京 {mark}"))
    assert batch[0].title == f"東京タワーのTシャツ {mark}"  # shown as typed
