"""show_image draws the picture, its facts and the next prompt on one screen, and the colour
search's help says what a hex colour matches (session 24, a QA round of a first hour).

The picture was sized by the terminal's width alone: on an 80 x 24 terminal a portrait photo
took 32 rows, and its top had scrolled away before the 13 lines of facts under it ended (a QA
round of a first hour in the shell). A unit test of the sizing, on the shell's own function.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from protocol.catalog import ImageDetails, ImageSummary
from shell.image_commands import SHOW_CELLS, ImageCommands


def _answer(width: int, height: int) -> ImageDetails:
    picture = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 30)).save(picture, "JPEG")
    summary = ImageSummary(
        id=7, owner="alice", price_cents=4990, quantity=3, visibility="public", created_at=1e9,
        width=width, height=height, palette=[], thumbnail=picture.getvalue(), title="Linen dress",
        description="", filename="dress.jpg", tags=["dress"],
    )  # fmt: skip
    return ImageDetails(id=1, image=summary, original=None, format="JPEG", byte_size=0)


def _drawn(
    monkeypatch: pytest.MonkeyPatch, columns: int, lines: int, size: tuple[int, int]
) -> tuple[int, int, int]:
    """(rows of picture, its widest row in cells, rows of facts) show_image prints."""
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("LINES", str(lines))
    picture, facts = ImageCommands._details(_answer(*size), "blocks")
    rows = picture.plain.split("\n")
    return len(rows), max(len(row) for row in rows), len(facts.rows)


@pytest.mark.parametrize("size", [(300, 400), (400, 400), (400, 300), (200, 800)])
def test_picture_facts_and_prompt_fit_an_80_by_24_terminal(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    picture_rows, _, fact_rows = _drawn(monkeypatch, 80, 24, size)
    assert picture_rows + fact_rows + 1 <= 24


def test_a_tall_terminal_still_gets_the_full_size_picture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    picture_rows, widest, _ = _drawn(monkeypatch, 200, 100, (300, 400))
    assert picture_rows == SHOW_CELLS[1]
    assert widest <= SHOW_CELLS[0]


def test_a_shorter_picture_is_narrower_not_letterboxed(monkeypatch: pytest.MonkeyPatch) -> None:
    picture_rows, widest, _ = _drawn(monkeypatch, 80, 24, (400, 400))
    assert abs(widest - 2 * picture_rows) <= 1  # a square photo: two cells wide per row


def test_the_colour_search_help_says_a_hex_colour_matches_on_lightness_and_saturation() -> None:
    """A QA round took `#1e90ff` finding 1 image where `210` found 5 for a bug: the help said
    only "a hex colour #rrggbb". It now gives the windows, from the constants the query uses."""
    from shell.colour_commands import ColourCommands
    from util.colour_spec import HEX_LIGHTNESS_WINDOW, HEX_SATURATION_WINDOW, parse_colour

    text = " ".join(ColourCommands.colour_parser.format_help().split())
    assert f"within {HEX_LIGHTNESS_WINDOW} of its lightness" in text
    assert f"{HEX_SATURATION_WINDOW} of its saturation" in text
    (box,) = parse_colour("#1e90ff").boxes  # what the help describes is what a query does
    assert box.l_hi - box.l_lo == pytest.approx(2 * HEX_LIGHTNESS_WINDOW)
