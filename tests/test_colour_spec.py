"""Parsing of the COLOR argument, hue arithmetic and the SQL prefilter intervals."""

from __future__ import annotations

import colorsys
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.colours import CHROMA_MIN
from protocol.catalog import ColourSearch
from service.colour_search import colour_query
from util.colour_spec import (
    DEFAULT_TOLERANCE,
    NAMES,
    ColourSpecError,
    check_min_share,
    check_tolerance,
    hue_distance,
    hue_ranges,
    parse_colour,
)


@pytest.mark.parametrize(
    ("text", "hue"),
    [("0", 0.0), ("360", 0.0), ("12.5", 12.5), (" 210 ", 210.0), ("355deg", 355.0), ("90°", 90.0)],
)
def test_degrees(text: str, hue: float) -> None:
    q = parse_colour(text)
    assert q.hue == hue
    assert q.tolerance == DEFAULT_TOLERANCE
    assert q.name is None
    assert q.accepts(hue, 0.1, 0.1) and q.accepts(hue, 0.9, 1.0)  # no lightness limits


@pytest.mark.parametrize("name", sorted(NAMES))
def test_names_case_insensitive(name: str) -> None:
    q = parse_colour(name.upper())
    assert q.name == name
    assert q.hue == NAMES[name][0]
    assert q.tolerance > 0


def test_hex_gives_its_hue_and_a_lightness_window() -> None:
    q = parse_colour("#1E90FF")  # dodger blue: hue 210, L 0.56
    assert abs(q.hue - 209.6) < 0.5
    assert q.accepts(q.hue, 0.56, 1.0)
    assert not q.accepts(q.hue, 0.95, 1.0)
    dark = parse_colour("#8b4513")  # saddle brown, L 0.31
    assert dark.accepts(dark.hue, 0.31, 0.76)
    assert not dark.accepts(dark.hue, 0.7, 1.0)


@pytest.mark.parametrize(
    "text",
    ["361", "-1", "400", "1e3", "purple-ish", "teal", "", "   ", "#12345", "#1234567", "#ggg000",
     "12a", "nan", "inf", "#", "red,blue"],
)  # fmt: skip
def test_bad_colours_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ColourSpecError) as err:
        parse_colour(text)
    msg = str(err.value)
    assert "0 to 360" in msg and "#rrggbb" in msg
    for name in NAMES:
        assert name in msg
    assert isinstance(err.value, ValueError)


def test_grey_hex_has_no_hue() -> None:
    with pytest.raises(ColourSpecError, match="grey"):
        parse_colour("#808080")


def test_a_dull_hex_a_listing_can_show_is_searched() -> None:
    """Hexes under a chroma of 0.12 used to be refused as grey, but extraction stores dark
    and faint colours duller than that (#5b3d3d, the mean of a dark red cluster; a dark brown
    leather at #4a3c35): the hex a listing showed could not be searched."""
    for dull, hue in (("#5b3d3d", 0.0), ("#4a3c35", 20.0), ("#7f7f80", 240.0)):
        assert parse_colour(dull).hue == pytest.approx(hue, abs=0.01)


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), float("inf"), "15"])
def test_bad_tolerance(bad) -> None:
    with pytest.raises(ColourSpecError, match="tolerance"):
        check_tolerance(bad)
    with pytest.raises(ColourSpecError):
        hue_ranges(10, bad)


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan")])
def test_bad_min_share(bad) -> None:
    with pytest.raises(ColourSpecError, match="min-share"):
        check_min_share(bad)


def test_hue_distance_wraps() -> None:
    assert hue_distance(355, 5) == 10
    assert hue_distance(5, 355) == 10
    assert hue_distance(0, 180) == 180
    assert hue_distance(90, 450) == 0
    assert hue_distance(10, 20) == 10


def test_hue_ranges_split_at_zero() -> None:
    assert hue_ranges(100, 15) == [(85.0, 115.0)]
    assert hue_ranges(355, 15) == [(0.0, 10.0), (340.0, 360.0)]
    assert hue_ranges(5, 15) == [(0.0, 20.0), (350.0, 360.0)]
    assert hue_ranges(0, 0) == [(0.0, 0.0)]
    assert hue_ranges(10, 180) == [(0.0, 360.0)]


def _in_ranges(h: float, ranges: list[tuple[float, float]]) -> bool:
    return any(lo <= h <= hi for lo, hi in ranges)


@given(
    hue=st.floats(0, 360, exclude_max=True),
    tol=st.floats(0, 179),
    h=st.floats(0, 360, exclude_max=True),
)
def test_hue_ranges_agree_with_hue_distance(hue: float, tol: float, h: float) -> None:
    ranges = hue_ranges(hue, tol)
    assert 1 <= len(ranges) <= 2
    assert all(0 <= lo <= hi <= 360 for lo, hi in ranges)
    d = hue_distance(h, hue)
    if d < tol - 1e-9:
        assert _in_ranges(h, ranges)
    elif d > tol + 1e-9:
        assert not _in_ranges(h, ranges)


@given(
    hue=st.floats(0, 360, exclude_max=True),
    lightness=st.floats(0.1, 0.9),
    saturation=st.floats(0, 1),
)
def test_every_chromatic_colour_has_a_name(hue: float, lightness: float, saturation: float) -> None:
    r, g, b = colorsys.hls_to_rgb(hue / 360, lightness, saturation)
    if max(r, g, b) - min(r, g, b) < CHROMA_MIN:
        return
    matching = [
        n
        for n in NAMES
        if hue_distance(hue, NAMES[n][0]) <= NAMES[n][1]
        and parse_colour(n).accepts(hue, lightness, saturation)
    ]
    assert matching


@given(
    hue=st.floats(15, 45),
    lightness=st.floats(0, 1),
    saturation=st.floats(0, 1),
)
def test_brown_and_orange_split_their_shared_hues(
    hue: float, lightness: float, saturation: float
) -> None:
    brown = parse_colour("brown").accepts(hue, lightness, saturation)
    orange = parse_colour("orange").accepts(hue, lightness, saturation)
    assert brown or orange


def test_pink_and_red_are_told_apart_by_lightness() -> None:
    red, pink = parse_colour("red"), parse_colour("pink")
    assert red.accepts(0, 0.45, 0.8) and not pink.accepts(0, 0.45, 0.8)
    assert pink.accepts(355, 0.8, 0.7) and not red.accepts(355, 0.8, 0.7)
    assert pink.accepts(345, 0.58, 0.7) and not red.accepts(345, 0.58, 0.7)  # raspberry-pink
    assert red.accepts(348, 0.47, 0.83) and not pink.accepts(348, 0.47, 0.83)  # crimson
    assert red.accepts(9, 0.64, 1.0) and not pink.accepts(9, 0.64, 1.0)  # tomato
    assert pink.accepts(347, 0.49, 0.15) and not red.accepts(347, 0.49, 0.15)  # dusty rose


def test_pink_and_magenta_are_told_apart_by_lightness_and_saturation() -> None:
    magenta, pink = parse_colour("magenta"), parse_colour("pink")
    assert pink.accepts(328, 0.54, 1.0) and not magenta.accepts(328, 0.54, 1.0)  # deep pink
    assert magenta.accepts(322, 0.43, 0.81) and not pink.accepts(322, 0.43, 0.81)  # violet red
    # medium violet red under warm light moves past 325 and stays magenta; a dull one is pink
    assert magenta.accepts(327, 0.43, 0.82) and not pink.accepts(327, 0.43, 0.82)
    assert pink.accepts(327, 0.46, 0.30) and not magenta.accepts(327, 0.46, 0.30)


@given(
    hue=st.floats(325, 352, exclude_max=True),
    lightness=st.floats(0, 1),
    saturation=st.floats(0, 1),
)
def test_pink_and_its_darker_neighbours_split_their_shared_hues(
    hue: float, lightness: float, saturation: float
) -> None:
    """Between 325 and 352 every colour is pink or the darker name (magenta, then red from
    340), and only a colour on one of the dividing lines is both."""
    darker = parse_colour("magenta" if hue < 340 else "red")
    pink = parse_colour("pink").accepts(hue, lightness, saturation)
    dark = darker.accepts(hue, lightness, saturation)
    assert pink or dark
    if pink and dark:
        assert hue in (325.0, 340.0) or lightness in (0.40, 0.50) or saturation == 0.5


@pytest.mark.parametrize(
    ("bounds", "says"),
    [
        ({"min_lightness": 0.8, "max_lightness": 0.2}, "minimum lightness (0.8) is above"),
        ({"min_saturation": 0.5, "max_saturation": 0.1}, "minimum saturation (0.5) is above"),
    ],
)
def test_upside_down_lightness_or_saturation_bounds_are_refused(bounds: dict, says: str) -> None:
    """They used to answer an empty listing, where an upside-down price range is refused."""
    with pytest.raises(ColourSpecError, match=re.escape(says)):
        colour_query(ColourSearch(id=0, hue=10.0, **bounds))
    query, _, _ = colour_query(ColourSearch(id=0, hue=10.0, min_lightness=0.2, max_lightness=0.2))
    assert query.boxes  # equal bounds are a narrow box, not an error
