"""What sellers type (session 20): a signed price, tags in compatibility forms, the total of
tags per image, titles and descriptions that NFC lengthens, and titles that show nothing.

The shell and the server are the real programs (tests.servers); the schema step is run on a
real SQLite file the way a server's start runs it.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.catalog import (
    Browse,
    GetImage,
    ImageDetails,
    ImageUpdated,
    ListTags,
    TagList,
    TextSearch,
    UpdateImage,
)
from protocol.errors import ErrorCode
from protocol.limits import MAX_DESCRIPTION_CHARS, MAX_TAG_CHARS, MAX_TAGS, MAX_TITLE_CHARS
from repository import images as repo
from repository.database import Database
from repository.migrations import MIGRATIONS
from service.listings import fts_query
from shell.connection import ServerConnection
from tests.rows import add_users, new_image, rewind_schema
from tests.servers import ServerProcess, create_users, json_lines, run_client
from tests.test_images_server import error_of, ids_of, jpeg, listing, unique, upload
from util import catalogue_text
from util.money import parse_price

MISSING_WEIGHTS = "/nonexistent/vitrine-test/no-such.weights.h5"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("seller-input"), env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}
    ).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("root", "sam"), PASSWORD)
    yield process
    process.stop()


@pytest.fixture
def seller(server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(tmp_path / "wire", "sam", PASSWORD)
    yield conn
    conn.close()


def shell(server: ServerProcess, home: Path, *commands: str) -> tuple[int, str, str]:
    done = run_client(
        server,
        "login sam",
        *commands,
        config_dir=home,
        password=PASSWORD,
        extra_env={"COLUMNS": "200"},
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.returncode, done.stdout, done.stderr


def details(conn: ServerConnection, image_id: int) -> ImageDetails:
    return conn.call(GetImage(id=0, image_id=image_id), ImageDetails)


# --- 1. a signed price ---------------------------------------------------------------------------


def test_a_price_with_a_plus_is_refused_with_advice() -> None:
    for typed in ("+5", " +5.50", "+0"):
        with pytest.raises(ValueError, match="prices are set, not changed by an amount"):
            parse_price(typed)
    with pytest.raises(ValueError, match="to set it to 5 write 5"):
        parse_price("+5")
    assert parse_price("-0") == 0 and parse_price("5") == 500


def test_update_image_price_plus_five_leaves_the_price_alone(
    server: ServerProcess, seller: ServerConnection, tmp_path: Path
) -> None:
    """`--quantity +5` adds 5 on the same command line; `--price +5` used to set 5.00."""
    image_id = upload(seller, jpeg(2001, (32, 24)), price_cents=1250, quantity=3).image_id
    code, out, err = shell(server, tmp_path / "sh", f"update_image {image_id} --price +5")
    assert code != 0
    assert "prices are set, not changed by an amount" in out + err
    assert "to set it to 5 write 5" in out + err
    assert details(seller, image_id).image.price_cents == 1250
    code, out, err = shell(server, tmp_path / "sh", f"update_image {image_id} --price 5 --json")
    assert code == 0, out + err
    assert json_lines(out)[-1]["price"] == "5.00"


# --- 2. tags folded like search ------------------------------------------------------------------


def test_tags_fold_like_search_and_keep_their_accents() -> None:
    fold = catalogue_text.normalise_tag
    assert fold("Straße") == fold("STRASSE") == "strasse"
    assert fold("ＳＡＬＥ") == "sale"
    assert fold("ﬁne") == "fine"
    assert fold("ｆｕｌｌ") == "full"
    assert fold("Ｓｕｍｍｅｒ　Ｄｒｅｓｓ") == "summer-dress"  # an ideographic space joins too
    assert fold("Café") == fold("cafe\u0301") == "café" != fold("cafe")


def test_tags_typed_in_other_forms_are_the_plain_tag_on_a_server(
    server: ServerProcess, seller: ServerConnection, tmp_path: Path
) -> None:
    mark = unique("mk")
    plain = upload(seller, jpeg(2002, (32, 24)), title=mark, tags=["strasse", "sale"]).image_id
    image_id = upload(seller, jpeg(2003, (32, 24)), title=mark).image_id
    code, out, err = shell(
        server, tmp_path / "sh", f"update_image {image_id} --add-tags Straße,ＳＡＬＥ,ﬁne --json"
    )
    assert code == 0, out + err
    assert sorted(details(seller, image_id).image.tags) == ["fine", "sale", "strasse"]
    for typed in ("sale", "SALE", "ｓａｌｅ"):
        code, out, err = shell(server, tmp_path / "sh", f"browse_by_tags {typed} --json")
        assert code == 0, out + err
        assert {image_id, plain} <= {line["id"] for line in json_lines(out)}, typed
    both = ids_of(listing(seller, Browse(id=0, tags=["Straße", "ＳＡＬＥ"])))
    assert {image_id, plain} <= set(both)
    searched = ids_of(listing(seller, TextSearch(id=0, text=f"strasse {mark}")))
    assert {image_id, plain} <= set(searched)
    names = [tag.name for tag in seller.call(ListTags(id=0), TagList).tags]
    assert "ｓａｌｅ" not in names and "straße" not in names and "ﬁne" not in names
    assert names.count("sale") == 1


def _v8_database(path: Path) -> tuple[Database, dict[str, int]]:
    """A database as a version-8 server left it: tags stored with NFC and lower() only."""
    db = Database(path)
    add_users(db.conn, "a")
    ids = {
        "both": repo.insert_image(
            db.conn, new_image(1, title="Map", tags=["straße", "strasse", "map"])
        ),
        "sharp": repo.insert_image(db.conn, new_image(2, title="Sign", tags=["straße"])),
        "wide": repo.insert_image(db.conn, new_image(3, title="Coat", tags=["ＳＡＬＥ"])),
        "plain": repo.insert_image(db.conn, new_image(4, title="Hat", tags=["sale"])),
        "liga": repo.insert_image(db.conn, new_image(5, title="Pen", tags=["ﬁne"])),
    }
    gone = repo.insert_image(db.conn, new_image(6, title="Old", tags=["ＳＡＬＥ", "sale"]))
    repo.soft_delete(db.conn, gone)
    ids["gone"] = gone
    rewind_schema(db.conn, 8)
    return db, ids


def _tag_rows(conn: sqlite3.Connection) -> dict[str, list[int]]:
    rows = conn.execute(
        "SELECT t.name, it.image_id FROM tags t JOIN image_tags it ON it.tag_id = t.id "
        "ORDER BY t.name, it.image_id"
    )
    out: dict[str, list[int]] = {}
    for name, image_id in rows:
        out.setdefault(name, []).append(image_id)
    return out


def test_the_version_9_migration_merges_tags_that_now_fold_alike(tmp_path: Path) -> None:
    path = tmp_path / "vitrine.db"
    db, ids = _v8_database(path)
    assert len(MIGRATIONS) >= 9
    db.close()

    db = Database(path)
    try:
        assert db.schema_version == len(MIGRATIONS)
        conn = db.conn
        names = [row[0] for row in conn.execute("SELECT name FROM tags ORDER BY name")]
        assert names == ["fine", "map", "sale", "strasse"]
        rows = _tag_rows(conn)
        assert rows["strasse"] == sorted([ids["both"], ids["sharp"]])  # one row each
        assert rows["sale"] == sorted([ids["wide"], ids["plain"], ids["gone"]])
        assert rows["fine"] == [ids["liga"]]
        assert repo.image_by_id(conn, ids["both"]).tags == ["map", "strasse"]  # type: ignore[union-attr]
        assert dict(repo.visible_tag_counts(conn, 1)) == {
            "fine": 1,
            "map": 1,
            "sale": 2,
            "strasse": 2,
        }
        tag_ids = repo.tag_ids(conn, [catalogue_text.normalise_tag("ＳＡＬＥ")])
        browsed = repo.browse_ids(
            conn, 1, list(tag_ids.values()), match_any=False, before=None, limit=50
        )
        assert set(browsed) == {ids["wide"], ids["plain"]}
        found = set(repo.search_ids(conn, 1, fts_query("strasse")))
        assert found == {ids["both"], ids["sharp"]}
        (tags_text,) = conn.execute(
            "SELECT tags FROM images_fts WHERE rowid = ?", (ids["both"],)
        ).fetchone()
        assert sorted(tags_text.split()) == ["map", "strasse"]  # each tag once
        assert repo.database_problems(conn) == []
        conn.execute("INSERT INTO images_fts(images_fts) VALUES('integrity-check')")
        # New uploads fold too, onto the merged tags.
        new = repo.insert_image(
            conn, new_image(7, tags=catalogue_text.normalise_tags(["STRASSE", "Straße"]))
        )
        assert _tag_rows(conn)["strasse"] == sorted([ids["both"], ids["sharp"], new])
    finally:
        db.close()


def _plain_tag(raw: str) -> str | None:
    """The tag rule as it was before this session's folding (NFC and lower()), or None."""
    tag = "-".join(unicodedata.normalize("NFC", raw).strip().lower().split())
    if not tag or catalogue_text._is_mark(tag[0]) or len(tag) > MAX_TAG_CHARS:
        return None
    return tag if catalogue_text._fits_tag_rule(tag) else None


def test_folding_never_makes_a_valid_tag_invalid() -> None:
    """Every tag of one character, or one character before or after a letter, that the rule
    accepted before folding is still accepted, stays put when normalised again (so a stored tag
    is found by its own name) and is the same tag whether typed or as stored before v9."""
    refused: list[str] = []
    moving: list[str] = []
    for code in range(0x110000):
        if 0xD800 <= code < 0xE000:
            continue
        ch = chr(code)
        for typed in (ch, f"a{ch}", f"{ch}a"):
            stored = _plain_tag(typed)
            if stored is None:
                continue
            try:
                tag = catalogue_text.normalise_tag(typed)
                again = catalogue_text.normalise_tag(tag)
                from_stored = catalogue_text.normalise_tag(stored)
            except catalogue_text.TextRefused:
                refused.append(typed)
                continue
            if not tag == again == from_stored:
                moving.append(typed)
    assert refused == []
    assert moving == []


#: Letters that folding treats specially: `ß` and `ẞ` (made `ss`), letters whose capital has no
#: composed form with a mark (`J̌`), NFKC's compatibility forms (`½`, `ﬁ`, `Ｓ`, `ŀ`), `İ`
#: (lower() adds a dot) and the Greek sigmas; then any letter or digit, and the separators.
_BASES = st.one_of(
    st.sampled_from(list("ßẞsSjJiIİaAσςΣϹϲ½ﬁＳŀĿ⑴ำ")),
    st.characters(categories=["L", "N"]),
    st.sampled_from(list(" -_.'")),
)
#: Marks that compose with the letter before them or do not, then any mark.
_MARKS = st.one_of(
    st.sampled_from(["\u0301", "\u030c", "\u0307", "\u0323", "\u0345"]),
    st.characters(categories=["M"]),
)
#: Each letter with up to two marks after it, which is where composing goes wrong.
_TAG_TEXT = st.lists(
    st.tuples(_BASES, st.lists(_MARKS, max_size=2)).map(lambda p: p[0] + "".join(p[1])),
    max_size=6,
).map("".join)


@settings(max_examples=1000)
@given(_TAG_TEXT)
def test_a_normalised_tag_normalises_to_itself(raw: str) -> None:
    """A stored tag is found and removed by its own spelling only if normalising it again gives
    it back."""
    try:
        tag = catalogue_text.normalise_tag(raw)
    except catalogue_text.TextRefused:
        return
    assert catalogue_text.normalise_tag(tag) == tag


def test_a_mark_after_sharp_s_or_a_capital_without_composed_form_stays_put() -> None:
    fold = catalogue_text.normalise_tag
    # ß made ss, then composed with the acute that followed it (was "strass\u0301e", which
    # normalised again to "stras\u015be").
    assert fold("straß\u0301e") == fold("stras\u015be") == "stras\u015be"
    # The plain spelling (½ does not fold) composes after lower(): J̌ is ǰ (was "j\u030c½").
    assert fold("J\u030c½") == fold("\u01f0½") == "\u01f0½"


def test_tags_that_folding_would_break_keep_their_spelling() -> None:
    fold = catalogue_text.normalise_tag
    assert fold("A½") == fold("a½") == "a½"  # not a1⁄2, with a fraction slash
    assert fold("Ŀ") == fold("ŀ") == "ŀ"  # not l·
    assert fold("⑴") == "⑴"  # not (1)
    assert fold("ำa") == "ำa"  # not a combining mark first
    assert fold("ß" * 33) == "ß" * 33  # 66 characters as ss
    assert fold("ß" * 32) == "ss" * 32
    assert fold("ẞ") == "ss"


def test_greek_tags_keep_their_final_sigma() -> None:
    fold = catalogue_text.normalise_tag
    assert fold("ΛΌΓΟΣ") == fold("λόγος") == "λόγος"
    assert fold("ΛΌΓΟΣ ΚΑΙ ΜΎΘΟΣ") == "λόγος-και-μύθος"
    assert fold("Ϲ") == fold("ϲ")  # lunate sigma: one tag typed or as stored before v9
    # Search text still casefolds (and drops Greek accents): only the tag spelling changed.
    assert catalogue_text.fold_for_search("ΛΌΓΟΣ") == "λογοσ"
    assert catalogue_text.fold_for_search("Straße") == "strasse"


def test_the_version_9_migration_keeps_tags_that_folding_would_break(tmp_path: Path) -> None:
    path = tmp_path / "vitrine.db"
    db = Database(path)
    add_users(db.conn, "a")
    kept = ["a½", "ŀ", "ß" * 33, "λόγος"]
    ids = {
        name: repo.insert_image(db.conn, new_image(k, tags=[name])) for k, name in enumerate(kept)
    }
    ids["straße"] = repo.insert_image(db.conn, new_image(9, tags=["straße", "ß" * 32]))
    rewind_schema(db.conn, 8)
    db.close()

    db = Database(path)
    try:
        conn = db.conn
        names = sorted(row[0] for row in conn.execute("SELECT name FROM tags"))
        assert names == sorted([*kept, "strasse", "ss" * 32])
        typed = {"A½": "a½", "Ŀ": "ŀ", "ß" * 33: "ß" * 33, "ΛΌΓΟΣ": "λόγος", "Straße": "straße"}
        for spelling, stored in typed.items():
            tag_ids = repo.tag_ids(conn, catalogue_text.normalise_tags([spelling]))
            assert len(tag_ids) == 1, spelling
            found = repo.browse_ids(
                conn, 1, list(tag_ids.values()), match_any=False, before=None, limit=50
            )
            assert found == [ids[stored]], spelling
        assert repo.database_problems(conn) == []
    finally:
        db.close()


def test_tags_with_characters_folding_would_break_are_accepted_and_removed(
    seller: ServerConnection,
) -> None:
    mark = unique("half")
    image_id = upload(
        seller, jpeg(2041, (32, 24)), title=mark, tags=["A½", "ΛΌΓΟΣ", "ß" * 33]
    ).image_id
    assert sorted(details(seller, image_id).image.tags) == sorted(["a½", "λόγος", "ß" * 33])
    browsed = ids_of(listing(seller, Browse(id=0, tags=["a½", "λόγος"])))
    assert image_id in browsed
    seller.call(UpdateImage(id=0, image_id=image_id, remove_tags=["A½", "ß" * 33]), ImageUpdated)
    assert details(seller, image_id).image.tags == ["λόγος"]


# --- 3. the total of tags per image ---------------------------------------------------------------


def test_adding_tags_past_the_limit_is_refused_and_changes_nothing(
    seller: ServerConnection,
) -> None:
    prefix = unique("t")
    first = [f"{prefix}a{n}" for n in range(60)]
    image_id = upload(seller, jpeg(2004, (32, 24)), tags=first).image_id
    more = [f"{prefix}b{n}" for n in range(60)]
    error = error_of(seller, UpdateImage(id=0, image_id=image_id, add_tags=more, title="New"))
    assert error.code == ErrorCode.CONFLICT
    assert "has 60 tags" in error.message and "120" in error.message
    assert f"limit of {MAX_TAGS}" in error.message
    image = details(seller, image_id).image
    assert sorted(image.tags) == sorted(first) and image.title != "New"
    # Up to the limit is fine, and so is swapping tags at the limit.
    four = more[:4]
    updated = seller.call(UpdateImage(id=0, image_id=image_id, add_tags=four), ImageUpdated)
    assert len(updated.image.tags) == MAX_TAGS
    swapped = seller.call(
        UpdateImage(id=0, image_id=image_id, add_tags=more[4:6], remove_tags=first[:2]),
        ImageUpdated,
    )
    assert len(swapped.image.tags) == MAX_TAGS
    error = error_of(seller, UpdateImage(id=0, image_id=image_id, add_tags=[more[10]]))
    assert error.code == ErrorCode.CONFLICT and f"has {MAX_TAGS} tags" in error.message


# --- 4. lengths counted after NFC ----------------------------------------------------------------


def test_a_title_that_nfc_lengthens_past_the_limit_is_refused(seller: ServerConnection) -> None:
    long_title = "\ufb2c" * MAX_TITLE_CHARS  # within the wire's count; 600 characters in NFC
    error = error_of(seller, UpdateImage(id=0, image_id=_an_image(seller), title=long_title))
    assert error.code == ErrorCode.BAD_REQUEST
    assert "title" in error.message and str(MAX_TITLE_CHARS) in error.message
    with pytest.raises(Exception) as info:
        upload(seller, jpeg(2005, (32, 24)), title=long_title)
    assert getattr(info.value, "code", None) == ErrorCode.BAD_REQUEST
    long_description = "\ufb2c" * (MAX_DESCRIPTION_CHARS // 2)
    error = error_of(
        seller, UpdateImage(id=0, image_id=_an_image(seller), description=long_description)
    )
    assert error.code == ErrorCode.BAD_REQUEST
    assert "description" in error.message and str(MAX_DESCRIPTION_CHARS) in error.message
    fits = "\ufb2c" * (MAX_TITLE_CHARS // 3)
    updated = seller.call(
        UpdateImage(id=0, image_id=_an_image(seller), title=fits), ImageUpdated
    ).image
    assert len(updated.title) == 3 * (MAX_TITLE_CHARS // 3)


_seeds = iter(range(3000, 4000))


def _an_image(conn: ServerConnection) -> int:
    return upload(conn, jpeg(next(_seeds), (32, 24)), title="Plain").image_id


# --- 5. titles that show nothing ------------------------------------------------------------------


@pytest.mark.parametrize("invisible", ["\u200b", "\u2060", " \u200b\u2060 ", "\ufeff\u200d"])
def test_a_title_of_format_characters_is_blank(seller: ServerConnection, invisible: str) -> None:
    image_id = _an_image(seller)
    error = error_of(seller, UpdateImage(id=0, image_id=image_id, title=invisible))
    assert error.code == ErrorCode.BAD_REQUEST and "cannot be blank" in error.message
    assert details(seller, image_id).image.title == "Plain"
    up = upload(seller, jpeg(next(_seeds), (32, 24)), title=invisible, filename="linen-top.jpg")
    assert details(seller, up.image_id).image.title == "linen-top"


def test_visible_titles_with_format_characters_are_kept() -> None:
    assert not catalogue_text.is_blank("a\u200b")
    assert not catalogue_text.is_blank("\u200dé")
    assert catalogue_text.is_blank("\u3164 \u2800")
