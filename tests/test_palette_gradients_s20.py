"""Palettes of smooth hue sweeps and colour noise (session 20, QA issue "rainbow").

A picture whose hues sweep smoothly round the circle has no valley in its hue histogram and
every neighbouring peak within MERGE_DEGREES, so the merge used to join it all the way round;
the mean of that cluster was grey (#7c7f7c, "hue 120", share 1.0) and a rainbow was found by
`search_by_color green --min-share 0.99`. The palette must hold the picture's chromatic
colours (docs/shell.md): vivid colours along the sweep, or nothing, never a grey.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.colours import CHROMA_MIN, PaletteColour, best_match, extract_palette
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines
from util.colour_spec import ColourSpecError, check_tolerance, hue_distance, parse_colour

PASSWORD = "correct horse battery"


def _hsv(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """HSV (hue in degrees) to 8-bit RGB, vectorised: colorsys one pixel at a time is slow."""
    h = (hue % 360.0) / 60.0
    c = value * saturation
    x = c * (1 - np.abs(h % 2 - 1))
    zero = np.zeros_like(h)
    sector = np.floor(h).astype(int) % 6
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    rgb = np.zeros((*h.shape, 3))
    for k, (r, g, b) in enumerate(table):
        on = sector == k
        rgb[on] = np.stack([r, g, b], axis=-1)[on]
    rgb += (value - c)[..., None]
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def sweep(first: float, last: float, width: int = 256, height: int = 192) -> Image.Image:
    """Hues from `first` to `last` degrees, left to right, fully saturated."""
    hue = np.broadcast_to(np.linspace(first, last, width, endpoint=False), (height, width))
    one = np.ones((height, width))
    return Image.fromarray(_hsv(hue, one, one))


def rainbow_on_white() -> Image.Image:
    """A vertical rainbow (hue top to bottom) filling the middle 60% of a white picture."""
    img = Image.new("RGB", (300, 400), (255, 255, 255))
    img.paste(sweep(0, 360, 400, 180).transpose(Image.Transpose.ROTATE_270), (60, 0))
    return img


def hue_wheel(side: int = 256) -> Image.Image:
    """Hue by angle, saturation by radius (grey at the centre), white outside the disc."""
    yy, xx = np.mgrid[0:side, 0:side] - side / 2
    radius = np.hypot(yy, xx) / (side / 2)
    rgb = _hsv(np.degrees(np.arctan2(yy, xx)), np.minimum(radius, 1.0), np.ones_like(radius))
    rgb[radius > 1.0] = 255
    return Image.fromarray(rgb)


def block_noise(seed: int, blocks: int = 64, side: int = 256) -> Image.Image:
    """Random 8-bit colours in square blocks (each a few working pixels, so the box reduction
    does not average them to grey)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (blocks, blocks, 3), dtype=np.uint8))
    return small.resize((side, side), Image.Resampling.NEAREST)


def thumbnail(img: Image.Image) -> Image.Image:
    img = img.copy()
    img.thumbnail((256, 256))
    return img


def assert_no_grey(palette: list[PaletteColour]) -> None:
    for colour in palette:
        rgb = (colour.r, colour.g, colour.b)
        assert (max(rgb) - min(rgb)) / 255 >= CHROMA_MIN, (colour, palette)


PICTURES = {
    "rainbow": lambda: sweep(0, 360),
    "rainbow vertical": lambda: sweep(0, 360).transpose(Image.Transpose.ROTATE_90),
    "rainbow on white": rainbow_on_white,
    "hue wheel": hue_wheel,
}


@pytest.mark.parametrize("name", PICTURES)
def test_a_hue_sweep_gives_vivid_colours_along_it(name: str) -> None:
    """Several colours, none grey, none covering the picture alone, each far in hue from the
    others: the sweep is cut into arcs that keep their chroma, not merged round the circle."""
    palette = extract_palette(thumbnail(PICTURES[name]()))
    assert len(palette) >= 3, palette
    assert_no_grey(palette)
    for colour in palette:
        assert colour.chroma >= 0.5, (colour, palette)  # an arc of vivid hues is vivid
        assert colour.share <= 0.4, (colour, palette)
    hues = [c.hue for c in palette]
    for i, a in enumerate(hues):
        for b in hues[i + 1 :]:
            assert hue_distance(a, b) >= 40, palette


@pytest.mark.parametrize("name", PICTURES)
def test_a_hue_sweep_does_not_answer_one_colour_for_the_whole_picture(name: str) -> None:
    """What QA saw: `search_by_color green --min-share 0.99` found the rainbow."""
    palette = extract_palette(thumbnail(PICTURES[name]()))
    for query in ("red", "green", "blue", "cyan", "120", "0"):
        assert best_match(palette, parse_colour(query), 180.0, 0.5) is None, (query, palette)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_colour_noise_is_never_grey(seed: int) -> None:
    palette = extract_palette(thumbnail(block_noise(seed)))
    assert_no_grey(palette)
    assert all(c.share <= 0.5 for c in palette), palette


def test_a_red_to_green_gradient_gives_colours_along_it() -> None:
    """120 degrees of hue: its mean was one dull olive (#bfbf00) covering everything."""
    palette = extract_palette(thumbnail(sweep(0, 120)))
    assert len(palette) >= 2, palette
    assert_no_grey(palette)
    for colour in palette:
        assert colour.hue <= 130 or colour.hue >= 350, palette
        assert colour.chroma >= 0.9 and colour.share <= 0.75, palette
    assert best_match(palette, parse_colour("red"), 30.0, 0.3) is not None, palette
    assert best_match(palette, parse_colour("green"), 60.0, 0.3) is not None, palette


def test_a_red_to_yellow_gradient_stays_one_vivid_colour_along_it() -> None:
    """Red to yellow keeps all its chroma (one edge of the sRGB hue hexagon), so it may stay
    one cluster; it must be along the gradient and vivid. (A guard: this passed before too.)"""
    palette = extract_palette(thumbnail(sweep(0, 60)))
    assert palette
    assert_no_grey(palette)
    for colour in palette:
        assert colour.hue <= 65 and colour.chroma >= 0.9, palette


@pytest.mark.parametrize("name", [*PICTURES, "noise"])
def test_sweeps_are_deterministic(name: str) -> None:
    make = PICTURES.get(name, lambda: block_noise(7))
    first = extract_palette(thumbnail(make()))
    assert all(extract_palette(thumbnail(make())) == first for _ in range(3))


def test_the_tolerance_refusal_does_not_contradict_itself() -> None:
    with pytest.raises(ColourSpecError) as refused:
        check_tolerance(-1e3, "-1e3")
    message = str(refused.value)
    assert "0 or more" in message and "180 or more takes any hue" in message, message
    assert "from 0 to 180" not in message, message


# --- end to end: the real shell against the real server ------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("gradients")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("alice",), PASSWORD)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def uploaded(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    folder = tmp_path_factory.mktemp("pictures")
    alice = Shell(server, "alice", tmp_path_factory.mktemp("alice"))
    ids = {}
    for name, make in (("rainbow", lambda: sweep(0, 360)), ("noise", lambda: block_noise(1))):
        path = folder / f"{name}.png"
        buf = io.BytesIO()
        make().save(buf, "PNG")
        path.write_bytes(buf.getvalue())
        code, out, err = alice(f'add_image "{path}" --json --tags gradient-s20')
        assert code == 0, err
        (row,) = json_lines(out)
        ids[name] = int(row["id"])
    return ids


def test_search_does_not_take_a_rainbow_or_noise_for_one_colour(
    server: ServerProcess, uploaded: dict[str, int], tmp_path: Path
) -> None:
    alice = Shell(server, "alice", tmp_path / "alice")
    for name in ("red", "green", "blue"):
        code, out, err = alice(f"search_by_color {name} --min-share 0.5 --tags gradient-s20 --json")
        assert code == 0, err
        assert json_lines(out) == [], (name, out)
    # the rainbow's colours are there to be found, each as the part of it that has that hue
    code, out, err = alice("search_by_color green --tags gradient-s20 --json")
    assert code == 0, err
    assert uploaded["rainbow"] in {row["id"] for row in json_lines(out)}, out


def test_shell_tolerance_refusal_is_consistent(
    server: ServerProcess, uploaded: dict[str, int], tmp_path: Path
) -> None:
    alice = Shell(server, "alice", tmp_path / "alice")
    code, _out, err = alice("search_by_color red --tolerance -1e3")
    assert code != 0
    assert "0 or more (180 or more takes any hue), not -1e3" in err, err
