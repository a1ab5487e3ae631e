"""Parsing of the COLOR argument of `search_by_color`, shared by the shell and the server.

The shell parses the argument before sending it, so a typo is reported at once with the list
of what is accepted; the server parses it again because it trusts no client. Both must agree
to the degree, so the rules live here, in one stdlib-only module (the client never imports
Pillow or TensorFlow for this).

Hues are HSL/HLS hues in degrees, [0, 360). Lightness and saturation are HSL values in [0, 1],
the same ones `models.colours.PaletteColour` stores. See docs/colours.md for the table of names.
"""

from __future__ import annotations

import colorsys
import math
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MIN_SHARE",
    "DEFAULT_TOLERANCE",
    "NAMES",
    "ColourQuery",
    "ColourSpecError",
    "LSBox",
    "check_min_share",
    "check_tolerance",
    "hue_distance",
    "hue_ranges",
    "parse_colour",
    "parse_tolerance",
    "read_degrees",
]

# Stored hues are rounded to this many decimals of a degree (models.colours).
HUE_DECIMALS = 2
# A degree or hex query without --tolerance matches hues within this many degrees.
DEFAULT_TOLERANCE = 15.0
#: A colour must cover at least this share of the picture to match, unless --min-share says
#: otherwise. Colours smaller than 5% are logos, trims, stitching, leaves and stray
#: reflections; a product photo's own colour covers far more (docs/colours.md, "Search").
DEFAULT_MIN_SHARE = 0.05

# How far a hex query's lightness and saturation may stray from the hex colour's own. Wide,
# because shading moves a garment's lightness a lot, but narrow enough that a dark brown hex
# (#8b4513, L 0.31) does not pull in bright orange (L 0.5, S 1.0 is inside; L 0.7 is not).
HEX_LIGHTNESS_WINDOW = 0.25
HEX_SATURATION_WINDOW = 0.45


class ColourSpecError(ValueError):
    """A COLOR, --tolerance or --min-share value that cannot be used; the message says why and
    lists what is accepted, so it can be shown to the user as it is."""


@dataclass(frozen=True, slots=True)
class LSBox:
    """An allowed region of (lightness, saturation), bounds inclusive, optionally only for hues
    in [h_lo, h_hi] (degrees, may wrap past 360: 335..20).

    A query's constraint is a union of boxes because "not brown" (for orange) is not a box,
    and where pink ends depends on the hue (a raspberry at 340 is pink earlier than a red).
    """

    l_lo: float = 0.0
    l_hi: float = 1.0
    s_lo: float = 0.0
    s_hi: float = 1.0
    h_lo: float | None = None
    h_hi: float | None = None

    def covers(self, hue: float) -> bool:
        if self.h_lo is None or self.h_hi is None:
            return True
        hue %= 360.0
        if self.h_lo <= self.h_hi:
            return self.h_lo <= hue <= self.h_hi
        return hue >= self.h_lo or hue <= self.h_hi

    def contains(self, lightness: float, saturation: float) -> bool:
        return self.l_lo <= lightness <= self.l_hi and self.s_lo <= saturation <= self.s_hi


@dataclass(frozen=True, slots=True)
class ColourQuery:
    """What a user asked for: a hue plus, for names and hex colours, where in lightness and
    saturation a colour must lie.

    `tolerance` is the default half-width in degrees, used when the user gives no --tolerance:
    15 for degrees and hex, the name's own band for names (green covers more hues than cyan).
    """

    hue: float
    tolerance: float
    boxes: tuple[LSBox, ...] = ()
    name: str | None = None
    text: str = ""

    def accepts(self, hue: float, lightness: float, saturation: float) -> bool:
        """Whether a colour's lightness and saturation suit the query (hue distance is checked
        apart): true where no box covers its hue, else if one of the covering boxes holds it."""
        covering = [b for b in self.boxes if b.covers(hue)]
        return not covering or any(b.contains(lightness, saturation) for b in covering)


# The lines below are drawn from named colours (CSS/X11; `tests/test_colour_names.py` checks them,
# docs/colours.md "Colour queries" says why each is where it is) and then checked on labelled
# photos, which read less saturated than the nominal colours (a red garment S 0.46-0.79).
#
# Brown and orange share hues 15..42; they are told apart by lightness and saturation and the
# two regions are complements, so every colour there is one or the other. Brown is dark orange
# (saddle brown L 0.31, sienna L 0.40) or dull orange up to L 0.75 (peru S 0.59 L 0.53, tan
# S 0.44 L 0.69, potatoes S 0.15-0.3); orange is vivid even in shade (dark orange; a shaded
# orange fruit at L 0.38, S 0.9: L >= 0.35 with S >= 0.75), saturated from L 0.45 on
# (chocolate S 0.75 L 0.47 looks burnt orange), or pale (L >= 0.75: peach) unless dull too:
# pale with S below 0.5 is beige (a mushroom, a camel coat in light), grouped with brown.
# S 0.6 is also the line between red and brown at 8..15 (sienna S 0.56 is brown).
_DULL = 0.6
_BEIGE = 0.5
_ORANGE = (
    LSBox(l_lo=0.35, s_lo=0.75),
    LSBox(l_lo=0.45, s_lo=_DULL),
    LSBox(l_lo=0.75, s_lo=_BEIGE),
)
_BROWN = (
    LSBox(l_hi=0.35),
    LSBox(l_hi=0.45, s_hi=0.75),
    LSBox(l_hi=0.75, s_hi=_DULL),
    LSBox(l_lo=0.75, s_hi=_BEIGE),
)
# Red, pink and magenta share 290..20 and are complements hue by hue. Pink is the pale or dusty
# side: from L 0.50 (deep pink L 0.54, pale violet red L 0.65), or already from L 0.40 when
# greyish (S <= 0.5: at hue 345, L 0.45, S 0.35 is a dusty rose #9b4b5f, S 0.55 a raspberry red
# #b23453), and at the pure reds only from L 0.66 (hot pink L 0.71; tomato L 0.64 is red).
# - 352..8 and 8..15: red below L 0.66, at 8..15 only if S >= 0.6 (duller is brown: sienna);
# - 340..352 (crimson L 0.47 S 0.83, raspberry): red is the darker, vivid side;
# - 325..340: magenta is the darker, vivid side (medium violet red L 0.43 S 0.81, which warm
#   light moves from 322 to 327);
# - 292..325: magenta up to L 0.62 (medium violet red 322, fuchsia 300), pink above (light
#   orchid). 325 lies between medium violet red (322) and deep pink (328);
# - purple reaches 305 for dark colours (L <= 0.30): CSS purple #800080 sits at hue 300, and a
#   dark magenta is called purple; both names then match;
# - a colour both very dark and dull (L <= 0.25, S < 0.4) at 292..325 is purple only: magenta
#   is vivid, and this is an aubergine, a plum or a blackberry, which warm light moves from
#   280-295 to 300-312 (bench.colour_scenes). CSS purple and dark magenta are vivid (S 1.0).
_DUSTY = 0.5
_PINK = (
    LSBox(l_lo=0.62, h_lo=290.0, h_hi=325.0),
    LSBox(l_lo=0.50, h_lo=325.0, h_hi=352.0),
    LSBox(l_lo=0.40, s_hi=_DUSTY, h_lo=325.0, h_hi=352.0),
    LSBox(l_lo=0.66, h_lo=352.0, h_hi=20.0),
)
_RED = (
    LSBox(l_hi=0.40, h_lo=340.0, h_hi=352.0),
    LSBox(l_hi=0.50, s_lo=_DUSTY, h_lo=340.0, h_hi=352.0),
    LSBox(l_hi=0.66, h_lo=352.0, h_hi=8.0),
    LSBox(l_hi=0.66, s_lo=_DULL, h_lo=8.0, h_hi=15.0),
)
_PLUM_L = 0.25
_PLUM_S = 0.4
_MAGENTA = (
    LSBox(l_lo=_PLUM_L, l_hi=0.62, h_lo=292.0, h_hi=325.0),
    LSBox(l_hi=_PLUM_L, s_lo=_PLUM_S, h_lo=292.0, h_hi=325.0),
    LSBox(l_hi=0.40, h_lo=325.0, h_hi=340.0),
    LSBox(l_hi=0.50, s_lo=_DUSTY, h_lo=325.0, h_hi=340.0),
)
_PURPLE = (
    LSBox(l_hi=0.30, h_lo=295.0, h_hi=305.0),
    LSBox(l_hi=_PLUM_L, s_hi=_PLUM_S, h_lo=305.0, h_hi=325.0),
)

# name -> (centre hue, default half-width, lightness/saturation boxes). Chosen from how the
# names are used for products (blue clothes sit near 215-225, rarely at the sRGB primary 240).
# Bands meet at: red/orange 15 (tomato 9 is red, orange red 16 orange), orange/yellow 42 (CSS
# orange 39, gold 51), yellow/green 70 (midway between olive 60 and olive drab 80), green/cyan
# 167 (midway between aquamarine 160 and turquoise 174), cyan/blue 199 (turquoise garments
# photograph at 188-199). The bands overlap a little; every chromatic colour falls under at
# least one name (a property test checks it).
NAMES: dict[str, tuple[float, float, tuple[LSBox, ...]]] = {
    "red": (357.5, 17.5, _RED),
    "orange": (28.5, 13.5, _ORANGE),
    "brown": (25.0, 17.0, _BROWN),
    "yellow": (56.0, 14.0, ()),
    "green": (118.5, 48.5, ()),
    "cyan": (183.0, 16.0, ()),
    "blue": (222.0, 23.0, ()),
    "purple": (285.0, 40.0, _PURPLE),
    "magenta": (316.0, 24.0, _MAGENTA),
    "pink": (335.0, 45.0, _PINK),
}

_ACCEPTED = (
    "a hue in degrees from 0 to 360 (e.g. 210), a name ("
    + ", ".join(NAMES)
    + ") or a hex colour #rrggbb (e.g. #1e90ff)"
)
_HEX = re.compile(r"#([0-9a-fA-F]{6})")
# A plain decimal number, then a unit, ASCII only: `_normalised` has already turned every
# script's digits into these. An exponent is matched only to be refused by name
# (`read_degrees`; `_EXPONENT` for a hue).
_DEGREES = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+)?(?:deg|°)?")
_EXPONENT = "is not a hue in degrees: a hue is a plain number, without an exponent"
# The minus sign of typeset text (U+2212): `−5` is a negative number.
_MINUS = "\u2212"
# The compatibility forms that a keyboard sends for ASCII: an East Asian keyboard's wide mode
# types `ｒｅｄ`, `＃`, `１２０` (and half-width katakana are <narrow>). Other compatibility forms
# (superscripts, circled, parenthesised, mathematical font variants) are not typed for a colour.
_KEYBOARD_FORMS = ("<wide>", "<narrow>")


def hue_distance(a: float, b: float) -> float:
    """Angular distance in degrees, 0..180, so that 355 and 5 are 10 apart."""
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


_TOLERANCE = "tolerance must be a number of degrees, 0 or more (180 or more takes any hue)"


def check_tolerance(tolerance: float, given: str | None = None) -> float:
    """Validate a --tolerance value; anything over 180 already covers the whole circle.
    `given` is what the user typed, so the refusal quotes it rather than the parsed float."""
    if not isinstance(tolerance, int | float) or not math.isfinite(tolerance) or tolerance < 0:
        raise ColourSpecError(
            f"{_TOLERANCE}, not {given if given is not None else repr(tolerance)}"
        )
    return float(min(tolerance, 180.0))


def read_degrees(text: str, exponent: str) -> float | None:
    """The number of degrees `text` writes, by the one rule for hues and --tolerance alike: a
    plain decimal number, optionally `°` or `deg`, read through `_normalised` (full-width
    `２０ｄｅｇ`, another script's digits `٢٠`, the typeset minus of `−5`). None when `text`
    writes no number at all (the caller words that: for a COLOR it may be a misspelt name).
    An exponent raises ColourSpecError(`exponent`): `1e-400` would read as 0 and `1e2` is no
    way to write 100, so it is refused by name rather than read. A plain number too large for
    a float reads as infinity; the caller's range check refuses it or takes it as "any"."""
    m = _DEGREES.fullmatch(_normalised(text))
    if m is None:
        return None
    if m.group(2):
        raise ColourSpecError(exponent)
    return float(m.group(1))


def parse_tolerance(text: str) -> float:
    """A --tolerance as the user typed it, read as COLOR's hues are (`read_degrees`), with
    `check_tolerance`'s refusal for anything that is not 0 or more. The shell's parse only:
    the server gets the tolerance as a number (`ColourSearch.tolerance`), checked there by
    `check_tolerance`. Until session 22's review the shell used float(): `1e-400` was 0 (the
    case refused for hues), `−5` was "not a number" and `２０ｄｅｇ` was refused."""
    typed = text.strip()
    value = read_degrees(
        text,
        "tolerance must be a number of degrees without an exponent, 0 or more (180 or more "
        f"takes any hue), not {typed}",
    )
    if value is None:
        raise ColourSpecError(f"{_TOLERANCE}, not {typed}")
    # a plain number too large for a float (inf) still means "any hue", as 180 does
    return check_tolerance(min(value, 180.0), typed)


def check_min_share(min_share: float, given: str | None = None) -> float:
    """Validate a --min-share value (a fraction of the picture); `given` as for tolerance."""
    if not isinstance(min_share, int | float) or not (0.0 <= min_share <= 1.0):
        raise ColourSpecError(
            "min-share must be a fraction of the picture from 0 to 1 (or 0% to 100%), "
            f"not {given if given is not None else repr(min_share)}"
        )
    return float(min_share)


def hue_ranges(hue: float, tolerance: float) -> list[tuple[float, float]]:
    """Closed [lo, hi] hue intervals within `tolerance` of `hue`, split at 0/360, so that the
    store can use an index: `hue BETWEEN lo AND hi` OR-ed over the (one or two) intervals.

    Stored hues are in [0, 360); a query across 0 gives [lo, 360] and [0, hi].
    """
    tolerance = check_tolerance(tolerance)
    if not math.isfinite(hue):
        raise ColourSpecError(f"hue must be a number of degrees, not {hue!r}")
    if tolerance >= 180.0:
        return [(0.0, 360.0)]
    hue %= 360.0
    lo, hi = hue - tolerance, hue + tolerance
    if lo < 0.0:
        return [(0.0, hi), (lo + 360.0, 360.0)]
    if hi > 360.0:
        return [(0.0, hi - 360.0), (lo, 360.0)]
    return [(lo, hi)]


def _hex_query(text: str, digits: str) -> ColourQuery:
    r, g, b = (int(digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
    # Only a hex with no hue at all is refused. Extraction keeps some faint and dark colours
    # (down to a chroma of 0.03: models.colours), and a cluster's mean can be duller than its
    # pixels, so any threshold above zero would refuse hexes that listings show.
    if max(r, g, b) == min(r, g, b):
        raise ColourSpecError(
            f"{text} is a grey (or white or black) and has no hue; such colours are not "
            f"indexed; give {_ACCEPTED}"
        )
    h, lightness, s = colorsys.rgb_to_hls(r, g, b)
    box = LSBox(
        l_lo=max(0.0, lightness - HEX_LIGHTNESS_WINDOW),
        l_hi=min(1.0, lightness + HEX_LIGHTNESS_WINDOW),
        s_lo=max(0.0, s - HEX_SATURATION_WINDOW),
        s_hi=min(1.0, s + HEX_SATURATION_WINDOW),
    )
    # rounded as stored hues are (models.colours), so the hex a listing shows finds its image
    # even at --tolerance 0
    return ColourQuery(
        hue=round(h * 360.0, HUE_DECIMALS) % 360.0,
        tolerance=DEFAULT_TOLERANCE,
        boxes=(box,),
        text=text.lower(),
    )


def _folded(ch: str) -> str:
    """One character as the rules read it (see `_normalised`)."""
    if ch.isascii():
        return ch
    if ch == _MINUS:
        return "-"
    decomposition = unicodedata.decomposition(ch)
    if decomposition.startswith(_KEYBOARD_FORMS):
        return chr(int(decomposition.split()[1], 16))
    if not decomposition and unicodedata.category(ch) == "Nd":
        return str(unicodedata.decimal(ch))
    return ch


def _normalised(text: str) -> str:
    """The COLOR as the rules read it: the full-width and half-width forms an East Asian
    keyboard sends (`ｒｅｄ`, `＃ＦＦ0000`, `１２０`) as their ASCII letters, digits and `#`, and
    each decimal digit of any other script (Arabic-Indic `٣٠`, Devanagari `१२०`) as its ASCII
    digit, in hues and hex colours alike. One rule for all three keeps what the shell and the
    server accept the same whatever a keyboard sends. Not NFKC: it also reads `1²` as 12, `①`
    as 1, `⒛` as 20 and `ⓡⓔⓓ` as red, and a hue nobody meant is worse than a refusal; nor a
    font variant of a digit (`𝟏`, category Nd too, but no keyboard's digit)."""
    return "".join(_folded(ch) for ch in text).strip()


def parse_colour(text: str) -> ColourQuery:
    """Turn the user's COLOR into a query, or raise ColourSpecError listing what is accepted.

    The text is read through `_normalised` first; messages quote it as typed (stripped)."""
    if not isinstance(text, str):
        raise ColourSpecError(f"colour must be text: {_ACCEPTED}")
    typed = text.strip()
    spec = _normalised(text)
    if not spec:
        raise ColourSpecError(f"no colour given: {_ACCEPTED}")
    key = spec.lower()
    if key in NAMES:
        hue, tolerance, boxes = NAMES[key]
        return ColourQuery(hue=hue, tolerance=tolerance, boxes=boxes, name=key, text=key)
    if spec.startswith("#"):
        m = _HEX.fullmatch(spec)
        if m is None:
            raise ColourSpecError(
                f"malformed hex colour {typed!r}: a hex colour is # and six hex digits; "
                f"give {_ACCEPTED}"
            )
        return _hex_query(spec, m.group(1))
    value = read_degrees(spec, f"{typed} {_EXPONENT}; give {_ACCEPTED}")
    if value is not None:
        if not 0.0 <= value <= 360.0:
            raise ColourSpecError(f"hue {typed} is out of range; give {_ACCEPTED}")
        return ColourQuery(hue=value % 360.0, tolerance=DEFAULT_TOLERANCE, text=spec)
    raise ColourSpecError(f"unknown colour {typed!r}; give {_ACCEPTED}")
