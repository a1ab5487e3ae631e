"""Contact sheets: one PNG with a listing's thumbnails in a grid, each labelled.

`--sheet PATH` exists for terminals that cannot draw pictures and for sharing a batch with
someone; a sheet is also easier to scan than a long table. Labels use a system font that draws
accented letters (DejaVu Sans, found on most Linux systems, or another of LABEL_FONTS) when one
is installed, so the client ships no font files. Pillow's built-in font, the fallback, draws
ASCII only. A letter the font lacks loses its accent (é → e) or becomes "?", never an empty box
("Robe d□□□" was a shop's "Robe d'été").
"""

from __future__ import annotations

import functools
import math
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from shell.text import printable
from util.images import decode_image

BACKGROUND = (255, 255, 255)
TILE = (242, 242, 242)  # letterbox colour, so a white product still shows its edges
TEXT = (30, 30, 30)
MISSING = (150, 150, 150)
GAP = 10
ELLIPSIS = "…"
#: Tried in order, by file name: Pillow looks them up in the system's font directories.
LABEL_FONTS = (
    "DejaVuSans.ttf",
    "NotoSans-Regular.ttf",
    "LiberationSans-Regular.ttf",
    "Arial.ttf",
    "Helvetica.ttc",
)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_PLAIN_PUNCTUATION = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-"})


@functools.cache
def label_font(size: int) -> Font:
    for name in LABEL_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


@functools.cache
def _draws(font: Font, char: str) -> bool:
    """Whether `font` has a glyph for `char`: a missing one renders as the font's .notdef box,
    the same glyph as a code point no font has."""
    if char.isascii():
        return True
    return _glyph(font, char) != _notdef(font)


@functools.cache
def _notdef(font: Font) -> bytes:
    return _glyph(font, "\uffff")


def _glyph(font: Font, char: str) -> bytes:
    image = Image.new("L", (64, 64))
    ImageDraw.Draw(image).text((0, 0), char, font=font, fill=255)
    return image.tobytes()


def drawable(text: str, font: Font) -> str:
    """`text` with each character `font` cannot draw replaced: by its base letter when it is
    an accented one (or a curly quote, by the plain one), else by "?". A format character that
    it cannot draw (the joiners `printable` keeps) is left out: it has no width of its own, and
    Pillow without a shaper cannot join."""
    out = []
    for char in text:
        if _draws(font, char):
            out.append(char)
            continue
        if unicodedata.category(char) == "Cf":
            continue
        plain = unicodedata.normalize("NFKD", char.translate(_PLAIN_PUNCTUATION))
        plain = "".join(c for c in plain if not unicodedata.combining(c))
        out.append(plain if plain and all(_draws(font, c) for c in plain) else "?")
    return "".join(out)


def _fit_label(label: str, font: Font, width: int) -> str:
    """Truncate with an ellipsis to fit the tile width (binary search on rendered length)."""
    if font.getlength(label) <= width:
        return label
    ellipsis = ELLIPSIS if _draws(font, ELLIPSIS) else "..."
    low, high = 0, len(label)
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(label[:middle].rstrip() + ellipsis) <= width:
            low = middle
        else:
            high = middle - 1
    return label[:low].rstrip() + ellipsis


def _letterboxed(thumbnail: bytes, cell: int) -> Image.Image | None:
    """The thumbnail scaled to fit ``cell`` x ``cell``, or None if it cannot be decoded."""
    try:
        picture = decode_image(thumbnail, target=cell).image
    except ValueError:
        return None
    scale = min(cell / picture.width, cell / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


#: What a sheet may be written as, by the file's suffix.
SHEET_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def sheet_format(path: Path) -> str:
    """The format a sheet at `path` is written in; a ValueError names the suffixes accepted
    (a .jpg used to get PNG bytes)."""
    fmt = SHEET_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        accepted = ", ".join(SHEET_FORMATS)
        raise ValueError(f"a contact sheet is written as {accepted}; name the file so, not {path}")
    return fmt


def write_contact_sheet(
    items: Sequence[tuple[str, bytes]], path: Path, columns: int = 5, cell: int = 200
) -> Path:
    """Write a grid of ``(label, thumbnail bytes)`` items to ``path`` (PNG or JPEG, by its
    suffix: `sheet_format`) and return ``path``.

    Each thumbnail is letterboxed in a ``cell`` x ``cell`` tile with its label (id and title,
    as the caller formats it) truncated underneath. A thumbnail that cannot be decoded leaves
    a marked empty tile rather than losing the whole sheet. The file is written to a temporary
    name and renamed, so an interrupted run never leaves half a sheet at ``path``.
    """
    if not items:
        raise ValueError("a contact sheet needs at least one picture; the listing was empty")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    if cell < 32:
        raise ValueError(f"cell must be at least 32 pixels, got {cell}")
    path = Path(path)
    fmt = sheet_format(path)
    font = label_font(max(10, cell // 15))
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 3)
    label_h = ascent + descent + GAP // 2
    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    tile_w, tile_h = cell, cell + label_h
    sheet = Image.new(
        "RGB", (GAP + columns * (tile_w + GAP), GAP + rows * (tile_h + GAP)), BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    for index, (label, thumbnail) in enumerate(items):
        row, column = divmod(index, columns)
        left = GAP + column * (tile_w + GAP)
        top = GAP + row * (tile_h + GAP)
        draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=TILE)
        picture = _letterboxed(thumbnail, cell)
        if picture is None:
            draw.line((left, top, left + cell - 1, top + cell - 1), fill=MISSING, width=2)
            draw.line((left, top + cell - 1, left + cell - 1, top), fill=MISSING, width=2)
        else:
            offset = (left + (cell - picture.width) // 2, top + (cell - picture.height) // 2)
            sheet.paste(picture, offset)
        text = _fit_label(drawable(printable(label, replacement="").strip(), font), font, cell)
        draw.text((left, top + cell + GAP // 4), text, fill=TEXT, font=font)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sheet.save(temporary, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
