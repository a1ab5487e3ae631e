"""Backdrop suppression and a product cut off by the frame (session 23).

A product that touches three sides of a tight crop, beside another product on white, was
suppressed as a second backdrop (wall + floor) by `models.colours.backdrop_mask`: it is
backdrop-like (over BD_SUPPORT of the frame), white and it cover the ring, and with the other
product in the middle the backdrop stays under BD_MAX. A wall and a floor must still go.
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from models.colours import PaletteColour, extract_palette
from util.colour_spec import hue_distance

H, W = 192, 256


def _rgb(hue: float, lightness: float, saturation: float) -> np.ndarray:
    return np.array(colorsys.hls_to_rgb(hue / 360.0, lightness, saturation)) * 255.0


def _picture(a: np.ndarray, seed: int = 7) -> Image.Image:
    """Light from above (0.8 to 1.1 down the picture, as in bench.bench_colours) and noise."""
    a = a * np.linspace(0.8, 1.1, H)[:, None, None]
    a = a + np.random.default_rng(seed).normal(0, 3, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def _found(palette: list[PaletteColour], hue: float) -> bool:
    return any(hue_distance(c.hue, hue) <= 15 and c.share >= 0.05 for c in palette)


@pytest.mark.parametrize(
    ("first", "second", "width"),
    [(110.0, 290.0, 0.36), (302.0, 89.0, 0.42), (150.0, 68.0, 0.30), (330.0, 150.0, 0.36)],
)
def test_two_garments_on_white_the_first_cut_off_by_the_frame_are_both_found(
    first: float, second: float, width: float
) -> None:
    # the first garment runs off the left, top and bottom edges; the second stands in the middle
    a = np.full((H, W, 3), 245.0)
    bw = int(width * W)
    a[:, :bw] = _rgb(first, 0.45, 0.7)
    a[:, bw + 10 : 2 * bw + 10] = _rgb(second, 0.45, 0.7)
    palette = extract_palette(_picture(a))
    assert _found(palette, first), palette
    assert _found(palette, second), palette
    # and the first keeps the share of the picture it covers
    share = max(c.share for c in palette if hue_distance(c.hue, first) <= 15)
    assert share > 0.8 * width


@pytest.mark.parametrize("floor", ["wood", "green carpet"])
def test_a_wall_and_a_floor_behind_a_product_are_still_suppressed(floor: str) -> None:
    # a cream wall over the top 60%, a floor below it across the whole width, a red product
    # standing on the floor in front of the wall: the backdrop has two colours, both go
    a = np.empty((H, W, 3))
    a[:] = _rgb(40.0, 0.88, 0.35)  # cream wall
    floor_hue = 28.0 if floor == "wood" else 140.0
    a[int(0.6 * H) :] = _rgb(floor_hue, 0.40, 0.45)
    a[40:170, 90:170] = _rgb(355.0, 0.45, 0.8)
    palette = extract_palette(_picture(a))
    assert _found(palette, 355.0), palette
    assert not any(hue_distance(c.hue, floor_hue) <= 20 for c in palette), palette
    # not vacuous: without suppression the floor is a colour of the picture
    assert _found(extract_palette(_picture(a), backdrop=False), floor_hue)
