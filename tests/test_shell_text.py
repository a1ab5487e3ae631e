"""The shell's text helpers: what other users wrote is made safe before it reaches a terminal
or a contact sheet, and counts read as sentences."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from shell.text import plural, printable

_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
#: Format characters that join or part letters and hide nothing.
_JOINERS = {"\u200c", "\u200d"}


def test_escape_sequences_and_bidi_overrides_are_replaced_visibly() -> None:
    hostile = "red\x1b[2J dress\u202e\u2028"
    assert printable(hostile) == "red\ufffd[2J dress\ufffd\ufffd"


def test_tabs_and_line_breaks_become_spaces_so_a_row_stays_a_row() -> None:
    assert printable("linen\tshirt\r\nblue") == "linen shirt  blue"


def test_a_picture_drops_what_it_cannot_draw() -> None:
    assert printable("caf\u00e9\x07 \u200bbar", replacement="") == "caf\u00e9 bar"


@given(st.text())
def test_nothing_unprintable_survives_and_nothing_printable_is_lost(text: str) -> None:
    shown = printable(text)
    assert len(shown) == len(text)
    assert not any(unicodedata.category(ch) in _HIDDEN and ch not in _JOINERS for ch in shown)
    for before, after in zip(text, shown, strict=True):
        if before not in "\t\n\r" and (
            unicodedata.category(before) not in _HIDDEN or before in _JOINERS
        ):
            assert after == before


def test_joiners_that_words_and_emoji_need_are_kept() -> None:
    persian, coder = (
        "\u06a9\u062a\u200c\u0648\u0634\u0644\u0648\u0627\u0631",
        "\U0001f469\u200d\U0001f4bb",
    )
    assert printable(f"{persian} {coder} shirt") == f"{persian} {coder} shirt"
    # while the bidi controls of the same category still cannot reorder a row
    assert printable("a\u2066b\u200fc") == "a\ufffdb\ufffdc"


def test_plural_counts_one_in_the_singular() -> None:
    assert [plural(n, "tag") for n in (0, 1, 2)] == ["0 tags", "1 tag", "2 tags"]
