"""Pictures in the terminal: half-blocks, Kitty, Sixel, detection, contact sheets, swatches.

The Sixel and Kitty outputs are checked by decoding them again (a small Sixel decoder lives
here), and half-blocks by rasterising the styled text back into pixels, so the tests compare
pictures with pictures rather than with strings copied from the implementation.
"""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image, ImageFont
from rich.console import Console
from rich.table import Table
from rich.text import Text

from protocol.catalog import Colour as CatalogColour
from protocol.catalog import ImageSummary
from shell.contact_sheet import GAP, drawable, label_font, write_contact_sheet
from shell.listing import MATCH_MARK, listing_table
from shell.pictures import (
    DEFAULT_CELL_PX,
    GRAPHICS_MODES,
    TerminalPicture,
    cell_pixel_size,
    detect_graphics,
    fit_box,
    half_blocks,
    kitty_escape,
    picture_renderable,
    sixel_escape,
)
from shell.swatches import palette_text

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "clothing-small"
RED, BLUE, GREEN, YELLOW = (255, 0, 0), (0, 0, 255), (0, 204, 51), (255, 204, 0)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def gradient(width: int, height: int) -> Image.Image:
    """A smooth picture with many colours (forces Sixel quantisation, shows orientation)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [255 * x / max(1, width - 1), 255 * y / max(1, height - 1), 128 + 0 * x], axis=-1
    )
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def real_photo() -> bytes:
    photos = sorted(DATASET.glob("gallery/*/*.jpg"))
    if not photos:
        pytest.skip(f"dataset not found at {DATASET}")
    return photos[0].read_bytes()


# ------------------------------------------------------------------ half-block rasteriser


def cells_of(text: Text) -> list[list[tuple[str, object]]]:
    """Split a half-block Text into rows of (character, style) cells."""
    rows: list[list[tuple[str, object]]] = [[]]
    for segment in Console(width=1000).render(text):
        if segment.control:
            continue
        for char in segment.text:
            if char == "\n":
                rows.append([])
            else:
                rows[-1].append((char, segment.style))
    while rows and not rows[-1]:
        rows.pop()
    return rows


def rasterise(text: Text, cell: tuple[int, int] = (1, 2)) -> np.ndarray:
    """Paint each cell's halves with its colours: RGBA, alpha 0 where nothing was drawn."""
    rows = cells_of(text)
    cw, ch = cell
    out = np.zeros((len(rows) * ch, max(len(r) for r in rows) * cw, 4), dtype=np.uint8)
    for y, row in enumerate(rows):
        for x, (char, style) in enumerate(row):
            fg = style.color.get_truecolor() if style and style.color else None
            bg = style.bgcolor.get_truecolor() if style and style.bgcolor else None
            top, bottom = (fg, bg) if char == "▀" else (bg, fg) if char == "▄" else (None, None)
            for colour, y0 in ((top, 0), (bottom, ch // 2)):
                if colour is not None:
                    block = out[y * ch + y0 : y * ch + y0 + ch // 2, x * cw : (x + 1) * cw]
                    block[...] = (*colour, 255)
    return out


# ----------------------------------------------------------------------- half-blocks


def test_two_colour_image_gives_those_colours_as_foreground_and_background() -> None:
    image = Image.new("RGB", (4, 2))
    image.paste(RED, (0, 0, 4, 1))
    image.paste(BLUE, (0, 1, 4, 2))
    rows = cells_of(half_blocks(image, 4, 1))
    assert len(rows) == 1 and len(rows[0]) == 4
    for char, style in rows[0]:
        assert char == "▀"
        assert tuple(style.color.get_truecolor()) == RED
        assert tuple(style.bgcolor.get_truecolor()) == BLUE


@pytest.mark.parametrize(("width", "height"), [(1, 1), (12, 6), (30, 4), (7, 15)])
def test_half_blocks_fill_exactly_the_requested_cells(width: int, height: int) -> None:
    text = half_blocks(gradient(64, 48), width, height)
    rows = cells_of(text)
    assert len(rows) == height
    assert all(len(row) == width for row in rows)
    assert Console(width=200).measure(text).maximum == width


def test_half_blocks_letterbox_a_tall_picture_with_plain_cells() -> None:
    # A 1:4 picture in a box of 8 x 8 half-block pixels covers the middle two columns only.
    rows = cells_of(half_blocks(solid(GREEN, (10, 40)), 8, 4))
    for row in rows:
        drawn = [x for x, (char, _) in enumerate(row) if char != " "]
        assert drawn == [3, 4]
        assert all(style is None or not style for char, style in row if char == " ")


def test_half_blocks_read_bytes_and_match_a_plain_resize() -> None:
    picture = gradient(80, 80)
    pixels = rasterise(half_blocks(png_bytes(picture), 20, 10))
    assert pixels.shape == (20, 20, 4) and (pixels[..., 3] == 255).all()
    expected = np.asarray(picture.resize((20, 20), Image.Resampling.BOX), dtype=int)
    assert np.abs(pixels[..., :3].astype(int) - expected).mean() < 4


def test_half_blocks_keep_orientation() -> None:
    image = Image.new("RGB", (20, 20), BLUE)
    image.paste(RED, (0, 0, 10, 10))  # red top-left quadrant
    pixels = rasterise(half_blocks(image, 10, 5))
    assert tuple(pixels[0, 0, :3]) == RED
    assert tuple(pixels[-1, -1, :3]) == BLUE
    assert tuple(pixels[0, -1, :3]) == BLUE


# ------------------------------------------------------------------------------ kitty

KITTY_CHUNK = re.compile(r"\x1b_G([^;\x1b]*);([A-Za-z0-9+/=]*)\x1b\\")


def parse_kitty(escape: str) -> tuple[list[dict[str, str]], bytes, list[str]]:
    chunks = KITTY_CHUNK.findall(escape)
    assert "".join(f"\x1b_G{k};{p}\x1b\\" for k, p in chunks) == escape, "stray bytes"
    keys = [dict(pair.split("=", 1) for pair in k.split(",")) for k, _ in chunks]
    payloads = [p for _, p in chunks]
    return keys, base64.b64decode("".join(payloads), validate=True), payloads


def test_kitty_escape_is_a_well_formed_chunked_png() -> None:
    noise = np.random.default_rng(7).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    escape = kitty_escape(Image.fromarray(noise, "RGB"), 16, 6, cell_px=(10, 20))
    assert escape.startswith("\x1b_G")
    keys, png, payloads = parse_kitty(escape)
    assert len(payloads) > 1, "a noisy picture should need several chunks"
    assert all(len(p) <= 4096 for p in payloads)
    assert all(len(p) % 4 == 0 for p in payloads[:-1])
    assert [k["m"] for k in keys] == ["1"] * (len(keys) - 1) + ["0"]
    first = keys[0]
    assert (first["a"], first["f"], first["c"], first["r"]) == ("T", "100", "16", "6")
    assert first["q"] == "2", "terminal replies would end up in the shell's input"
    assert all(set(k) == {"m"} for k in keys[1:])
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    assert picture.size == (160, 120)


def test_kitty_picture_keeps_its_colours_and_letterboxes_transparently() -> None:
    _, png, _ = parse_kitty(kitty_escape(solid(RED, (10, 40)), 10, 5, cell_px=(8, 16)))
    picture = Image.open(io.BytesIO(png)).convert("RGBA")
    assert picture.size == (80, 80)
    assert picture.getpixel((40, 40)) == (*RED, 255)
    assert picture.getpixel((2, 40))[3] == 0


# ------------------------------------------------------------------------------ sixel


@dataclass
class SixelPicture:
    width: int
    height: int
    pixels: np.ndarray  # (h, w, 3) int, -1 where no sixel was set


def decode_sixel(escape: str) -> SixelPicture:
    """A small Sixel decoder: colour registers (RGB percent), repeats, '$' and '-'."""
    assert escape.startswith("\x1bP") and escape.endswith("\x1b\\")
    body = escape[2:-2]
    params, _, body = body.partition("q")
    assert re.fullmatch(r"[0-9;]*", params)
    raster = re.match(r'"(\d+);(\d+);(\d+);(\d+)', body)
    assert raster, "raster attributes give the size"
    width, height = int(raster.group(3)), int(raster.group(4))
    body = body[raster.end() :]
    pixels = np.full((height, width, 3), -1, dtype=int)
    registers: dict[int, tuple[int, int, int]] = {}
    colour, x, band, i = None, 0, 0, 0
    while i < len(body):
        char = body[i]
        if char == "#":
            match = re.match(r"#(\d+)(?:;(\d+);(\d+);(\d+);(\d+))?", body[i:])
            assert match
            index = int(match.group(1))
            if match.group(2) is not None:
                assert match.group(2) == "2", "only RGB registers are expected"
                registers[index] = tuple(  # type: ignore[assignment]
                    round(int(match.group(k)) * 255 / 100) for k in (3, 4, 5)
                )
            else:
                colour = registers[index]
            i += match.end()
            continue
        if char == "$":
            x, i = 0, i + 1
            continue
        if char == "-":
            x, band, i = 0, band + 1, i + 1
            continue
        count = 1
        if char == "!":
            match = re.match(r"!(\d+)([?-~])", body[i:])
            assert match
            count, char = int(match.group(1)), match.group(2)
            i += match.end() - 1
        bits = ord(char) - 63
        assert 0 <= bits < 64, f"not a sixel character: {char!r}"
        assert colour is not None, "data before any colour was selected"
        for _ in range(count):
            for row in range(6):
                if bits & (1 << row):
                    y = band * 6 + row
                    assert y < height and x < width, "sixel drawn outside the raster"
                    pixels[y, x] = colour
            x += 1
        i += 1
    return SixelPicture(width, height, pixels)


def test_sixel_reproduces_the_colours_of_a_tiny_image() -> None:
    image = Image.new("RGB", (8, 12), RED)
    image.paste(BLUE, (0, 6, 8, 12))
    image.paste(GREEN, (4, 0, 8, 3))
    image.paste(YELLOW, (2, 9, 3, 10))
    escape = sixel_escape(image, 8, 12, cell_px=(1, 1))
    assert escape.startswith("\x1bP") and escape.endswith("\x1b\\")
    decoded = decode_sixel(escape)
    assert (decoded.width, decoded.height) == (8, 12)
    assert np.abs(decoded.pixels - np.asarray(image, dtype=int)).max() <= 2


def test_sixel_uses_repeats_and_leaves_letterbox_unset() -> None:
    image = solid(RED, (60, 7))
    escape = sixel_escape(image, 60, 18, cell_px=(1, 1))
    assert "!60" in escape, "a uniform row should be run-length encoded"
    decoded = decode_sixel(escape)
    assert (decoded.width, decoded.height) == (60, 18)
    drawn = (decoded.pixels >= 0).all(axis=-1)
    assert drawn.sum() == 60 * 7
    rows = np.flatnonzero(drawn.any(axis=1))
    assert len(rows) == 7 and rows[0] > 0 and rows[-1] < 17  # centred, not at the top
    assert (decoded.pixels[drawn] == RED).all()


def test_sixel_height_stays_inside_the_cells() -> None:
    decoded = decode_sixel(sixel_escape(gradient(50, 50), 5, 3, cell_px=(7, 15)))
    assert decoded.width == 35
    assert decoded.height % 6 == 0 and decoded.height <= 45


def test_sixel_quantises_a_many_coloured_picture_faithfully() -> None:
    picture = gradient(120, 90)
    escape = sixel_escape(picture, 12, 5, cell_px=(10, 18))
    registers = re.findall(r"#\d+;2;", escape)
    assert 16 < len(registers) <= 256
    decoded = decode_sixel(escape)
    expected = np.asarray(fit_box(picture, decoded.width, decoded.height))
    opaque = expected[..., 3] == 255
    assert ((decoded.pixels >= 0).all(axis=-1) == opaque).all()
    error = np.abs(decoded.pixels[opaque] - expected[..., :3][opaque].astype(int)).mean()
    assert error < 6


# -------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("env", "tty", "expected"),
    [
        ({"TERM": "xterm-kitty"}, True, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "1"}, True, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, True, "kitty"),
        ({"TERM": "xterm-ghostty", "TERM_PROGRAM": "ghostty"}, True, "kitty"),
        ({"TERM": "foot"}, True, "sixel"),
        ({"TERM": "foot-extra"}, True, "sixel"),
        ({"TERM": "mlterm"}, True, "sixel"),
        ({"TERM": "contour"}, True, "sixel"),
        (
            {
                "TERM": "xterm-256color",
                "TERM_PROGRAM": "iTerm.app",
                "TERM_PROGRAM_VERSION": "3.5.0",
            },
            True,
            "sixel",
        ),
        (
            {
                "TERM": "xterm-256color",
                "TERM_PROGRAM": "iTerm.app",
                "TERM_PROGRAM_VERSION": "3.2.9",
            },
            True,
            "blocks",
        ),
        ({"TERM": "xterm-256color", "KONSOLE_VERSION": "230805"}, True, "sixel"),
        ({"TERM": "xterm-256color", "KONSOLE_VERSION": "210800"}, True, "blocks"),
        ({"TERM": "xterm-256color", "COLORTERM": "truecolor"}, True, "blocks"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "Apple_Terminal"}, True, "blocks"),
        ({"TERM": "xterm-kitty"}, False, "none"),
        ({"TERM": "xterm-256color"}, False, "none"),
        ({"TERM": "dumb"}, True, "none"),
        ({"TERM": "xterm-256color", "NO_COLOR": "1"}, True, "none"),
        ({"TERM": "screen-256color", "KITTY_WINDOW_ID": "3", "TMUX": "/tmp/t,1,0"}, True, "blocks"),
        ({"TERM": "tmux-256color", "TERM_PROGRAM": "tmux"}, True, "blocks"),
        ({"TERM": "xterm-256color", "VITRINE_GRAPHICS": "sixel"}, True, "sixel"),
        ({"TERM": "xterm-kitty", "VITRINE_GRAPHICS": "blocks"}, True, "blocks"),
        ({"TERM": "xterm-kitty", "VITRINE_GRAPHICS": "none"}, True, "none"),
        ({"TERM": "xterm-256color", "VITRINE_GRAPHICS": "KITTY"}, False, "kitty"),
        ({"TERM": "xterm-kitty", "VITRINE_GRAPHICS": "auto"}, True, "kitty"),
        ({"TERM": "xterm-kitty", "VITRINE_GRAPHICS": "bogus"}, True, "kitty"),
        ({}, True, "blocks"),
    ],
)
def test_detect_graphics(env: dict[str, str], tty: bool, expected: str) -> None:
    assert detect_graphics(env, stdout_is_tty=tty) == expected


def test_detect_graphics_always_answers_a_known_mode() -> None:
    assert detect_graphics({}) in GRAPHICS_MODES


def test_cell_size_falls_back_when_not_a_terminal() -> None:
    assert cell_pixel_size(io.StringIO()) == DEFAULT_CELL_PX


# ------------------------------------------------------------------ renderables in tables


def render(renderable: object, width: int = 60) -> str:
    console = Console(width=width, force_terminal=True, color_system="truecolor")
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def test_picture_renderable_per_mode() -> None:
    thumbnail = png_bytes(gradient(64, 64))
    assert isinstance(picture_renderable(thumbnail, "blocks", 10, 5), Text)
    assert picture_renderable(thumbnail, "none", 10, 5).plain == ""
    for mode in ("kitty", "sixel"):
        picture = picture_renderable(thumbnail, mode, 10, 5, cell_px=(10, 20))
        assert isinstance(picture, TerminalPicture)
    with pytest.raises(ValueError, match="unknown graphics mode"):
        picture_renderable(thumbnail, "ascii", 10, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("junk", [b"", b"not a picture", png_bytes(solid(RED))[:40]])
def test_a_broken_thumbnail_does_not_break_the_listing(junk: bytes) -> None:
    for mode in ("blocks", "kitty", "sixel"):
        shown = picture_renderable(junk, mode, 10, 5)
        assert isinstance(shown, Text) and "no picture" in shown.plain


def strip_pictures(output: str) -> str:
    """Remove each positioned picture: DECSC, moves, the graphics escape, DECRC."""
    return re.sub(r"\x1b7.*?\x1b8", "", output, flags=re.S)


@pytest.mark.parametrize("mode", ["kitty", "sixel"])
def test_graphics_in_a_table_take_the_space_of_their_cells(mode: str) -> None:
    thumbnail = png_bytes(gradient(64, 48))

    def table(picture: object) -> Table:
        grid = Table("picture", "title")
        grid.add_row(picture, "first")
        grid.add_row(picture, "second")
        return grid

    picture = picture_renderable(thumbnail, mode, 12, 3, cell_px=(10, 20))
    with_pictures = render(table(picture))
    blank = render(table(Text("\n".join([" " * 12] * 3))))
    assert strip_pictures(with_pictures) == blank
    positioned = re.findall(r"\x1b7(.*?)\x1b8", with_pictures, flags=re.S)
    assert len(positioned) == 2
    for escape in positioned:
        assert escape.startswith("\x1b[12D\x1b[2A"), "drawn from the box's top-left corner"
    if mode == "kitty":
        assert "c=12,r=3" in positioned[0]
    else:
        sixel = re.search(r"\x1bP.*?\x1b\\", positioned[0], re.S)
        assert sixel is not None and "\x1b[?8452h" in positioned[0]
        assert decode_sixel(sixel.group()).width == 120


def test_graphics_shrink_with_a_squeezed_column() -> None:
    picture = picture_renderable(png_bytes(gradient(64, 48)), "kitty", 30, 2, cell_px=(10, 20))
    output = render(picture, width=20)
    assert "c=20,r=2" in output
    assert all(len(line) <= 20 for line in strip_pictures(output).splitlines())


# ------------------------------------------------------------------------- contact sheet


def test_contact_sheet_grid_tiles_and_labels(tmp_path: Path) -> None:
    colours = [RED, BLUE, GREEN, YELLOW, (128, 0, 128), (0, 128, 128), (200, 100, 0)]
    items = [
        (f"#{i} {'a long product title ' * 3}", png_bytes(solid(c))) for i, c in enumerate(colours)
    ]
    cell, columns = 64, 3
    out = write_contact_sheet(items, tmp_path / "sheet.png", columns=columns, cell=cell)
    assert out == tmp_path / "sheet.png"
    sheet = Image.open(out)
    assert sheet.format == "PNG"
    rows = math.ceil(len(items) / columns)
    assert sheet.width == GAP + columns * (cell + GAP)
    tile_h = (sheet.height - GAP) / rows - GAP
    assert tile_h > cell and tile_h.is_integer()
    for index, colour in enumerate(colours):
        row, column = divmod(index, columns)
        left = GAP + column * (cell + GAP)
        top = GAP + row * (int(tile_h) + GAP)
        assert sheet.getpixel((left + cell // 2, top + cell // 2)) == pytest.approx(colour, abs=3)
        label = np.asarray(sheet.convert("L").crop((left, top + cell, left + cell, top + tile_h)))
        assert (label < 128).any(), f"tile {index} has no label"
    assert list(tmp_path.iterdir()) == [out], "no temporary file left behind"


def test_contact_sheet_letterboxes_and_survives_a_bad_thumbnail(tmp_path: Path) -> None:
    items = [("wide", png_bytes(solid(RED, (100, 20)))), ("broken", b"\x89PNG junk")]
    sheet = Image.open(write_contact_sheet(items, tmp_path / "s.png", columns=2, cell=100))
    assert sheet.getpixel((GAP + 50, GAP + 50)) == RED
    assert sheet.getpixel((GAP + 50, GAP + 5)) != RED  # letterbox above the wide picture


def test_labels_never_show_empty_boxes() -> None:
    """A shop's "Robe d’été" came out as "Robe d□□□": Pillow's own font draws ASCII only."""
    ascii_only = ImageFont.load_default(size=14)
    # (it has a glyph for the curly apostrophe: kept where the font draws it)
    assert drawable("Robe d’été rouge", ascii_only).replace("’", "'") == "Robe d'ete rouge"
    assert drawable("ünïcødé_日本", ascii_only) == "unic?de_??"
    assert drawable("co\u200dop", ascii_only) == "coop"  # a joiner it cannot draw is no "?"
    wide = label_font(14)
    if isinstance(getattr(wide, "path", None), str):  # one of LABEL_FONTS was found
        assert drawable("Robe d’été", wide) == "Robe d’été"
    else:
        pytest.skip("no system font of LABEL_FONTS here: the ASCII fallback is all there is")


def test_contact_sheet_refuses_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one picture"):
        write_contact_sheet([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_contact_sheet_of_real_photos(tmp_path: Path) -> None:
    photo = real_photo()
    sheet = write_contact_sheet([("1 photo", photo)] * 4, tmp_path / "real.png", cell=120)
    assert Image.open(sheet).size[0] == GAP + 4 * (120 + GAP)


# ------------------------------------------------------------------------------- swatches


@dataclass
class Colour:
    r: int
    g: int
    b: int
    share: float


def test_palette_text_shows_hex_and_share() -> None:
    palette = [{"r": 255, "g": 0, "b": 0, "share": 0.42}, Colour(0, 128, 255, 0.003)]
    text = palette_text(palette)
    assert "#ff0000 42%" in text.plain
    assert "#0080ff <1%" in text.plain
    styled = {tuple(span.style.color.get_truecolor()) for span in text.spans}
    assert styled == {(255, 0, 0), (0, 128, 255)}


def test_empty_palette_says_so() -> None:
    assert "no dominant colours" in palette_text([]).plain


def _summary(image_id: int, title: str) -> ImageSummary:
    red = CatalogColour(r=167, g=37, b=51, hue=353.7, saturation=0.63, lightness=0.4, share=0.62)
    olive = CatalogColour(r=136, g=112, b=50, hue=42.7, saturation=0.46, lightness=0.37, share=0.07)
    return ImageSummary(
        id=image_id, title=title, description="", filename="a.jpg", tags=["shop", "dress"],
        price_cents=1999, quantity=3, owner="alice", visibility="public", created_at=0.0,
        width=400, height=533, palette=[olive, red], score=0.6, match=red,
    )  # fmt: skip


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_a_colour_search_listing_fits_and_shows_every_colour(columns: int) -> None:
    """Every colour with its hex and share, the match first and marked, within the terminal's
    width (at 80 columns the table once left the title five cells, folded over eight lines)."""
    items = [_summary(140, "18ed7f47-b091-4eb0-ae81-89f2ef139a9b"), _summary(141, "Red dress")]
    console = Console(width=columns, record=True, color_system=None)
    console.print(listing_table(items, "none", columns))
    lines = console.export_text().splitlines()
    assert all(len(line) <= columns for line in lines)
    assert sum(f"#a72533 62% {MATCH_MARK}" in line for line in lines) == 2
    assert sum("#887032 7%" in line for line in lines) == 2
    # the match is listed first: on the row's first line
    assert all(MATCH_MARK in line for line in lines if "#a72533" in line)
    title_lines = [
        line for line in lines if "18ed7f47" in line or "b091" in line or "139a9b" in line
    ]
    assert 1 <= len(title_lines) <= 3


def test_the_match_is_marked_though_the_index_rounds_its_floats() -> None:
    item = _summary(140, "Red dress")
    match = msgspec.structs.replace(item.match, share=0.62010002, hue=353.70001)
    rounded = msgspec.structs.replace(item, match=match)
    console = Console(width=160, record=True, color_system=None)
    console.print(listing_table([rounded], "none", 160))
    assert f"#a72533 62% {MATCH_MARK}" in console.export_text()


def test_a_browse_listing_shows_the_palette_without_a_mark() -> None:
    item = _summary(140, "Red dress")
    browse = ImageSummary(**{**msgspec.structs.asdict(item), "score": None, "match": None})
    console = Console(width=160, record=True, color_system=None)
    console.print(listing_table([browse], "none", 160))
    text = console.export_text()
    assert "#a72533 62%" in text and "#887032 7%" in text and MATCH_MARK not in text
    # a picture without colours says so in a word, not in a sentence that widens the column
    plain = ImageSummary(**{**msgspec.structs.asdict(browse), "palette": []})
    console = Console(width=80, record=True, color_system=None)
    console.print(listing_table([plain], "none", 80))
    assert "none" in console.export_text() and "no dominant colours" not in console.export_text()


# --------------------------------------------------------------------------- a real photo


def test_a_real_photo_in_half_blocks_looks_like_the_photo() -> None:
    photo = real_photo()
    pixels = rasterise(half_blocks(photo, 32, 16))
    reference = np.asarray(fit_box(photo, 32, 32))
    drawn = pixels[..., 3] == 255
    assert (drawn == (reference[..., 3] >= 128)).all()
    assert (pixels[drawn][:, :3] == reference[..., :3][drawn]).all()
    # and not a flat colour: the photo has structure
    assert pixels[drawn][:, :3].std() > 10
