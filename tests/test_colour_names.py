"""The ten colour names against a published list of named colours (CSS Color Module Level 4,
the X11 names): each colour below, stored as a palette colour, must be found by the name a
person would give it among ours, and by no other name except where it is listed as also fair.

This is the check of `util/colour_spec.py` that does not come from our photos: the lines
between names were moved to fit labelled photos (docs/colours.md), and this keeps them where
the names are used by everybody else.

Left out, because a person could fairly give them two of our names or none:

* beige and cream (antiquewhite, bisque, blanchedalmond, burlywood, cornsilk, moccasin,
  navajowhite, papayawhip, tan, wheat, lightgoldenrodyellow, lightyellow, lightcyan):
  not one of the ten; they fall under orange, brown, yellow or cyan by hue;
* corals and salmons (coral, lightcoral, salmon, darksalmon, lightsalmon): red, orange or pink;
* chocolate and sandybrown: named brown, but #d2691e and #f4a460 look burnt and light orange;
  CSS "brown" #a52a2a is a brick red at hue 0, and rosybrown a dusty pink;
* olive and khaki shades (olive, darkkhaki, palegoldenrod): yellow, green or brown;
* aquamarine and mediumaquamarine (hue 160): green or cyan;
* the sky blues (deepskyblue, skyblue, lightblue, powderblue, cadetblue): cyan by hue
  (195-197), "light blue" to most people;
* slateblue, mediumslateblue and darkslateblue (248): blue or purple;
* violet, plum and orchid (hue 300-302, L 0.65-0.75): light purple or pink;
* greys with a tint (slategray, lightslategray, darkslategray): grey to a person.
"""

from __future__ import annotations

import colorsys

import pytest

from models.colours import PaletteColour, match_score
from util.colour_spec import NAMES, parse_colour

# (CSS name, hex, the name a person gives it, other names that are also fair)
NAMED: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("red", "#ff0000", "red", ()),
    ("darkred", "#8b0000", "red", ()),
    ("maroon", "#800000", "red", ()),
    ("firebrick", "#b22222", "red", ()),
    ("crimson", "#dc143c", "red", ()),
    ("indianred", "#cd5c5c", "red", ()),
    ("tomato", "#ff6347", "red", ()),
    ("orangered", "#ff4500", "orange", ("red",)),
    ("darkorange", "#ff8c00", "orange", ()),
    ("orange", "#ffa500", "orange", ()),
    ("peachpuff", "#ffdab9", "orange", ("pink",)),
    ("saddlebrown", "#8b4513", "brown", ()),
    ("sienna", "#a0522d", "brown", ()),
    ("peru", "#cd853f", "brown", ()),
    ("goldenrod", "#daa520", "yellow", ("orange",)),
    ("darkgoldenrod", "#b8860b", "yellow", ("orange", "brown")),
    ("gold", "#ffd700", "yellow", ()),
    ("yellow", "#ffff00", "yellow", ()),
    ("khaki", "#f0e68c", "yellow", ()),
    ("lemonchiffon", "#fffacd", "yellow", ()),
    ("yellowgreen", "#9acd32", "green", ()),
    ("olivedrab", "#6b8e23", "green", ()),
    ("darkolivegreen", "#556b2f", "green", ()),
    ("chartreuse", "#7fff00", "green", ()),
    ("lawngreen", "#7cfc00", "green", ()),
    ("green", "#008000", "green", ()),
    ("darkgreen", "#006400", "green", ()),
    ("lime", "#00ff00", "green", ()),
    ("forestgreen", "#228b22", "green", ()),
    ("limegreen", "#32cd32", "green", ()),
    ("lightgreen", "#90ee90", "green", ()),
    ("palegreen", "#98fb98", "green", ()),
    ("darkseagreen", "#8fbc8f", "green", ()),
    ("seagreen", "#2e8b57", "green", ()),
    ("mediumseagreen", "#3cb371", "green", ()),
    ("springgreen", "#00ff7f", "green", ()),
    ("mediumspringgreen", "#00fa9a", "green", ()),
    ("turquoise", "#40e0d0", "cyan", ()),
    ("mediumturquoise", "#48d1cc", "cyan", ()),
    ("darkturquoise", "#00ced1", "cyan", ()),
    ("lightseagreen", "#20b2aa", "cyan", ()),
    ("cyan", "#00ffff", "cyan", ()),
    ("darkcyan", "#008b8b", "cyan", ()),
    ("teal", "#008080", "cyan", ()),
    ("paleturquoise", "#afeeee", "cyan", ()),
    ("lightskyblue", "#87cefa", "blue", ()),
    ("steelblue", "#4682b4", "blue", ()),
    ("dodgerblue", "#1e90ff", "blue", ()),
    ("lightsteelblue", "#b0c4de", "blue", ()),
    ("cornflowerblue", "#6495ed", "blue", ()),
    ("royalblue", "#4169e1", "blue", ()),
    ("blue", "#0000ff", "blue", ()),
    ("mediumblue", "#0000cd", "blue", ()),
    ("darkblue", "#00008b", "blue", ()),
    ("navy", "#000080", "blue", ()),
    ("midnightblue", "#191970", "blue", ()),
    ("mediumpurple", "#9370db", "purple", ()),
    ("rebeccapurple", "#663399", "purple", ()),
    ("blueviolet", "#8a2be2", "purple", ()),
    ("indigo", "#4b0082", "purple", ()),
    ("darkorchid", "#9932cc", "purple", ()),
    ("darkviolet", "#9400d3", "purple", ()),
    ("mediumorchid", "#ba55d3", "purple", ()),
    ("purple", "#800080", "purple", ("magenta",)),
    ("darkmagenta", "#8b008b", "magenta", ("purple",)),
    ("magenta", "#ff00ff", "magenta", ()),
    ("mediumvioletred", "#c71585", "magenta", ()),
    ("deeppink", "#ff1493", "pink", ()),
    ("hotpink", "#ff69b4", "pink", ()),
    ("palevioletred", "#db7093", "pink", ()),
    ("pink", "#ffc0cb", "pink", ()),
    ("lightpink", "#ffb6c1", "pink", ()),
]


def stored(hex_colour: str) -> PaletteColour:
    """The colour as extraction stores it: the whole picture, its HLS hue, lightness and
    saturation."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    h, lightness, s = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    return PaletteColour(r=r, g=g, b=b, hue=h * 360.0, saturation=s, lightness=lightness, share=1.0)


def names_matching(colour: PaletteColour) -> set[str]:
    """Every name whose search (default tolerance, any share) returns this colour."""
    out = set()
    for name in NAMES:
        query = parse_colour(name)
        if match_score(colour, query, query.tolerance, 0.0) is not None:
            out.add(name)
    return out


@pytest.mark.parametrize(("css", "hex_colour", "expected", "also"), NAMED)
def test_named_colour_is_found_by_its_name(
    css: str, hex_colour: str, expected: str, also: tuple[str, ...]
) -> None:
    found = names_matching(stored(hex_colour))
    assert expected in found, f"{css} {hex_colour}: found by {sorted(found)}"
    assert found <= {expected, *also}, f"{css} {hex_colour}: also found by {sorted(found)}"


def test_every_name_has_named_colours() -> None:
    assert {expected for _, _, expected, _ in NAMED} == set(NAMES)
