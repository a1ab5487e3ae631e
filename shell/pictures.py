"""Pictures in the terminal: Kitty graphics, Sixel, or Unicode half-blocks.

Listings show a thumbnail per row, and the terminal decides how good that can look. Kitty
graphics (kitty, WezTerm, Ghostty) and Sixel (foot, mlterm, iTerm2, Konsole, contour...) draw real
pixels; everywhere else two pixels per cell are drawn with the upper half block "▀" in truecolor.

Detection is deliberately environment-only: asking the terminal (DA1, XTGETTCAP, a Kitty query)
means waiting for a reply that some terminals never send, which would hang the shell or leave
answers in its input. ``VITRINE_GRAPHICS=kitty|sixel|blocks|none`` overrides whatever we guess.

Every picture occupies exactly ``width_cells`` x ``height_cells`` cells, whatever the mode, and is
letterboxed inside that box, so table rows line up the same way in every terminal.

Escapes in a rich Table
-----------------------
rich measures text to lay tables out, and a raw graphics escape would be counted as thousands of
cells. :class:`TerminalPicture` therefore renders as a box of plain spaces (which rich measures,
pads and borders normally) and carries the graphics escape in a *control* segment, which rich
gives zero width. The control segment sits at the end of the picture's last line, after its
spaces have been written, and it is wrapped as: save cursor (DECSC), move left ``width`` and up
``height - 1`` cells to the box's top-left corner, draw, restore cursor (DECRC). Drawing last means
no later text in the box overwrites the picture, and moving relative to the current line works
even though the screen scrolled while the rows above were printed. The picture never reaches
below the current line: Kitty is told not to move the cursor (``C=1``), and Sixel is cut to whole
six-pixel bands inside the box and drawn with DECSET 8452 so the cursor stays beside the image
instead of scrolling the screen. A picture taller than the screen cannot be drawn this way;
listing thumbnails are a few rows high.
"""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Literal, cast, get_args

import numpy as np
from PIL import Image
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import ControlType, Segment
from rich.style import Style
from rich.text import Text

from shell.text import dumb_terminal
from util.images import decode_image

GraphicsMode = Literal["kitty", "sixel", "blocks", "none"]
GRAPHICS_MODES: tuple[GraphicsMode, ...] = get_args(GraphicsMode)
OVERRIDE_ENV = "VITRINE_GRAPHICS"

#: Assumed size of a terminal cell in pixels when the tty does not report one (roughly 1:2,
#: which is also why a half-block pixel is close to square).
DEFAULT_CELL_PX: tuple[int, int] = (10, 20)

_KITTY_CHUNK = 4096  # the protocol's maximum chunk; a multiple of 4, as base64 chunks must be
_SIXEL_RUN = re.compile(r"(.)\1{3,}")  # "!4x" is shorter than "xxxx"; "!3x" is not


# --------------------------------------------------------------------------------- detection


def _version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    """Compare dotted versions numerically, treating an unparsable one as new enough.

    An unparsable version usually means a development build, which is newer, not older.
    """
    parts: list[int] = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return not parts or tuple(parts) >= minimum


def detect_graphics(
    env: Mapping[str, str] = os.environ, stdout_is_tty: bool | None = None
) -> GraphicsMode:
    """Choose how pictures are drawn, from the environment alone (see the module docstring).

    ``stdout_is_tty`` defaults to asking ``sys.stdout``; pass it explicitly in tests.
    """
    forced = env.get(OVERRIDE_ENV, "").strip().lower()
    if forced in GRAPHICS_MODES:
        return cast(GraphicsMode, forced)
    if stdout_is_tty is None:
        stdout_is_tty = sys.stdout.isatty()
    term = env.get("TERM", "").lower()
    program = env.get("TERM_PROGRAM", "").lower()
    if not stdout_is_tty or dumb_terminal(env):
        return "none"
    # Inside tmux or screen a graphics escape goes to the multiplexer, which drops it or draws it
    # in the wrong place; the outer terminal's variables (KITTY_WINDOW_ID...) are inherited and lie.
    multiplexed = env.get("TMUX") or env.get("STY") or program == "tmux"
    if multiplexed or term.startswith(("screen", "tmux")):
        return "none" if env.get("NO_COLOR") else "blocks"
    if (
        term in ("xterm-kitty", "xterm-ghostty")
        or env.get("KITTY_WINDOW_ID")
        or program in ("wezterm", "ghostty")
        or env.get("WEZTERM_EXECUTABLE")
        or env.get("GHOSTTY_RESOURCES_DIR")
    ):
        return "kitty"
    if _sixel_terminal(env, term, program):
        return "sixel"
    # Half-blocks are nothing but colour, so a user who asked for no colour gets no picture.
    return "none" if env.get("NO_COLOR") else "blocks"


def _sixel_terminal(env: Mapping[str, str], term: str, program: str) -> bool:
    """Terminals that draw Sixel out of the box (xterm needs a compile flag, so only by hint)."""
    if term.startswith(("foot", "mlterm", "contour", "yaft")) or "sixel" in term:
        return True
    if env.get("MLTERM") or env.get("TERMINAL_NAME", "").lower() == "contour":
        return True
    if program == "iterm.app":
        return _version_at_least(env.get("TERM_PROGRAM_VERSION", ""), (3, 3))
    konsole = env.get("KONSOLE_VERSION", "")
    return konsole.isdigit() and int(konsole) >= 220400


def cell_pixel_size(stream: object | None = None) -> tuple[int, int]:
    """Pixel size of one cell, from the tty's window size (TIOCGWINSZ), else DEFAULT_CELL_PX.

    An ioctl answers immediately, unlike an escape-sequence query, and most terminals that draw
    graphics fill in the pixel fields; sizing pictures to whole cells keeps them inside their box.
    """
    try:
        import fcntl
        import struct
        import termios

        target = sys.stdout if stream is None else stream
        fd = target.fileno()  # type: ignore[attr-defined]
        rows, cols, xpx, ypx = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (ImportError, AttributeError, OSError, ValueError):
        return DEFAULT_CELL_PX
    if rows and cols and xpx >= cols and ypx >= rows:
        return xpx // cols, ypx // rows
    return DEFAULT_CELL_PX


# ----------------------------------------------------------------------------- preparation

ImageSource = Image.Image | bytes


def open_picture(data: bytes, draft_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode thumbnail bytes from the server with the shared hardened decoder.

    The client must survive a broken or hostile server, so the bytes get the same checks as an
    upload (util.images). ``draft_to`` lets a JPEG decode at a reduced scale when it will be drawn
    small anyway. Raises ValueError (ImageRejected) with a reason.
    """
    target = max(draft_to) if draft_to else None
    return decode_image(data, target=target).image


def _as_image(source: ImageSource, draft_to: tuple[int, int] | None = None) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    return open_picture(source, draft_to)


def fit_box(image: ImageSource, box_w: int, box_h: int) -> Image.Image:
    """Scale to fit ``box_w`` x ``box_h`` keeping the aspect ratio, centred on transparency.

    Every renderer starts from this so the three modes letterbox identically.
    """
    if box_w < 1 or box_h < 1:
        raise ValueError(f"picture box must be at least 1x1, got {box_w}x{box_h}")
    picture = _as_image(image, (box_w, box_h))
    if picture.mode not in ("RGB", "RGBA"):
        has_alpha = "A" in picture.getbands() or "transparency" in picture.info
        picture = picture.convert("RGBA" if has_alpha else "RGB")
    width, height = picture.size
    scale = min(box_w / width, box_h / height)
    fit_w = max(1, min(box_w, round(width * scale)))
    fit_h = max(1, min(box_h, round(height * scale)))
    if (fit_w, fit_h) != picture.size:
        picture = picture.resize((fit_w, fit_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGBA", (box_w, box_h), (0, 0, 0, 0))
    canvas.paste(picture.convert("RGBA"), ((box_w - fit_w) // 2, (box_h - fit_h) // 2))
    return canvas


# ------------------------------------------------------------------------------ half-blocks

UPPER_HALF = "▀"
LOWER_HALF = "▄"


def half_blocks(image: ImageSource, width_cells: int, height_cells: int) -> Text:
    """Draw two vertically stacked pixels per cell: ▀ in the top colour over the bottom colour.

    Works in any truecolor terminal (rich downgrades colours for lesser ones). Letterbox
    padding is left unstyled so the terminal's own background shows through.
    """
    pixels = np.asarray(fit_box(image, width_cells, height_cells * 2))
    opaque = pixels[..., 3] >= 128
    styles: dict[tuple[int, ...], Style] = {}
    text = Text(no_wrap=True, overflow="crop", end="")
    for row in range(height_cells):
        if row:
            text.append("\n")
        top, bottom = pixels[2 * row, :, :3], pixels[2 * row + 1, :, :3]
        top_on, bottom_on = opaque[2 * row], opaque[2 * row + 1]
        for col in range(width_cells):
            if top_on[col] and bottom_on[col]:
                key = (*top[col].tolist(), *bottom[col].tolist())
                char = UPPER_HALF
            elif top_on[col]:
                key, char = tuple(top[col].tolist()), UPPER_HALF
            elif bottom_on[col]:
                key, char = tuple(bottom[col].tolist()), LOWER_HALF
            else:
                text.append(" ")
                continue
            style = styles.get(key)
            if style is None:
                fg = "#{:02x}{:02x}{:02x}".format(*key[:3])
                bg = "#{:02x}{:02x}{:02x}".format(*key[3:]) if len(key) == 6 else None
                style = styles[key] = Style(color=fg, bgcolor=bg)
            text.append(char, style)
    return text


# ------------------------------------------------------------------------------------ kitty


def kitty_escape(
    image: ImageSource,
    width_cells: int,
    height_cells: int,
    cell_px: tuple[int, int] = DEFAULT_CELL_PX,
) -> str:
    """Kitty graphics protocol: transmit-and-display a PNG sized to ``width x height`` cells.

    The PNG is letterboxed to the box's aspect ratio first because ``c=``/``r=`` stretch the
    image to fill the cells. ``q=2`` silences the terminal's replies, which would otherwise land
    in the shell's input; ``C=1`` keeps the cursor still (see the module docstring).
    """
    canvas = fit_box(image, width_cells * cell_px[0], height_cells * cell_px[1])
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=6)
    payload = base64.standard_b64encode(buffer.getvalue()).decode("ascii")
    chunks = [payload[i : i + _KITTY_CHUNK] for i in range(0, len(payload), _KITTY_CHUNK)]
    parts: list[str] = []
    for index, chunk in enumerate(chunks):
        more = 1 if index < len(chunks) - 1 else 0
        if index == 0:
            keys = f"a=T,f=100,t=d,q=2,C=1,c={width_cells},r={height_cells},m={more}"
        else:
            keys = f"m={more}"
        parts.append(f"\x1b_G{keys};{chunk}\x1b\\")
    return "".join(parts)


# ------------------------------------------------------------------------------------ sixel


def _palette_indices(picture: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Map the picture to at most 256 colours: exactly when it has that few, else by octree.

    Returns (index per pixel, -1 where transparent; palette as an (n, 3) uint8 array).
    """
    pixels = np.asarray(picture)
    opaque = pixels[..., 3] >= 128
    indices = np.full(opaque.shape, -1, dtype=np.int32)
    if picture.convert("RGB").getcolors(256) is not None:  # cheap test before an exact palette
        rgb = pixels[..., :3].astype(np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colours, inverse = np.unique(packed[opaque], return_inverse=True)
        indices[opaque] = inverse
        palette = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1)
        return indices, palette.astype(np.uint8)
    # Fast octree: ~1 ms against ~30 ms for median cut on a listing thumbnail, with fewer colours
    # per band (half the bytes, twice as fast to encode) and an error no one sees at this size.
    quantised = picture.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    raw = quantised.getpalette() or []
    used = np.asarray(quantised, dtype=np.int32)
    count = int(used.max()) + 1
    palette = np.asarray(raw[: 3 * count], dtype=np.uint8).reshape(-1, 3)
    indices[opaque] = used[opaque]
    return indices, palette


def _sixel_band(band: np.ndarray) -> str:
    """Encode up to six pixel rows: one pass per colour present, joined by '$' (back to column 0).

    Each sixel character is 63 + a 6-bit mask of the rows that colour covers in that column.
    """
    weights = (1 << np.arange(band.shape[0], dtype=np.int32))[None, :, None]
    colours = np.unique(band)
    colours = colours[colours >= 0]
    if not len(colours):
        return ""
    masks = ((band[None, :, :] == colours[:, None, None]) * weights).sum(axis=1) + 63
    passes = []
    for colour, mask in zip(colours.tolist(), masks, strict=True):
        data = mask.astype(np.uint8).tobytes().decode("ascii").rstrip("?")
        data = _SIXEL_RUN.sub(lambda run: f"!{len(run.group())}{run.group(1)}", data)
        passes.append(f"#{colour}{data}")
    return "$".join(passes)


def sixel_escape(
    image: ImageSource,
    width_cells: int,
    height_cells: int,
    cell_px: tuple[int, int] = DEFAULT_CELL_PX,
) -> str:
    """A Sixel image (DCS ... ST) that fits inside ``width x height`` cells.

    The height is cut to whole six-pixel bands so no terminal draws past the box, and
    letterbox pixels are left unset (P2=1) so they show the terminal's background.
    """
    box_w = width_cells * cell_px[0]
    box_h = max(6, (height_cells * cell_px[1]) // 6 * 6)
    indices, palette = _palette_indices(fit_box(image, box_w, box_h))
    registers = "".join(
        f"#{i};2;{round(r * 100 / 255)};{round(g * 100 / 255)};{round(b * 100 / 255)}"
        for i, (r, g, b) in enumerate(palette.tolist())
    )
    bands = "-".join(_sixel_band(indices[y : y + 6]) for y in range(0, box_h, 6))
    return f'\x1bP0;1;0q"1;1;{box_w};{box_h}{registers}{bands}\x1b\\'


# ---------------------------------------------------------------------- rich renderables


class TerminalPicture:
    """A Kitty or Sixel picture that rich can lay out like ``width x height`` cells of text.

    See the module docstring for how the escape is positioned. The escape is built when rendered,
    for the width rich actually grants, so a squeezed column gets a smaller picture rather than a
    cropped (and lost) escape.
    """

    def __init__(
        self,
        image: ImageSource,
        mode: Literal["kitty", "sixel"],
        width_cells: int,
        height_cells: int,
        cell_px: tuple[int, int] | None = None,
    ) -> None:
        if mode not in ("kitty", "sixel"):
            raise ValueError(f"TerminalPicture draws kitty or sixel, not {mode!r}")
        if width_cells < 1 or height_cells < 1:
            raise ValueError("a picture needs at least one cell")
        self.image = _as_image(image)
        self.mode = mode
        self.width_cells = width_cells
        self.height_cells = height_cells
        self.cell_px = cell_px

    def escape(self, width_cells: int) -> str:
        """The graphics escape alone, drawn from the cursor's position downwards."""
        cell_px = self.cell_px or cell_pixel_size()
        draw = kitty_escape if self.mode == "kitty" else sixel_escape
        return draw(self.image, width_cells, self.height_cells, cell_px)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, self.width_cells)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, min(self.width_cells, options.max_width))
        yield from _reserved_box(width, self.height_cells)
        yield _positioned(self.escape(width), self.mode, width, self.height_cells)


def _reserved_box(width: int, height: int) -> Iterator[Segment]:
    for row in range(height):
        if row:
            yield Segment.line()
        yield Segment(" " * width)


def _positioned(escape: str, mode: str, width: int, height: int) -> Segment:
    """Wrap the escape so it is drawn at the box's top-left and leaves the cursor where it was."""
    moves = f"\x1b[{width}D" + (f"\x1b[{height - 1}A" if height > 1 else "")
    if mode == "sixel":
        escape = f"\x1b[?8452h{escape}\x1b[?8452l"
    codes = [(ControlType.CURSOR_BACKWARD, width), (ControlType.CURSOR_UP, height - 1)]
    return Segment(f"\x1b7{moves}{escape}\x1b8", None, codes)


def picture_renderable(
    thumbnail_bytes: bytes,
    mode: GraphicsMode,
    width_cells: int,
    height_cells: int,
    cell_px: tuple[int, int] | None = None,
) -> Text | TerminalPicture:
    """What a listing puts in its picture column, whatever the terminal can draw.

    Half-blocks are plain styled text and go straight into a table cell; Kitty and Sixel come as
    a :class:`TerminalPicture`. Mode "none" gives an empty Text. A thumbnail that cannot be
    decoded gives a short dim note instead of failing the whole listing.
    """
    if mode not in GRAPHICS_MODES:
        raise ValueError(f"unknown graphics mode {mode!r}; expected one of {GRAPHICS_MODES}")
    if mode == "none":
        return Text("")
    try:
        if mode == "blocks":
            picture = open_picture(thumbnail_bytes, (width_cells, height_cells * 2))
            return half_blocks(picture, width_cells, height_cells)
        cell_w, cell_h = cell_px or cell_pixel_size()
        image = open_picture(thumbnail_bytes, (width_cells * cell_w, height_cells * cell_h))
        return TerminalPicture(image, mode, width_cells, height_cells, (cell_w, cell_h))
    except ValueError:
        return Text("(no picture)", style="dim", no_wrap=True, overflow="ellipsis")
