"""Browse, text search, More and cursors, streamed batches and tag counts, on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.catalog import (
    STREAM_CHUNK,
    Batch,
    Browse,
    DeleteImage,
    ListingOptions,
    ListTags,
    More,
    TagList,
    TextSearch,
    UpdateImage,
)
from protocol.errors import ErrorCode, VitrineError
from shell.connection import ServerConnection
from tests.servers import ServerProcess
from tests.test_images_server import (
    error_of,
    ids_of,
    jpeg,
    listing,
    unique,
    upload,
    upload_many,
)

SEED = 5000


@pytest.fixture(scope="module")
def listing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("listings")).start()
    yield process
    process.stop()


@pytest.fixture
def seller(listing_server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = listing_server.user_connection(tmp_path / "s", unique("seller"))
    yield conn
    conn.close()


@pytest.fixture
def buyer(listing_server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    conn = listing_server.user_connection(tmp_path / "b", unique("buyer"))
    yield conn
    conn.close()


_seeds = iter(range(SEED, SEED + 100_000))


def fresh(n: int) -> list[bytes]:
    return [jpeg(next(_seeds), (32, 24)) for _ in range(n)]


def test_browse_all_tags_across_cursors(seller: ServerConnection) -> None:
    a, b = unique("a"), unique("b")
    both = [u.image_id for u in upload_many(seller, fresh(45), tags=[a, b])]
    only_a = [u.image_id for u in upload_many(seller, fresh(5), tags=[a])]
    batches = listing(seller, Browse(id=0, tags=[b, a]))
    assert [len(x) for x in batches] == [20, 10, 10, 5]
    assert ids_of(batches) == sorted(both, reverse=True)  # newest first, nothing twice
    assert ids_of(listing(seller, Browse(id=0, tags=[a]))) == sorted(both + only_a, reverse=True)


def test_browse_any_tag_and_unknown_tags(seller: ServerConnection) -> None:
    red, blue, green = unique("red"), unique("blue"), unique("green")
    reds = [u.image_id for u in upload_many(seller, fresh(12), tags=[red])]
    blues = [u.image_id for u in upload_many(seller, fresh(13), tags=[blue])]
    upload_many(seller, fresh(3), tags=[green])
    got = ids_of(listing(seller, Browse(id=0, tags=[red, blue, "never-used"], match_any=True)))
    assert got == sorted(reds + blues, reverse=True)
    assert ids_of(listing(seller, Browse(id=0, tags=[red, blue]))) == []
    assert ids_of(listing(seller, Browse(id=0, tags=[red, "never-used"]))) == []


def test_browse_without_tags_lists_everything_visible(
    server: ServerProcess, tmp_path: Path
) -> None:
    seller = server.user_connection(tmp_path / "s", "seller")
    other = server.user_connection(tmp_path / "o", "other")
    try:
        public = [u.image_id for u in upload_many(seller, fresh(23))]
        hidden = [u.image_id for u in upload_many(seller, fresh(4), private=True)]
        mine = [u.image_id for u in upload_many(other, fresh(7), private=True)]
        batches = listing(other, Browse(id=0))
        assert [len(b) for b in batches] == [20, 10]
        assert ids_of(batches) == sorted(public + mine, reverse=True)
        assert ids_of(listing(seller, Browse(id=0))) == sorted(public + hidden, reverse=True)
    finally:
        seller.close()
        other.close()


def test_batch_sizes_can_change_and_large_batches_stream_in_chunks(
    seller: ServerConnection,
) -> None:
    tag = unique("many")
    ids = [u.image_id for u in upload_many(seller, fresh(130), tags=[tag])]
    frames = list(seller.stream(Browse(id=0, tags=[tag], options=ListingOptions(limit=120))))
    assert all(isinstance(f, Batch) for f in frames)
    assert [len(f.items) for f in frames] == [STREAM_CHUNK, STREAM_CHUNK, 20]
    assert [f.final for f in frames] == [False, False, True]
    assert [f.cursor is None for f in frames] == [True, True, False]
    assert all(item.thumbnail for f in frames for item in f.items)
    rest = list(
        seller.stream(More(id=0, cursor=frames[-1].cursor or "", options=ListingOptions(limit=7)))
    )
    assert [item.id for f in rest for item in f.items] == sorted(ids, reverse=True)[120:127]
    assert rest[-1].cursor is not None
    ended = listing(
        seller, More(id=0, cursor=rest[-1].cursor or "", options=ListingOptions(limit=3)), 3
    )
    assert ids_of(ended) == sorted(ids, reverse=True)[127:]


def test_thumbnails_can_be_left_out(seller: ServerConnection) -> None:
    tag = unique("plain")
    upload_many(seller, fresh(3), tags=[tag])
    items = ids_of(listing(seller, Browse(id=0, tags=[tag])))
    assert len(items) == 3
    frames = list(seller.stream(Browse(id=0, tags=[tag], options=ListingOptions(thumbnails=False))))
    assert all(item.thumbnail is None for f in frames for item in f.items)


def test_new_uploads_do_not_shift_an_open_listing(seller: ServerConnection) -> None:
    tag = unique("stable")
    first = [u.image_id for u in upload_many(seller, fresh(25), tags=[tag])]
    frames = list(seller.stream(Browse(id=0, tags=[tag])))
    upload_many(seller, fresh(5), tags=[tag])  # newer: they belong before page one
    seller.call(DeleteImage(id=0, image_id=sorted(first)[0]))  # the oldest, not sent yet
    rest = listing(seller, More(id=0, cursor=frames[-1].cursor or ""))
    assert ids_of(rest) == sorted(first, reverse=True)[20:24]


def test_more_on_unknown_finished_or_dropped_cursors(seller: ServerConnection) -> None:
    gone = error_of(seller, More(id=0, cursor="no-such-cursor"))
    assert gone.code == ErrorCode.NOT_FOUND
    assert "server restarted" in gone.message and "Run the listing again" in gone.message
    tag = unique("cur")
    upload_many(seller, fresh(22), tags=[tag])
    first = list(seller.stream(Browse(id=0, tags=[tag])))[-1].cursor
    assert first is not None
    list(seller.stream(More(id=0, cursor=first)))  # the last two: the cursor ends
    error = error_of(seller, More(id=0, cursor=first))
    assert error.code == ErrorCode.NOT_FOUND and "Run the listing again" in error.message
    # Only the newest 16 cursors are kept per connection.
    oldest = list(seller.stream(Browse(id=0, tags=[tag])))[-1].cursor
    for _ in range(16):
        list(seller.stream(Browse(id=0, tags=[tag])))
    assert error_of(seller, More(id=0, cursor=oldest or "")).code == ErrorCode.NOT_FOUND


def test_pipelined_mores_of_one_cursor_never_send_a_batch_twice(seller: ServerConnection) -> None:
    """Sent without waiting, two `more`s of one listing ran in two workers that both read the
    cursor's position before either moved it, and the same images came back twice. Now the
    one that arrives while a batch is being read is refused, and asking again continues."""
    tag = unique("piped")
    upload_many(seller, fresh(400), tags=[tag])
    first = list(seller.stream(Browse(id=0, tags=[tag], options=ListingOptions(limit=10))))
    cursor = first[-1].cursor
    assert cursor is not None
    big = ListingOptions(limit=STREAM_CHUNK)  # each answer one frame
    # One write: the server reads all four before the first is answered.
    asks = seller.submit_all([More(id=0, cursor=cursor, options=big) for _ in range(4)])
    sent: list[int] = []
    refused = 0
    for ask in asks:
        try:
            batch = ask.result(timeout=60)
        except VitrineError as exc:
            assert exc.code == ErrorCode.CONFLICT and "still being answered" in exc.message
            refused += 1
            continue
        assert isinstance(batch, Batch)
        sent += [item.id for item in batch.items]
    assert len(sent) == len(set(sent)), "a batch was sent twice"
    assert (refused, len(sent)) == (3, STREAM_CHUNK)
    everything = ids_of(listing(seller, Browse(id=0, tags=[tag])))
    assert sorted(sent, reverse=True) == everything[10 : 10 + len(sent)]


def test_cursors_belong_to_their_connection(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    tag = unique("own")
    upload_many(seller, fresh(21), tags=[tag])
    cursor = list(seller.stream(Browse(id=0, tags=[tag])))[-1].cursor
    assert error_of(buyer, More(id=0, cursor=cursor or "")).code == ErrorCode.NOT_FOUND


# --- text search --------------------------------------------------------------------------------


def test_text_search_over_title_description_tags_and_filename(seller: ServerConnection) -> None:
    word = unique("zebra")
    in_title = upload(seller, fresh(1)[0], title=f"{word} jacket").image_id
    # Each of the others has the word in one field only (a blank title would become the stem).
    in_desc = upload(
        seller, fresh(1)[0], title="scarf", description=f"a soft {word} scarf"
    ).image_id
    in_tags = upload(seller, fresh(1)[0], title="tagged", tags=[word]).image_id
    in_name = upload(seller, fresh(1)[0], title="named", filename=f"{word}.jpg").image_id
    upload(seller, fresh(1)[0], title="unrelated")
    found = ids_of(listing(seller, TextSearch(id=0, text=word)))
    assert sorted(found) == sorted([in_title, in_desc, in_tags, in_name])
    assert found[0] == in_title  # the title weighs most in the ranking
    assert ids_of(listing(seller, TextSearch(id=0, text=f"{word} jacket"))) == [in_title]
    assert ids_of(listing(seller, TextSearch(id=0, text=f"{word[:-2]}*"))) != []


def test_text_search_pages_with_more(seller: ServerConnection) -> None:
    word = unique("pager")
    ids = [u.image_id for u in upload_many(seller, fresh(33), title=f"{word} item")]
    batches = listing(seller, TextSearch(id=0, text=word, options=ListingOptions(limit=15)))
    assert [len(b) for b in batches] == [15, 10, 8]
    assert sorted(ids_of(batches)) == sorted(ids)


# Texts with no word (letter or digit) left once the syntax is taken as text.
_NO_WORDS = frozenset({'"', "(((", "*", "\\ % _ {} [] - +"})


@pytest.mark.parametrize(
    "text",
    [
        '"',
        "'; DROP TABLE images; --",
        "title:secret",
        "a OR b NOT c",
        "NEAR(a b)",
        "(((",
        "*",
        "^start",
        'x" OR "1"="1',
        "\\ % _ {} [] - +",
        "col:* AND",
    ],
)
def test_search_metacharacters_are_plain_text(seller: ServerConnection, text: str) -> None:
    tag = unique("meta")
    upload(seller, fresh(1)[0], tags=[tag], title="secret start")
    if text in _NO_WORDS:
        error = error_of(seller, TextSearch(id=0, text=text))
        assert error.code == ErrorCode.BAD_REQUEST and "no words" in error.message
    else:
        frames = list(seller.stream(TextSearch(id=0, text=text)))
        assert frames and all(isinstance(f, Batch) for f in frames)
    # The database is intact: listings still work.
    assert len(ids_of(listing(seller, Browse(id=0, tags=[tag])))) == 1


def test_search_caret_is_a_plain_character(seller: ServerConnection) -> None:
    # In FTS5 `^start` only matches "start" as a column's first word: as plain text the caret
    # is not a word, so a title with "start" anywhere is found.
    word = unique("caret")
    mine = upload(seller, fresh(1)[0], title=f"secret start {word}").image_id
    assert mine in ids_of(listing(seller, TextSearch(id=0, text="^start")))
    assert ids_of(listing(seller, TextSearch(id=0, text=f"^{word}"))) == [mine]


def test_search_quotes_and_or_cannot_widen_the_match(seller: ServerConnection) -> None:
    # Read as SQL or as FTS5 syntax, `x" OR "1"="1` matches whatever has an x or a 1 (or
    # everything); as text it is the words x, OR and 1, all required.
    literal = upload(seller, fresh(1)[0], title="x or 1").image_id
    only_x = upload(seller, fresh(1)[0], title="x secret").image_id
    only_1 = upload(seller, fresh(1)[0], title="secret 1", description="or so").image_id
    unrelated = upload(seller, fresh(1)[0], title="secret start").image_id
    found = ids_of(listing(seller, TextSearch(id=0, text='x" OR "1"="1')))
    assert literal in found
    assert not {only_x, only_1, unrelated} & set(found)
    assert found == [literal]


def test_search_with_no_words_is_a_clear_bad_request(seller: ServerConnection) -> None:
    error = error_of(seller, TextSearch(id=0, text="?! ..."))
    assert error.code == ErrorCode.BAD_REQUEST and "no words" in error.message


def test_search_skips_images_deleted_or_hidden_after_it_ran(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    word = unique("fade")
    ids = sorted(u.image_id for u in upload_many(seller, fresh(25), title=word))
    frames = list(buyer.stream(TextSearch(id=0, text=word)))
    sent = [i.id for f in frames for i in f.items]
    unsent = [i for i in ids if i not in sent]
    seller.call(DeleteImage(id=0, image_id=unsent[0]))
    seller.call(UpdateImage(id=0, image_id=unsent[1], private=True))
    rest = ids_of(listing(buyer, More(id=0, cursor=frames[-1].cursor or "")))
    assert sorted(rest) == sorted(unsent[2:])


def test_search_skips_images_that_no_longer_match_its_text(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    """Renamed from "hat" to "boot" between two `more`s, an image is no longer a result of a
    search for hat (the QA round found it listed, tagged only "wool", under 'hat')."""
    word = unique("brim")
    ids = sorted(u.image_id for u in upload_many(seller, fresh(25), title=f"{word} hat"))
    frames = list(buyer.stream(TextSearch(id=0, text=word)))
    sent = [i.id for f in frames for i in f.items]
    unsent = [i for i in ids if i not in sent]
    seller.call(UpdateImage(id=0, image_id=unsent[0], title="Boot"))
    seller.call(UpdateImage(id=0, image_id=unsent[1], title="Wide brim hat", description=word))
    rest = ids_of(listing(buyer, More(id=0, cursor=frames[-1].cursor or "")))
    assert sorted(rest) == sorted(unsent[1:])  # the one found by its description stays


# --- tag counts ---------------------------------------------------------------------------------


def _counts(conn: ServerConnection) -> dict[str, int]:
    return {t.name: t.count for t in conn.call(ListTags(id=0), TagList).tags}


def test_tag_counts_follow_visibility_and_deletes(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    tag, lonely = unique("count"), unique("lonely")
    public = upload_many(seller, fresh(4), tags=[tag])
    upload_many(seller, fresh(2), tags=[tag], private=True)
    upload(seller, fresh(1)[0], tags=[lonely], private=True)
    assert _counts(seller)[tag] == 6 and _counts(seller)[lonely] == 1
    assert _counts(buyer)[tag] == 4 and lonely not in _counts(buyer)
    seller.call(DeleteImage(id=0, image_id=public[0].image_id))
    assert _counts(buyer)[tag] == 3 and _counts(seller)[tag] == 5
    names = list(_counts(buyer))
    assert names == sorted(names)
