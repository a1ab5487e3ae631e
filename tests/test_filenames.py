"""Client file names are metadata: hostile ones must come out short, printable and harmless."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from util.filenames import FALLBACK_NAME, MAX_NAME_BYTES, display_name, save_name


def assert_harmless(name: str) -> None:
    assert name
    assert name not in (".", "..")
    assert "/" not in name and "\\" not in name
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert name == unicodedata.normalize("NFC", name)
    for ch in name:
        assert unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}, ch


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("/absolute/path/shirt.png", "shirt.png"),
        ("C:\\Users\\ann\\..\\hat.jpg", "hat.jpg"),
        ("mixed/sep\\arators/x.gif", "x.gif"),
        ("photos/", "photos"),
        ("plain.webp", "plain.webp"),
    ],
)
def test_only_the_last_component_is_kept(raw: str, expected: str) -> None:
    assert display_name(raw) == expected


@pytest.mark.parametrize("raw", ["", " ", ".", "..", "/", "\\", "../..", "a/..", "\t\n"])
def test_never_empty_or_a_dot_name(raw: str) -> None:
    assert display_name(raw) == FALLBACK_NAME


def test_terminal_escape_sequences_are_defused() -> None:
    name = display_name("evil\x1b]0;pwned\x07\x1b[2J.jpg")
    assert "\x1b" not in name and "\x07" not in name
    assert name.endswith(".jpg")
    assert_harmless(name)


def test_newlines_and_nul_are_replaced_not_dropped_silently() -> None:
    name = display_name("a\nb\x00c.png")
    assert "\n" not in name and "\x00" not in name
    assert name.count("\ufffd") == 2


def test_bidi_override_cannot_disguise_an_extension() -> None:
    name = display_name("photo\u202egpj.exe")
    assert "\u202e" not in name
    assert name.endswith("exe")


def test_lone_surrogates_from_undecodable_bytes_are_replaced() -> None:
    assert_harmless(display_name("caf\udce9.jpg"))


def test_unicode_is_nfc_normalised_and_kept() -> None:
    decomposed = "Cafe\u0301 \u00e9t\u00e9 \u5546\u54c1 \U0001f455.jpg"
    name = display_name(decomposed)
    assert name == unicodedata.normalize("NFC", decomposed)
    assert "\u5546\u54c1" in name and "\U0001f455" in name


def test_exotic_spaces_become_plain_spaces() -> None:
    assert display_name("red\u00a0dress\u3000big.jpg") == "red dress big.jpg"


@pytest.mark.parametrize("raw", ["a" * 1000 + ".jpeg", "\u00e9" * 400 + ".png", "\U0001f455" * 300])
def test_long_names_are_capped_and_keep_their_extension(raw: str) -> None:
    name = display_name(raw)
    assert_harmless(name)
    assert len(name.encode("utf-8")) > MAX_NAME_BYTES - 8  # capped, not emptied
    if "." in raw:
        assert name.endswith(raw.rsplit(".", 1)[1])


def test_cap_does_not_leave_a_dangling_combining_mark() -> None:
    name = display_name("e\u0301" * 200 + "x\u0308" * 200)
    assert_harmless(name)
    assert not unicodedata.combining(name[-1])


@given(st.text(max_size=600))
def test_any_text_becomes_harmless(raw: str) -> None:
    name = display_name(raw)
    assert_harmless(name)
    assert display_name(name) == name  # stable: cleaning twice changes nothing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(".bashrc", "bashrc"), ("...profile", "profile"), (". .x.jpg", "x.jpg"), (".", "unnamed"),
     ("dir/.hidden.jpg", "hidden.jpg"), ("photo.jpg", "photo.jpg"), (". ", "unnamed")],
)  # fmt: skip
def test_a_saved_original_is_never_a_hidden_file(raw: str, expected: str) -> None:
    assert save_name(raw) == expected


@given(st.text(max_size=300))
def test_save_names_are_display_names_without_leading_dots(raw: str) -> None:
    name = save_name(raw)
    assert name and not name.startswith(".") and "/" not in name
