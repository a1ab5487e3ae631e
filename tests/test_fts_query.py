"""What people type into `search` becomes an FTS5 query: words, phrases in double quotes,
prefixes with `*`, words joined by `-` or an apostrophe as phrases, and never a syntax error,
whatever the text. Checked against a real FTS5 table with the same tokenizer as the images
index, filled with the same folded text (`fold_for_search`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import VitrineError
from service.listings import fts_query
from util.catalogue_text import fold_for_search

TITLES = [
    "Straw hat",
    "Hat with a straw band",
    "Linen shirt",
    "Shirt of linen",
    "Red hat",
    "Robe légère d’été",
    "Veste légère",  # stored decomposed, as a macOS file name gives it
    "Long dress with short sleeves",
    "Long-sleeve shirt",
    "Summer-dress in linen",
    "Dress for summer",
    "T-shirt, white",
    "Jumper by O'Neill",
    "Shorts by O’Neill",
    "Neill's own brand",
    "Long coat, one sleeve torn",
    "Neill's jumper, size O",
]


@pytest.fixture(scope="module")
def index() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE VIRTUAL TABLE t USING fts5(title, tokenize = 'unicode61 remove_diacritics 2')"
    )
    conn.executemany(
        "INSERT INTO t(rowid, title) VALUES (?, ?)",
        [(n, fold_for_search(title)) for n, title in enumerate(TITLES, 1)],
    )
    yield conn
    conn.close()


def found(index: sqlite3.Connection, text: str) -> set[str]:
    rows = index.execute("SELECT rowid FROM t WHERE t MATCH ?", (fts_query(text),))
    return {TITLES[rowid - 1] for (rowid,) in rows}


@pytest.mark.parametrize(
    ("text", "titles"),
    [
        ("hat straw", {"Straw hat", "Hat with a straw band"}),
        ('"straw hat"', {"Straw hat"}),
        ('"hat straw"', set()),
        ('"linen shirt" OR hat', set()),  # OR is a word here, not "either"; no title has it
        ('"linen shirt"', {"Linen shirt"}),
        ('"linen sh"*', {"Linen shirt"}),
        ("shir*", {"Linen shirt", "Shirt of linen", "Long-sleeve shirt", "T-shirt, white"}),
        ('hat "straw', {"Straw hat", "Hat with a straw band"}),  # an unpaired quote is ignored
        ('"" red hat', {"Red hat"}),
        ("NEAR(hat straw)", set()),  # NEAR is a word too
        # Composed or decomposed, with or without the accents: the same word.
        ("légère", {"Robe légère d’été", "Veste légère"}),
        ("légère", {"Robe légère d’été", "Veste légère"}),
        ("legere", {"Robe légère d’été", "Veste légère"}),
        ("été", {"Robe légère d’été"}),
        # A word joined by - or an apostrophe is a phrase: its parts together, in order.
        ("long-sleeve", {"Long-sleeve shirt"}),
        (
            "long sleeve*",
            {"Long dress with short sleeves", "Long-sleeve shirt", "Long coat, one sleeve torn"},
        ),
        ("summer-dress", {"Summer-dress in linen"}),
        ("t-shirt", {"T-shirt, white"}),
        ("t-shi*", {"T-shirt, white"}),
        ('"long-sl"*', {"Long-sleeve shirt"}),
        ("o'neill", {"Jumper by O'Neill", "Shorts by O’Neill"}),
        ("o’neill", {"Jumper by O'Neill", "Shorts by O’Neill"}),
        ("neill's", {"Neill's own brand", "Neill's jumper, size O"}),
        ("dress - summer", {"Summer-dress in linen", "Dress for summer"}),  # spaced: two words
    ],
)
def test_words_phrases_and_prefixes(index: sqlite3.Connection, text: str, titles: set[str]) -> None:
    assert found(index, text) == titles


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab "*^():-+.NEAROT\\x00é'), max_size=30))
def test_no_text_is_a_syntax_error(index: sqlite3.Connection, text: str) -> None:
    try:
        query = fts_query(text)
    except VitrineError as exc:  # only when no word is left to look for
        assert "no words" in exc.message
        return
    index.execute("SELECT count(*) FROM t WHERE t MATCH ?", (query,)).fetchone()
