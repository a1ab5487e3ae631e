"""Dominant colours of a product photo, and how well one of them answers a colour query.

Runs at every upload on the thumbnail the pipeline already decoded, so it has to cost a small
fraction of the embedding (about 0.5 ms against 7-8 ms; its per-pixel loops and the hue
clustering are compiled in models/colour_kernels.py, which says why) and must give the same
answer every time: no k-means with random starts. Instead the chromatic pixels of a 64-pixel
copy vote in a circular hue histogram; the smoothed histogram is cut at its valleys (each bin
climbs to its peak) and peaks closer than MERGE_DEGREES are merged. Each cluster is reported
as its lit part looks (LIT_FRACTION). Before that, a coloured backdrop (wall, floor, carpet,
sheet: what surrounds the product along the frame) is left out, so that the product's colour,
not the room's, answers a colour search. Rule and thresholds: docs/colours.md; how each rule
was measured: docs/colour-measurements.md.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from models.colour_kernels import (
    backdrop_core,
    balance_guards,
    classify_pixels,
    cluster_arcs,
    colour_pixels,
    frame_neutral,
    lab_from_linear,
    planar_from_bytes,
    shade_counts,
)
from util.colour_spec import (
    DEFAULT_MIN_SHARE,
    HUE_DECIMALS,
    ColourQuery,
    check_min_share,
    check_tolerance,
    hue_distance,
    parse_colour,
)

__all__ = [
    "CHROMA_MIN",
    "LIGHTNESS_MAX",
    "LIGHTNESS_MIN",
    "MAX_COLOURS",
    "MERGE_DEGREES",
    "MIN_CLUSTER_SHARE",
    "PaletteColour",
    "best_match",
    "extract_palette",
    "match_score",
    "warm_up",
]

# --- the achromatic rule (docs/colours.md) -------------------------------------------------
# A pixel counts as a colour only if its chroma C = max(r,g,b) - min(r,g,b) (0..1) is at least
# CHROMA_MIN: the distance from the grey axis, which rules out greys, and, since C <= 2L and
# C <= 2(1-L), also everything lighter than L = 1 - C/2 or darker than L = C/2. HLS saturation
# alone would not do: (250, 250, 255) has saturation 1.0. LIGHTNESS_MIN/MAX cut the last
# near-blacks and near-whites that still have some chroma (JPEG noise in shadows, glare).
CHROMA_MIN = 0.12
LIGHTNESS_MIN = 0.08
LIGHTNESS_MAX = 0.94

# A faint tint is a colour too where light cannot have made it: pixels with chroma from
# FAINT_CHROMA up to CHROMA_MIN count when they are at least FAINT_MIN_SHARE of the picture,
# their hues agree (mean resultant length >= FAINT_COHERENCE) and their mean hue is in
# FAINT_HUES, the greens (a sage or mint garment, pale produce). Light tints whites and greys
# along the warm-cool line: orange to yellow (15-65: shop light, a cream wall) and blue (shade,
# overcast; navy and blue-grey garments under warm light also spread faint pixels over
# 185-255 on real photos); those stay grey. At the reds the names are split by lightness and
# saturation along lines drawn for chroma >= CHROMA_MIN, so a faint red (leather, a dusty
# pink) would be misnamed red or magenta. The pixels within FAINT_SPREAD degrees of the mean
# hue join the chromatic ones. docs/colour-measurements.md, "Faint greens".
FAINT_CHROMA = 0.06
FAINT_MIN_SHARE = 0.15
FAINT_COHERENCE = 0.8
FAINT_SPREAD = 45.0
FAINT_HUES = ((75.0, 170.0),)

# Dark colours: C <= 2L, so a navy or an aubergine has little chroma however deep its colour;
# (30, 35, 60) has C 0.118 and looks plainly blue. A dark pixel with chroma from DARK_CHROMA up
# to CHROMA_MIN is a colour when that chroma is at least DARK_RATIO of its max (HSV saturation:
# only pixels with max <= CHROMA_MIN / DARK_RATIO = 0.4 can qualify) and its hue is in
# DARK_HUES, greens through blues and purples. The warm side stays out: warm light, wood,
# leather and skin put faint warm casts in every shadow, and the red/brown line is drawn for
# chroma >= CHROMA_MIN (dark brown shoes would turn red). DARK_RATIO was 0.4 until the shade
# (SHADE_*) was measured: 0.3 also finds washed navies and blueberries under their grey bloom
# (C/max about 0.3), at the cost of blue on two black garments of 500 and a tartan on the
# blue/purple line turning purple. docs/colour-measurements.md, "Dark colours" and "Shade".
DARK_CHROMA = 0.08
DARK_RATIO = 0.3
DARK_HUES = (75.0, 330.0)
# Dark browns as a group. Pixel by pixel the warm side stays out (above), so a dark brown
# swatch, a chocolate or a leather bag (#3e2723: C 0.106, C/max 0.44) had no colour at all;
# and noise puts half of such a swatch's pixels under DARK_RATIO, so a per-pixel rule finds
# few of them. Dark warm pixels (max <= CHROMA_MIN / DARK_RATIO, chroma from FAINT_CHROMA up
# to CHROMA_MIN, hue outside DARK_HUES) count as a colour together, like the faint greens:
# when they are at least FAINT_MIN_SHARE of the picture, agree in hue (FAINT_COHERENCE; those
# within FAINT_SPREAD of the mean join), their mean hue is in DARK_GROUP_COLOUR's band (the
# names call every dark colour there brown, so the group can make neither a red nor a yellow),
# and as a whole they are as saturated as the dark rule asks of one pixel: mean chroma at least
# DARK_RATIO of mean max. A shadow is rarely that much of a picture and that coherent.
# docs/colour-measurements.md, "Dark colours".
DARK_GROUP_COLOUR = "brown"
# A colour's shade counts in its share. Shading scales a pixel's r, g and b together, which
# keeps its hue and HSV saturation (C/max) and lowers its chroma: the far side of a blueberry,
# an aubergine or a navy fold falls under the chroma rules while still plainly that colour, so
# a fruit filling 8% of the picture came out at 3-4%, under the 5% a search asks by default.
# A pixel the rules above leave out (chroma at least SHADE_CHROMA, under which its hue is
# noise) is counted into a colour's share, though not into its swatch, when it is darker
# than SHADE_DARKER of the colour's lit max, within SHADE_HUE degrees of its hue and within
# SHADE_SATURATION (relative) of its C/max: the same colour in less light. Only colours in
# SHADE_HUES: on the warm side the shadows of wood, floors and skin are that colour's shade
# as well, and counting them made floors and doors brown or orange on the clothing photos.
# docs/colour-measurements.md, "Shade".
SHADE_CHROMA = 0.03
SHADE_DARKER = 0.7
SHADE_HUE = 15.0
SHADE_SATURATION = 0.25
SHADE_HUES = DARK_HUES

MAX_COLOURS = 4
# A colour is reported as its brightest LIT_FRACTION of pixels look (by value, max of r, g, b),
# not as the mean of all of them: shading darkens a round fruit's far side to a third of its
# lit colour or less, and the mean of a vivid orange is then a saddle brown. People name an
# object by its lit side. A flat swatch moves by its noise only. docs/colour-measurements.md,
# "Lit colour".
LIT_FRACTION = 0.5
# Clusters smaller than this share of the whole picture are noise, edges and JPEG fringes.
MIN_CLUSTER_SHARE = 0.02
# Peaks whose mean hues are this close are one colour (shading moves a garment's hue a little).
MERGE_DEGREES = 24.0
# ... and so are neighbours separated only by a shallow dip (a valley above this fraction of
# the smaller peak), which is what a gradient or a textured fabric looks like.
VALLEY_RATIO = 0.6
# ... but never so far round the hue circle that the merged colour greys: a merge is refused
# when the mean colour of the merged cluster would keep less than CHROMA_KEEP of its pixels'
# mean chroma. A smooth sweep of hues (a rainbow, a hue wheel, colour noise) has no valley to
# cut it and every neighbour within MERGE_DEGREES, so it merged all the way round and its mean
# was grey (#7c7f7c, "hue 120", share 1.0). Shading, texture and a gradient over a few tens of
# degrees keep nearly all of their chroma (red to yellow keeps all of it: sRGB's chroma is
# constant along that edge of the hue hexagon); red to green, 120 degrees, keeps 0.75.
# docs/colour-measurements.md, "Hue sweeps".
CHROMA_KEEP = 0.85
# The long side the thumbnail is box-reduced to before anything else (speed; 4096 pixels
# are plenty for shares to the percent).
WORK_SIDE = 64
# Smoothing of the 1-degree hue histogram, in degrees.
SMOOTH_SIGMA = 4.0

# --- white balance (docs/colours.md: measured, and why it is on or off) ---------------------
WHITE_BALANCE = True
# Pixels that may be a white or grey surface seen under tinted light: bright, not far from
# neutral (HSV saturation C/max). A tint strong enough to exceed WB_MAX_SAT is left alone: a
# white reaches it under a cast of about t = 1.05 (docs/colours.md), and raising it corrected
# beige floors as if they were white (session 23, "Stronger warm casts" in
# docs/colour-measurements.md).
WB_MIN_LIGHTNESS = 0.45
WB_MAX_SAT = 0.30
# They are looked for in a frame this deep (fraction of the short side) around the picture,
# and must cover WB_MIN_FRACTION of that frame.
WB_BORDER = 0.12
WB_MIN_FRACTION = 0.25
# The estimate (their median) must be a colour the frame has: at least WB_MIN_PRESENT of the
# frame within WB_BACKDROP_RADIUS of it. Two pale colours along the frame (a pink and a khaki)
# have a median between them, a "cast" that no pixel has. Patterned carpets and unevenly lit
# sofas, on real photos, have 15-25% of the frame there.
WB_MIN_PRESENT = 0.10
# ... and pixels within WB_BACKDROP_RADIUS (per channel) of that backdrop colour must leave
# room for something else: more than WB_MAX_BACKDROP of the picture, and it is the subject.
WB_BACKDROP_RADIUS = 0.10
WB_MAX_BACKDROP = 0.85
# Only casts with a hue in this range (orange to yellow: warm light) are corrected.
WB_CAST_HUES = (15.0, 65.0)
# No channel is scaled by more than this (a cast larger than that is probably the object).
WB_MAX_GAIN = 1.5
# The backdrop is taken for white, so it must be the whitest thing there: if more than this
# share of the picture is brighter than it and near-neutral, yet would be made a colour by the
# correction, the "cast" is a beige backdrop (a wooden table, a cream wall) and the white or
# pale garment in front of it would come out blue or lavender. Pale colours darker than the
# backdrop (a pastel garment under warm light) are what the correction is for.
WB_MAX_CREATED = 0.05


# --- backdrop suppression (docs/colours.md: measured, and why) ------------------------------
BACKDROP = True
# The frame the backdrop is sampled from: this deep (fraction of the short side, at least 1 px).
BD_RING = 0.04
# Colours are compared in CIE Lab, on a grid of BD_CELL units; a pixel is backdrop-like when
# the frame pixels in its cell and the 26 around it (about BD_CELL * 1.5 Delta E) are at least
# BD_SUPPORT of the frame.
BD_CELL = 10.0
BD_SUPPORT = 0.15
# Backdrop = backdrop-like pixels connected to the frame through backdrop-like pixels ...
# ... unless they are more than BD_MAX of the picture: then the "backdrop" is the subject (a
# swatch, a close-up, a pile of fruit filling the frame) and nothing is suppressed.
BD_MAX = 0.80
# ... or when they cover less than BD_RING_COVER of the frame: a backdrop surrounds the product,
# which reaches the frame only in places; colours that share the frame more evenly (a split,
# stripes, a garment filling one side) are all subject, and none is singled out as backdrop.
BD_RING_COVER = 0.70
# When the backdrop is more than BD_MAX of the picture, the same is tried again on a grid of
# BD_FINE_CELL (about Delta E 10 instead of 15): a pale garment lying on a beige floor or a
# cream sheet is close enough to the floor's colour to join it on the coarse grid, which then
# swallows the whole picture, and the floor would be reported instead of nothing. A swatch or
# a close-up is still kept whole: at the finer match it either stays more than BD_MAX of the
# picture, or what it would give back to the subject is mostly a colour (more than
# BD_FINE_MAX_COLOUR of those pixels): its own colour in other light, not a pale garment.
BD_FINE_CELL = 6.5
BD_FINE_MAX_COLOUR = 0.5
# A backdrop of several colours (a wall and a floor, a sheet on a floor) is one colour group per
# run of Lab cells among the ring's backdrop pixels. A product cut off by the frame on three
# sides beside another product (a tight crop) is backdrop-like by the rules above too, and with
# white it covers the ring; it is given back to the subject unless it looks or lies like a
# backdrop: white, grey or black, or a table's colour (`_table_coloured`), or it surrounds
# (touches at least BD_SURROUND_SIDES sides of the frame and spans at least BD_SURROUND_SPAN of
# two), or it is a layer (spans at least BD_LAYER_SPAN of the top or the bottom side: a wall, a
# floor). A coloured band on a side less than half the frame wide is none of those; from half
# the width on, its top and bottom spans make it surround, and it goes as a backdrop would (a
# backdrop that a product is cut off from looks the same, so geometry cannot tell them apart).
# Only when there are two groups or more: a backdrop of one colour is as before. Docs:
# docs/colour-measurements.md, "A product cut off by the frame".
BD_SURROUND_SIDES = 3
BD_SURROUND_SPAN = 0.5
BD_LAYER_SPAN = 0.8
# When the backdrop is kept (the guard above), what lies in front of it is clustered apart from
# it: a lemon or an orange on a wooden table that fills most of the frame must not merge into
# the wood's hue arc (53 and 32 degrees are closer than MERGE_DEGREES) and come out as one
# brown. A cluster in front joins a backdrop cluster when it is that colour after all: their
# mean colours are as close as the coarse backdrop match itself (Delta E, 1.5 BD_CELL), or
# they have the same hue (within KEPT_MERGE_HUE) and the one in front is not clearly more
# vivid (HLS saturation at most KEPT_MERGE_SAT above): the backdrop's own colour in shade, or
# blended with white or black where it meets them. A vivid orange (S 0.9) on the wood (S 0.5)
# stays apart, and so does the lemon, by its hue.
KEPT_MERGE_DE = 1.5 * BD_CELL
KEPT_MERGE_HUE = 8.0
KEPT_MERGE_SAT = 0.15
# And the kept backdrop was a table after all, and is left out like any other, when it is one
# colour, a table's colour (wood, cork, cream: what the names call brown, or pale on brown's
# hues, a white table under warm light that white balance left alone), and something that
# stays apart covers TABLE_SUBJECT_SHARE of the picture: a product a search would find (its
# default min-share). A swatch or a garment filling the frame has nothing that large in front
# of it; a crate of potatoes may have a leaf or a label, which is smaller; a pile of vivid
# fruit is not a table's colour (its highlights' pale fringe stays apart from it). Docs:
# docs/colour-measurements.md, "A small thing on a large table".
TABLE_COLOUR = "brown"
TABLE_CREAM_LIGHTNESS = 0.75
TABLE_SUBJECT_SHARE = DEFAULT_MIN_SHARE


@dataclass(frozen=True, slots=True)
class PaletteColour:
    """One dominant colour: the mean sRGB of its lit part (LIT_FRACTION), the HLS of that, and
    the share of ALL pixels (background included) the whole colour covers, so shares of one
    image add up to at most 1."""

    r: int
    g: int
    b: int
    hue: float
    saturation: float
    lightness: float
    share: float

    @property
    def hex(self) -> str:
        return f"#{self.r:02x}{self.g:02x}{self.b:02x}"

    @property
    def chroma(self) -> float:
        return (1.0 - abs(2.0 * self.lightness - 1.0)) * self.saturation


def _gaussian_kernel(sigma: float) -> np.ndarray:
    half = int(3 * sigma)
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


_KERNEL = _gaussian_kernel(SMOOTH_SIGMA)


def _work_pixels(
    thumbnail: Image.Image,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The picture box-reduced to about WORK_SIDE, as planar (3, n) float32 in 0..1, the same
    pixels sRGB-decoded (for `_lab`), and its (height, width).

    Planar because per-pixel max/min over a trailing axis of 3 is several times slower in
    numpy than element-wise maximum of three contiguous rows. Both arrays come from one
    compiled pass over the reduced bytes, and the decoding is a table lookup, because each
    numpy pass would let go of the GIL and wait to take it back (docs/colours.md, "Speed").
    """
    img = thumbnail if thumbnail.mode == "RGB" else thumbnail.convert("RGB")
    factor = max(1, max(img.size) // WORK_SIDE)
    if factor > 1:
        img = img.reduce(factor)
    px, linear = planar_from_bytes(np.asarray(img).reshape(-1, 3), _LINEAR_TABLE)
    return px, linear, (img.height, img.width)


def _max_min(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, g, b = px
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


@functools.lru_cache(maxsize=64)
def _border(shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of the frame around the picture, WB_BORDER of each side deep."""
    h, w = shape
    k = max(1, round(WB_BORDER * min(h, w)))
    ring = np.zeros((h, w), dtype=bool)
    ring[:k] = ring[-k:] = True
    ring[:, :k] = ring[:, -k:] = True
    return np.flatnonzero(ring)


def white_balance_gains(px: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Per-channel gains that make the bright near-neutral background grey, or None.

    A von Kries correction, estimated white-patch style but only from the frame around the
    picture, because that is where a product photo's backdrop is: a pale garment on a dark
    cloth fills the middle and must not be taken for a tinted wall. Also None when too little
    of the frame is such a surface, when the cast is not warm (the light we correct is shop
    light; a cool or pink "cast" is more likely the backdrop's own colour), or when the
    correction would be too large to be a tint, or when that "backdrop" is nearly the whole
    picture (a swatch), or when it would turn white things brighter than the backdrop into a
    colour (the backdrop is beige, not a white under warm light).
    `px` is planar (3, n) in 0..1, `shape` its (height, width).
    """
    if px.shape[1] != shape[0] * shape[1]:
        # the compiled passes index `px` by the frame of `shape` without bounds checks
        raise ValueError(f"{px.shape[1]} pixels are not a {shape[0]}x{shape[1]} picture")
    frame = _border(shape)
    n, neutral32, close = frame_neutral(px, frame, *_FRAME_F32)
    if n < WB_MIN_FRACTION * len(frame):
        return None
    # the median, not the mean: where a garment reaches the frame, its pale parts are
    # candidates too, and must not pull the estimate; and it must be a surface that is there
    # (WB_MIN_PRESENT)
    if close < WB_MIN_PRESENT * len(frame):
        return None
    neutral = neutral32.astype(np.float64)
    r, g, b = (float(v) for v in neutral)
    if max(r, g, b) - min(r, g, b) < 1.0 / 255.0:
        return None  # already neutral
    cast_hue = colorsys.rgb_to_hls(r, g, b)[0] * 360.0
    if not WB_CAST_HUES[0] <= cast_hue <= WB_CAST_HUES[1]:
        return None
    gains = neutral.mean() / np.maximum(neutral, 1e-6)
    if gains.max() > WB_MAX_GAIN or gains.min() < 1.0 / WB_MAX_GAIN:
        return None
    gains = gains.astype(np.float32)
    near, made = balance_guards(
        px,
        neutral32,
        gains,
        _WB_RADIUS_F32,
        np.float32(neutral.max() + neutral.min()),
        *_COLOUR_F32,
    )
    # a backdrop is behind something: if nearly all the picture is that colour, it is a
    # swatch or a garment filling the frame, and its colour is the answer, not a cast
    if near > WB_MAX_BACKDROP * px.shape[1]:
        return None
    # pixels brighter than the backdrop, achromatic before the correction and a colour after:
    # the backdrop is beige, not a white under warm light
    if made > WB_MAX_CREATED * px.shape[1]:
        return None
    return gains


# Thresholds for the compiled passes, as float32: numpy compares float32 pixels with a Python
# float in float32, and the kernels must compare as the numpy they replaced did. The
# achromatic rule (chroma, lightness; `_chromatic_mask`), the white balance's frame candidates
# and radius, and the rule with its faint and dark extensions (`classify_pixels`).
_COLOUR_F32 = (
    np.float32(CHROMA_MIN),
    np.float32(2.0 * LIGHTNESS_MIN),
    np.float32(2.0 * LIGHTNESS_MAX),
)
_WB_RADIUS_F32 = np.float32(WB_BACKDROP_RADIUS)
_FRAME_F32 = (np.float32(2.0 * WB_MIN_LIGHTNESS), np.float32(WB_MAX_SAT), _WB_RADIUS_F32)
_RULE_F32 = (
    _COLOUR_F32[0],
    np.float32(FAINT_CHROMA),
    *_COLOUR_F32[1:],
    np.float32(DARK_CHROMA),
    np.float32(DARK_RATIO),
    np.float32(DARK_HUES[0]),
    np.float32(DARK_HUES[1]),
    np.float32(CHROMA_MIN / DARK_RATIO),
)


def _chromatic_mask(mx: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The achromatic rule at the top of the module, from per-pixel max and min, without the
    faint and dark extensions: for what the backdrop's finer match gives back (where a dark
    colour counted as grey only lets a garment be given back). The white balance's guard
    applies the same rule compiled (`balance_guards`), to pixels brighter than a white
    backdrop, where the dark rule cannot apply. Both take their thresholds from `_COLOUR_F32`."""
    chroma_min, light2_min, light2_max = _COLOUR_F32
    light2 = mx + mn
    return (mx - mn >= chroma_min) & (light2 >= light2_min) & (light2 <= light2_max)


# sRGB (D65) to XYZ, rows scaled by the D65 white so that white is (1, 1, 1)
_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
    dtype=np.float32,
) / np.array([[0.95047], [1.0], [1.08883]], dtype=np.float32)


def _lab_bins(cell: float) -> np.ndarray:
    """Grid cells per Lab axis (L 0..100, a and b -128..127) for cells `cell` units wide."""
    return np.array([100 // cell + 1, 256 // cell + 1, 256 // cell + 1], dtype=np.int64)


_LAB_BINS = _lab_bins(BD_CELL)
_FINE_LAB_BINS = _lab_bins(BD_FINE_CELL)


def _linear(px: np.ndarray) -> np.ndarray:
    """sRGB decoding of pixels in 0..1: linear light, the first step to Lab."""
    return np.where(px <= 0.04045, px * np.float32(1 / 12.92), ((px + 0.055) / 1.055) ** 2.4)


# The decoding of every byte value, so that pixels straight from the picture are decoded by
# lookup; white-balanced ones, no longer on the 8-bit grid, and the mean colours of
# `_merge_into_backdrop` go through `_linear`.
_LINEAR_TABLE = _linear(np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0))


def _lab(linear: np.ndarray) -> np.ndarray:
    """CIE Lab (planar, float32) of planar linear RGB: distances there are perceptual, so one
    threshold serves a dark brown floor and a pale beige wall alike."""
    # contiguous float32 always, so that one compiled version serves every caller
    return lab_from_linear(np.ascontiguousarray(linear, dtype=np.float32), _XYZ)


def _ring_depth(shape: tuple[int, int]) -> int:
    """The frame's depth in pixels, shared by the ring and the side spans measured on it."""
    return max(1, round(BD_RING * min(shape)))


@functools.lru_cache(maxsize=64)
def _ring(shape: tuple[int, int]) -> np.ndarray:
    """Boolean (h, w) mask of the outer frame, BD_RING of the short side deep (>= 1 px)."""
    h, w = shape
    k = _ring_depth(shape)
    ring = np.zeros((h, w), dtype=bool)
    ring[:k] = ring[-k:] = True
    ring[:, :k] = ring[:, -k:] = True
    return ring


def backdrop_mask(
    px: np.ndarray, linear: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, bool] | None:
    """The photo's backdrop as a flat boolean mask, and whether to remove it; None if there is
    no backdrop at all.

    A product photo's backdrop (wall, floor, carpet, sheet) is what surrounds the product, so
    it is estimated from the frame: a pixel is backdrop-like if at least BD_SUPPORT of the
    frame has nearly its colour (Lab, within about 1.5 BD_CELL), and backdrop if it is also
    connected to the frame through backdrop-like pixels. When that is more than BD_MAX of the
    picture, a closer match (BD_FINE_CELL) is tried. If the backdrop is still that large, or
    if what the closer match gives back is mostly a colour, there may be nothing in front of
    it: a swatch or a close-up, whose colour is the answer. Then the coarse backdrop comes back
    with False: kept as a colour, but what is in front of it is clustered apart (KEPT_MERGE_*).
    A backdrop that is removed loses the colours that neither look nor lie like a backdrop
    (`_without_cut_off_products`): a product cut off by the frame beside another one.
    `linear` is `px` decoded to linear light (`_linear`), which the Lab conversion starts from.
    """
    height, width = shape
    lab, ring = _lab(linear), _ring(shape).ravel()
    # BD_MAX is applied here rather than in the kernel, to know when to try the finer grid
    back = backdrop_core(
        lab, height, width, ring, _LAB_BINS, BD_CELL, BD_SUPPORT, 1.0, BD_RING_COVER
    )
    if not back.any():
        return None
    if np.count_nonzero(back) > BD_MAX * back.size:
        fine = backdrop_core(
            lab, height, width, ring, _FINE_LAB_BINS, BD_FINE_CELL, BD_SUPPORT, BD_MAX,
            BD_RING_COVER,
        )  # fmt: skip
        if not fine.any() or not _gives_back_neutral(px, back & ~fine):
            return back, False  # a swatch, a close-up, or a small thing on a large table
        back = fine
    return _without_cut_off_products(px, lab, back, ring, shape), True


def _without_cut_off_products(
    px: np.ndarray, lab: np.ndarray, back: np.ndarray, ring: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """`back` less the colours of the ring's backdrop that neither look nor lie like a backdrop
    (BD_SURROUND_*, BD_LAYER_SPAN): a product cut off by the frame on three sides beside
    another one would otherwise count as a second backdrop (wall + floor) and be suppressed."""
    on_ring = np.flatnonzero(ring & back)
    groups = _colour_groups(lab[:, on_ring])
    if groups.max() == 0:
        return back
    height, width = shape
    depth = _ring_depth(shape)
    means, dropped = [], []
    for g in range(groups.max() + 1):
        mine = on_ring[groups == g]
        means.append(lab[:, mine].mean(axis=1))
        colour = px[:, mine].mean(axis=1)
        if colour.max() - colour.min() < CHROMA_MIN or _is_table_colour(colour):
            continue
        where = np.zeros(height * width, dtype=bool)
        where[mine] = True
        where = where.reshape(height, width)
        spans = [
            where[:depth].any(axis=0).mean(),  # top
            where[-depth:].any(axis=0).mean(),  # bottom
            where[:, :depth].any(axis=1).mean(),  # left
            where[:, -depth:].any(axis=1).mean(),  # right
        ]
        surrounds = (
            sum(span > 0 for span in spans) >= BD_SURROUND_SIDES
            and sum(span >= BD_SURROUND_SPAN for span in spans) >= 2
        )
        if not surrounds and max(spans[:2]) < BD_LAYER_SPAN:
            dropped.append(g)
    if not dropped:
        return back
    # every backdrop pixel, in the ring or not, goes with the group whose mean is nearest
    inside = np.flatnonzero(back)
    centre = np.array(means, dtype=np.float32)
    nearest = ((lab[:, inside].T[:, None, :] - centre[None]) ** 2).sum(axis=2).argmin(axis=1)
    back = back.copy()
    back[inside[np.isin(nearest, dropped)]] = False
    return back


def _colour_groups(lab: np.ndarray) -> np.ndarray:
    """Group number (0, 1, ...) of each pixel (planar Lab): pixels whose BD_CELL cells are
    joined by a run of neighbouring cells (the 26 around each, as in `backdrop_core`) are one
    colour, a wall and its shade; a white wall and a red garment are two."""
    # one integer per cell (`_LAB_BINS`), for a 1-D `unique`: several times faster than rows
    grid = (lab + np.array([[0.0], [128.0], [128.0]], dtype=np.float32)) / np.float32(BD_CELL)
    grid = np.minimum(np.maximum(grid, 0).astype(np.int64), _LAB_BINS[:, None] - 1)
    span = _LAB_BINS[1] * _LAB_BINS[2]
    flat, index = np.unique(grid[0] * span + grid[1] * _LAB_BINS[2] + grid[2], return_inverse=True)
    unique = np.stack([flat // span, flat // _LAB_BINS[2] % _LAB_BINS[1], flat % _LAB_BINS[2]], 1)
    near = np.abs(unique[:, None, :] - unique[None, :, :]).max(axis=2) <= 1
    # connected components: square the reach until it stops growing (float32: BLAS, fast)
    reach = near.astype(np.float32)
    while True:
        wider = (reach @ reach > 0).astype(np.float32)
        if (wider == reach).all():
            break
        reach = wider
    first = reach.argmax(axis=1)  # the lowest-numbered cell each cell reaches names its group
    _, group = np.unique(first, return_inverse=True)
    return group.ravel()[index.ravel()]


def _gives_back_neutral(px: np.ndarray, released: np.ndarray) -> bool:
    """Whether the pixels the finer match gives back to the subject are mostly white, grey or
    black (a pale garment the coarse grid merged with the floor). If they are mostly a colour,
    that is the backdrop's own colour in another light (a shaded swatch), and the swatch rule
    stands."""
    mx, mn = _max_min(px[:, released])
    return np.count_nonzero(_chromatic_mask(mx, mn)) <= BD_FINE_MAX_COLOUR * mx.size


def _hues(px: np.ndarray, mx: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """HLS hues in degrees of planar pixels with their max and chroma (chroma > 0)."""
    r, g, b = px
    hue = np.where(
        mx == r, (g - b) / chroma, np.where(mx == g, (b - r) / chroma + 2.0, (r - g) / chroma + 4.0)
    )
    hue *= 60.0
    hue %= 360.0
    return hue


def _faint_hue(hue: float) -> bool:
    return any(lo <= hue <= hi for lo, hi in FAINT_HUES)


class _Classified(NamedTuple):
    """A part of the picture sorted by the achromatic rule and its extensions."""

    colours: np.ndarray  # the chromatic pixels, planar
    bins: np.ndarray  # their 1-degree hue bins
    mx: np.ndarray  # every pixel's max(r, g, b) ...
    chroma: np.ndarray  # ... its chroma ...
    kind: np.ndarray  # ... and its kind (1: a colour), for the shade (`_count_shade`)


def _chromatic_pixels(px: np.ndarray, total: int) -> _Classified:
    """The chromatic pixels (the rule is at the top), with the pixels of a faint tint or of a
    dark brown when they make a group of their own (FAINT_CHROMA, DARK_GROUP_COLOUR). `total`
    is the number of pixels of the whole picture, backdrop included."""
    mx, chroma, kind, faint_count, dark_count = classify_pixels(px, *_RULE_F32)
    if faint_count >= FAINT_MIN_SHARE * total:
        faint = kind == 2
        found = _coherent_hues(_hues(px[:, faint], mx[faint], chroma[faint]))
        if found is not None and _faint_hue(found[0]):
            faint[faint] = found[1]
            kind[faint] = 1
    # the faint rule only takes pixels from the dark group's candidates, so a count too
    # small before it is too small after it
    if dark_count >= FAINT_MIN_SHARE * total:
        _join_dark_brown_group(px, mx, chroma, kind, total)
    return _Classified(*colour_pixels(px, mx, chroma, kind), mx, chroma, kind)


def _coherent_hues(hue: np.ndarray) -> tuple[float, np.ndarray] | None:
    """The circular mean of `hue` (degrees) and which of them lie within FAINT_SPREAD of it;
    None when they do not agree (mean resultant length under FAINT_COHERENCE), as the hues of
    JPEG noise or a heather knit do not."""
    rad = np.radians(hue)
    x, y = float(np.cos(rad).mean()), float(np.sin(rad).mean())
    if np.hypot(x, y) < FAINT_COHERENCE:
        return None
    mean = float(np.degrees(np.arctan2(y, x)) % 360.0)
    d = np.abs(hue - mean)
    return mean, np.minimum(d, 360.0 - d) <= FAINT_SPREAD


_DARK_GROUP = parse_colour(DARK_GROUP_COLOUR)


def _join_dark_brown_group(
    px: np.ndarray, mx: np.ndarray, chroma: np.ndarray, kind: np.ndarray, total: int
) -> None:
    """Mark a dark brown group's pixels as colours in `kind` (DARK_GROUP_COLOUR). The test is
    of the group, not of each pixel, because noise spreads a dark brown's pixels on both sides
    of DARK_RATIO."""
    dark = np.flatnonzero((kind == 2) & (mx <= np.float32(CHROMA_MIN / DARK_RATIO)))
    if len(dark) < FAINT_MIN_SHARE * total:
        return
    hue = _hues(px[:, dark], mx[dark], chroma[dark])
    warm = (hue <= DARK_HUES[0]) | (hue >= DARK_HUES[1])
    dark, hue = dark[warm], hue[warm]
    if len(dark) < FAINT_MIN_SHARE * total:
        return
    found = _coherent_hues(hue)
    if found is None or hue_distance(found[0], _DARK_GROUP.hue) > _DARK_GROUP.tolerance:
        return
    group = dark[found[1]]
    if len(group) < FAINT_MIN_SHARE * total:
        return
    if float(chroma[group].mean()) >= DARK_RATIO * float(mx[group].mean()):
        kind[group] = 1


def extract_palette(
    thumbnail: Image.Image,
    max_colours: int = MAX_COLOURS,
    *,
    white_balance: bool | None = None,
    backdrop: bool | None = None,
) -> list[PaletteColour]:
    """Up to `max_colours` dominant chromatic colours, largest share first; [] if none.

    Shares are of the whole picture. The backdrop (backdrop_mask) is left out of the colours
    the way whites and greys are, but still counted in every share's denominator, so a red
    dress on a wooden floor is red with the share of the picture the dress covers.
    `white_balance` and `backdrop` override WHITE_BALANCE and BACKDROP (for measurement).
    """
    px, linear, shape = _work_pixels(thumbnail)
    total = px.shape[1]
    if total == 0 or max_colours <= 0:
        return []
    if WHITE_BALANCE if white_balance is None else white_balance:
        gains = white_balance_gains(px, shape)
        if gains is not None:
            px = np.minimum(px * gains[:, None], 1.0)
            linear = _linear(px)
    parts = [px]
    use_backdrop = BACKDROP if backdrop is None else backdrop
    found = backdrop_mask(px, linear, shape) if use_backdrop else None
    if found is not None:
        back, remove = found
        # removed: not colours, but still counted in `total`, like whites; kept: apart.
        # `compress`, not `px[:, mask]`: a mask on the last axis gives Fortran order, and a
        # kernel meeting a second layout is compiled a second time, in the middle of an upload
        # on a machine's first run (`compress` is also five times faster)
        front = px.compress(~back, axis=1)
        parts = [front] if remove else [px.compress(back, axis=1), front]
    chromatic = [_chromatic_pixels(part, total) for part in parts]
    if sum(len(part.bins) for part in chromatic) < MIN_CLUSTER_SHARE * total:
        return []
    groups = [
        cluster_arcs(
            part.colours,
            part.bins,
            _KERNEL,
            MERGE_DEGREES,
            VALLEY_RATIO,
            LIT_FRACTION,
            CHROMA_KEEP,
        )
        if len(part.bins)
        else _NO_ARCS
        for part in chromatic
    ]
    # the shade before the merge: whether what stands on a kept backdrop is as large as a
    # product (TABLE_SUBJECT_SHARE) counts its shade too
    groups[-1] = _count_shade(groups[-1], parts[-1], chromatic[-1], total)
    arcs = _merge_into_backdrop(*groups, total) if len(groups) == 2 else groups[0]
    out: list[PaletteColour] = []
    for count, _, _, _, lit, sr, sg, sb in arcs:
        share = count / total
        if share < MIN_CLUSTER_SHARE:
            continue
        # Hue, lightness and saturation of the 8-bit colour that is stored and shown, so that
        # searching for the hex a listing shows finds it even at --tolerance 0.
        r8, g8, b8 = (round(float(v / lit) * 255) for v in (sr, sg, sb))
        h, lightness, s = colorsys.rgb_to_hls(r8 / 255, g8 / 255, b8 / 255)
        out.append(
            PaletteColour(
                r=r8,
                g=g8,
                b=b8,
                hue=round(h * 360.0, HUE_DECIMALS) % 360.0,
                saturation=round(float(s), 4),
                lightness=round(float(lightness), 4),
                share=round(float(share), 4),
            )
        )
    out.sort(key=lambda c: (-c.share, c.hue))
    return out[:max_colours]


_NO_ARCS = np.empty((0, 8))


def _count_shade(
    arcs: np.ndarray, px: np.ndarray, classified: _Classified, total: int
) -> np.ndarray:
    """`arcs` (rows of `cluster_arcs`) with each colour's shade added to its pixel count
    (SHADE_*). The shade is looked for among the pixels in front of the backdrop (`px`, as
    `_chromatic_pixels` classified them): a kept backdrop's colours already cover most of the
    picture."""
    if not len(arcs):
        return arcs
    counted = arcs.copy()
    counted[:, 0] += shade_counts(
        arcs, px, classified.mx, classified.chroma, classified.kind, MIN_CLUSTER_SHARE * total,
        *SHADE_HUES, SHADE_CHROMA, SHADE_DARKER, SHADE_HUE, SHADE_SATURATION,
    )  # fmt: skip
    return counted


def _merge_into_backdrop(kept: np.ndarray, front: np.ndarray, total: int) -> np.ndarray:
    """The arcs of a kept backdrop and of what is in front of it (rows of `cluster_arcs`),
    out of `total` pixels: each front arc joins the nearest backdrop arc that is the same
    colour (KEPT_MERGE_*), and stays a colour of its own otherwise.

    If the backdrop is a table under a product (TABLE_*), only what stands in front is
    returned. A backdrop of two colours or more is not taken for a table: it can be a garment
    touching two edges of the frame in front of a wall (each in enough of the frame to count as
    backdrop), and what stays apart is then their blend where they meet."""
    if not len(kept) or not len(front):
        return np.concatenate([kept, front])
    means = [(arcs[:, 1:4] / arcs[:, :1]).T.astype(np.float32) for arcs in (kept, front)]
    lab = [_lab(_linear(m)) for m in means]
    distance = np.linalg.norm(lab[0][:, :, None] - lab[1][:, None, :], axis=0)
    hls = [[colorsys.rgb_to_hls(*(float(v) for v in rgb)) for rgb in m.T] for m in means]
    merged = kept.copy()
    alone = []
    for j, (hue_f, _, sat_f) in enumerate(hls[1]):
        same = [
            i
            for i, (hue_k, _, sat_k) in enumerate(hls[0])
            if distance[i, j] <= KEPT_MERGE_DE
            or (
                hue_distance(hue_k * 360.0, hue_f * 360.0) <= KEPT_MERGE_HUE
                and sat_f - sat_k <= KEPT_MERGE_SAT
            )
        ]
        if same:
            merged[min(same, key=lambda i: distance[i, j])] += front[j]
        else:
            alone.append(front[j])
    apart = np.array(alone).reshape(-1, 8)
    behind = merged[merged[:, 0] >= MIN_CLUSTER_SHARE * total]
    on_it = len(apart) > 0 and apart[:, 0].max() >= TABLE_SUBJECT_SHARE * total
    if on_it and len(behind) == 1 and _table_coloured(behind[0]):
        return apart
    return np.concatenate([merged, apart])


_TABLE = parse_colour(TABLE_COLOUR)


def _table_coloured(arc: np.ndarray) -> bool:
    """Whether a cluster (a row of `cluster_arcs`, named by its lit half as the palette is)
    has a table's colour."""
    return _is_table_colour(arc[5:8] / arc[4])


def _is_table_colour(rgb: np.ndarray) -> bool:
    """Whether an sRGB colour (0-1) is a table's (TABLE_COLOUR, TABLE_CREAM_LIGHTNESS)."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*(float(v) for v in rgb))
    hue *= 360.0
    if hue_distance(hue, _TABLE.hue) > _TABLE.tolerance:
        return False
    return lightness >= TABLE_CREAM_LIGHTNESS or _TABLE.accepts(hue, lightness, saturation)


def warm_up() -> None:
    """Load (or, the first time on a machine, compile: about 12 s) the compiled kernels, on
    pictures that take every path through them, so the first upload does not wait for it."""
    warm = Image.new("RGB", (64, 48), (236, 226, 205))  # a warm white backdrop ...
    warm.paste((190, 40, 30), (16, 12, 48, 36))  # ... behind a red product
    for picture in (warm, Image.new("RGB", (32, 32), (40, 90, 200))):
        extract_palette(picture)


def match_score(
    colour: PaletteColour, query: ColourQuery, tolerance: float, min_share: float
) -> float | None:
    """How clearly this colour answers the query, or None if it does not.

    Score = share x closeness x clarity, so a large, on-hue, vivid colour ranks first:
    closeness falls from 1 at the query hue to 0.5 at the tolerance (quadratically, so the
    extraction's few degrees of noise near the centre hardly matter); clarity goes from 0.6 for
    a colour at the chromatic threshold to 1 for chroma 0.5 and up.
    """
    tolerance = check_tolerance(tolerance)
    min_share = check_min_share(min_share)
    if colour.share < min_share:
        return None
    d = hue_distance(colour.hue, query.hue)
    if d > tolerance:
        return None
    if not query.accepts(colour.hue, colour.lightness, colour.saturation):
        return None
    closeness = 1.0 - 0.5 * (d / tolerance) ** 2 if tolerance > 0 else 1.0
    clarity = 0.6 + 0.4 * min(1.0, colour.chroma / 0.5)
    return colour.share * closeness * clarity


def best_match(
    palette: list[PaletteColour], query: ColourQuery, tolerance: float, min_share: float
) -> tuple[float, PaletteColour] | None:
    """An image's score for a query: its best-matching colour's (score, colour), or None."""
    best: tuple[float, PaletteColour] | None = None
    for colour in palette:
        score = match_score(colour, query, tolerance, min_share)
        if score is not None and (best is None or score > best[0]):
            best = (score, colour)
    return best
