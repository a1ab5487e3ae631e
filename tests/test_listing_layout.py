"""Listing tables at narrow widths: the words and pictures give way, the numbers never do.

Each table is rendered by rich at a terminal width, the way the shell prints it, and the
output is searched for every number of every row (price, quantity, colour shares, score) as a
whole token: "10" where "100%" belongs, or "0.9…" for "0.988", is exactly the bug these guard.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from protocol.catalog import Colour as CatalogColour
from protocol.catalog import ImageSummary
from shell.listing import MATCH_MARK, listing_table
from shell.swatches import format_share
from tests.servers import LoggedInShell, ServerProcess, create_users
from tests.test_images_server import unique
from util.money import format_cents

WIDTHS = [60, 80]
#: Too narrow for any table of columns: each image becomes a record, a field a line.
RECORD_WIDTHS = [30, 40, 47]


def _thumbnail(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _colour(rgb: tuple[int, int, int], hue: float, share: float) -> CatalogColour:
    return CatalogColour(
        r=rgb[0], g=rgb[1], b=rgb[2], hue=hue, saturation=0.7, lightness=0.45, share=share
    )


RED = _colour((200, 30, 30), 0.0, 1.0)
OLIVE = _colour((136, 112, 50), 42.7, 0.07)
SPECK = _colour((0, 128, 255), 210.0, 0.003)
CRIMSON = _colour((167, 37, 51), 353.7, 0.62)


def _item(
    image_id: int,
    title: str,
    price_cents: int,
    palette: list[CatalogColour],
    *,
    score: float | None = None,
    match: CatalogColour | None = None,
    private: bool = False,
) -> ImageSummary:
    return ImageSummary(
        id=image_id,
        title=title,
        description="",
        filename="a.jpg",
        tags=["shop", "summer-dress", "red"],
        price_cents=price_cents,
        quantity=12,
        owner="alice.longname",
        visibility="private" if private else "public",
        created_at=0.0,
        width=48,
        height=32,
        palette=palette,
        score=score,
        match=match,
        thumbnail=_thumbnail((palette[0].r, palette[0].g, palette[0].b)),
    )


def colour_search() -> list[ImageSummary]:
    return [
        _item(9, "A red square", 1999, [RED], score=0.988, match=RED),
        _item(
            12345,
            "18ed7f47-b091-4eb0-ae81-89f2ef139a9b a very long title indeed",
            123456,
            [OLIVE, CRIMSON, SPECK],
            score=0.5,
            match=CRIMSON,
            private=True,
        ),
    ]


def image_search() -> list[ImageSummary]:
    return [
        _item(7, "Linen shirt", 4500, [OLIVE, SPECK], score=0.913),
        _item(8, "Blue scarf, knitted by hand", 0, [SPECK, CRIMSON], score=0.0421),
    ]


def browse() -> list[ImageSummary]:
    return [_item(3, "Straw hat", 1250, [OLIVE, CRIMSON]), _item(4, "Sandals", 999999, [RED])]


def _render(items: list[ImageSummary], mode: str, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(listing_table(items, mode, width), soft_wrap=False)  # type: ignore[arg-type]
    return console.export_text()


def _whole(token: str, text: str) -> bool:
    """`token` appears with no digit, point or percent sign glued to either side."""
    return re.search(rf"(?<![\d.<]){re.escape(token)}(?![\d.%…])", text) is not None


@pytest.mark.parametrize("width", WIDTHS + RECORD_WIDTHS)
@pytest.mark.parametrize("mode", ["blocks", "none"])
@pytest.mark.parametrize("listing", [colour_search, image_search, browse])
def test_every_number_is_shown_whole(listing, mode: str, width: int) -> None:  # type: ignore[no-untyped-def]
    items = listing()
    text = _render(items, mode, width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    for item in items:
        assert _whole(str(item.id), text), text
        assert _whole(format_cents(item.price_cents), text), text
        assert _whole(str(item.quantity), text), text
        for colour in item.palette:
            assert _whole(format_share(colour.share), text), (format_share(colour.share), text)
        if item.score is not None:
            assert _whole(f"{item.score:.3f}", text), text
    if items[0].match is not None:
        # the match keeps its mark, on the line of its share
        assert text.count(MATCH_MARK) >= len(items) + 1, text  # each row, and the header
        assert any("100%" in line and MATCH_MARK in line for line in lines), text
        assert "match" in text
    if items[0].score is not None:
        assert "score" in text


@pytest.mark.parametrize("width", RECORD_WIDTHS)
def test_below_every_table_each_image_is_a_record_with_its_id_first(width: int) -> None:
    """At 40 columns rich used to squeeze the id column: image 96 showed as 9, another id."""
    items = colour_search()
    lines = _render(items, "blocks", width).splitlines()
    ids = [line.split()[1] for line in lines if line.split()[:1] == ["id"]]
    assert ids == [str(item.id) for item in items], lines


@pytest.mark.parametrize("width", WIDTHS)
def test_everyday_listings_keep_a_picture_and_readable_titles(width: int) -> None:
    """Short ids and shop prices: a thumbnail still fits at 60 columns (smaller), and a
    title keeps at least 12 cells, tags and owner on lines of their own."""
    items = [
        _item(9, "A red square", 1999, [RED], score=0.988, match=RED),
        _item(10, "Crimson evening dress with pleats", 4500, [CRIMSON, OLIVE], score=0.7,
              match=CRIMSON),
    ]  # fmt: skip
    text = _render(items, "blocks", width)
    drawn = [len(re.sub(r"[^▀▄]", "", line)) for line in text.splitlines()]
    assert max(drawn) == (16 if width >= 80 else 8), text
    assert "A red square" in text and "evening" in text, text
    assert "summer-dress" in text and "alice.longname" in text, text


def test_at_eighty_columns_a_title_gets_at_least_sixteen_cells_beside_a_picture() -> None:
    """docs/shell.md promises it; a colour search with pictures is the tightest listing."""
    text = _render(colour_search(), "blocks", 80)
    first = next(re.search(r"18ed7f47\S*", line) for line in text.splitlines() if "18ed" in line)
    assert first is not None and len(first.group(0)) >= 16, text


def test_a_wide_terminal_keeps_the_hex_codes_and_the_full_picture() -> None:
    text = _render(colour_search(), "blocks", 160)
    assert "#c81e1e 100%" in text and "#a72533 62%" in text
    assert max(len(re.sub(r"[^▀▄]", "", line)) for line in text.splitlines()) == 16


# --- the heading of a colour search --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "heading"),
    [
        ("--min-share 50%", "images of pink (covering at least 50%)"),
        (
            "--min-share 0.125 --tolerance 20",
            "images of pink (within 20°, covering at least 12.5%)",
        ),
        ("", "images of pink."),
    ],
)
def test_a_colour_search_heading_names_its_min_share(
    shared_server: ServerProcess, tmp_path: Path, flags: str, heading: str
) -> None:
    """QA: `search_by_color pink --min-share 50%` was titled just "images of pink", as if
    every pink image were listed; the default share is not named, as before."""
    name = unique("colourist")
    create_users(shared_server, tmp_path, [name], "correct horse battery")
    code, out, err = LoggedInShell(shared_server, name, tmp_path)(
        f"search_by_color pink {flags} --tags {unique('nothing')}".replace("  ", " ")
    )
    assert code == 0, out + err
    assert heading.rstrip(".").replace(")", "") in out, out
    if "covering" not in heading:
        assert "covering" not in out, out
