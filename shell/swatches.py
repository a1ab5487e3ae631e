"""Dominant colours as coloured swatches in the terminal.

A palette entry is anything with ``r``, ``g``, ``b`` (0-255) and ``share`` (the fraction of the
whole picture, 0-1) as keys or attributes: a dict decoded from JSON, a wire Struct or
``models.colours.PaletteColour`` all work, so the shell needs no conversion step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.style import Style
from rich.text import Text

BLOCK = "█"


def _field(entry: Any, name: str) -> Any:
    if isinstance(entry, Mapping):
        return entry[name]
    return getattr(entry, name)


def _colour(entry: Any) -> tuple[tuple[int, int, int], float]:
    """(r, g, b) clamped to bytes and the share clamped to [0, 1].

    Clamped rather than refused: a listing must still print if a server sends a stray value.
    """
    rgb = tuple(min(255, max(0, int(_field(entry, channel)))) for channel in "rgb")
    share = min(1.0, max(0.0, float(_field(entry, "share"))))
    return (rgb[0], rgb[1], rgb[2]), share


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def format_share(share: float) -> str:
    """A share as a whole percentage, with "<1%" so a small colour never reads as 0%."""
    percent = share * 100
    if 0 < percent < 0.5:
        return "<1%"
    return f"{percent:.0f}%"


#: What show_image says of an image whose colours were never computed (ImageSummary.
#: colours_pending), which an empty palette alone would misstate as "no dominant colours".
NOT_COMPUTED = (
    "not computed yet (stored by a server running without colours; its next start with "
    "colours computes them)"
)


def palette_text(palette: Sequence[Any], separator: str = "  ", *, hex_codes: bool = True) -> Text:
    """Each colour as "██ #rrggbb 42%", for show_image and listings; "██ 42%" without
    `hex_codes`, for terminals too narrow for both (the share is the part never left out).

    An empty palette (no chromatic colour in the picture) says so instead of printing nothing.
    """
    if not palette:
        return Text("no dominant colours", style="dim")
    text = Text(no_wrap=False)
    for index, entry in enumerate(palette):
        rgb, share = _colour(entry)
        if index:
            text.append(separator)
        text.append(BLOCK * 2, Style(color=_hex(rgb)))
        text.append(
            f" {_hex(rgb)} {format_share(share)}" if hex_codes else f" {format_share(share)}"
        )
    return text
