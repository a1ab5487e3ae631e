"""Listings: asking for a batch, showing it, and remembering it so `more` can continue.

Every listing command (browse_by_tags, search, and later search_by_image / search_by_color)
goes through `start_listing`, which sends the request, gathers the streamed `Batch` frames and
renders them. The latest listing of any kind is remembered per shell (its server cursor and how
it was rendered), so `more` is one generic command rather than one per search: it sends
`More(cursor)` and renders the answer the same way, with score and match columns appearing
whenever the server filled them in.

The same memory feeds tab completion: ids of recently listed images, and the tag counts of the
last `tags` answer (fetched on demand, briefly cached, when none is at hand).

Output forms:
- people get a rich table with a thumbnail per row (Kitty, Sixel or half-blocks, from
  shell.pictures), the palette as swatches with hex values and shares, and a closing line
  that says whether more remains;
- `--json` prints one JSON object per image per line on stdout and nothing else there (notes go
  to stderr), so `| jq` works;
- `--sheet PATH` also writes the batch as a contact-sheet PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cmd2
import msgspec
from cmd2 import Choices, CompletionItem, Completions
from rich import box
from rich.table import Table
from rich.text import Text

from protocol.base import Request
from protocol.catalog import (
    Batch,
    Colour,
    ImageSummary,
    ListingOptions,
    ListTags,
    More,
    TagCount,
    TagList,
)
from protocol.errors import ErrorCode, VitrineError
from shell.app import CommandFailed
from shell.contact_sheet import write_contact_sheet
from shell.pictures import GraphicsMode, detect_graphics, picture_renderable
from shell.swatches import palette_text
from util.money import format_cents

FIRST_BATCH = 20
MORE_BATCH = 10
MAX_BATCH = 500  # protocol.catalog.Limit
#: Cells a listing thumbnail occupies (half-blocks make that 16 x 16 pixels).
THUMB_CELLS = (16, 8)
#: Terminals narrower than this get the compact listing, without lines between columns, so
#: titles keep room to be read (at 80 columns the full table once left a title five cells and
#: folded it over eight lines).
WIDE_LISTING = 110
#: Marks the colour a colour search matched, in the colours column.
MATCH_MARK = "◂"
#: How many recently listed ids completion offers.
RECENT_IDS = 200
#: Seconds a fetched tag list stays good enough for completion.
TAG_CACHE_S = 30.0

_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str) -> str:
    """Titles, tags and names come from other users: no escape sequence reaches the terminal."""
    return "".join(
        " " if ch in "\t\n\r" else ("\ufffd" if unicodedata.category(ch) in _UNPRINTABLE else ch)
        for ch in text
    )


def plural(count: int, noun: str) -> str:
    """Sentences the shell prints count things; "1 tags" reads like a bug."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- what a listing remembers --------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """How a listing is shown; `more` reuses the latest one unless its own flags say otherwise."""

    json: bool = False
    images: bool = True
    sheet: Path | None = None


@dataclass
class LatestListing:
    what: str
    cursor: str | None
    render: RenderOptions
    more_batch: int
    shown: int = 0


@dataclass
class ListingMemory:
    latest: LatestListing | None = None
    recent: OrderedDict[int, str] = field(default_factory=OrderedDict)
    tags: list[TagCount] | None = None
    tags_at: float = 0.0

    def remember(self, items: Sequence[ImageSummary]) -> None:
        for item in items:
            self.recent.pop(item.id, None)
            self.recent[item.id] = item.title
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    def forget(self, image_id: int) -> None:
        self.recent.pop(image_id, None)

    def remember_tags(self, tags: list[TagCount]) -> None:
        self.tags, self.tags_at = tags, time.monotonic()


_MEMORIES: weakref.WeakKeyDictionary[cmd2.Cmd, ListingMemory] = weakref.WeakKeyDictionary()


def memory(shell: cmd2.Cmd) -> ListingMemory:
    """This shell's listing memory (one per shell, gone with it)."""
    found = _MEMORIES.get(shell)
    if found is None:
        found = _MEMORIES[shell] = ListingMemory()
    return found


# --- flags ---------------------------------------------------------------------------------------


def batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images") from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"a batch holds 1 to {MAX_BATCH} images, not {value}")
    return value


def add_listing_arguments(parser: argparse.ArgumentParser, *, first: int = FIRST_BATCH) -> None:
    """The flags every listing command shares (and `more`, whose defaults come from the listing)."""
    parser.add_argument(
        "--batch",
        type=batch_size,
        metavar="N",
        help=f"images per batch: this one and each `more` (default {first}, then {MORE_BATCH})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=None,
        help="one JSON object per image per line, no pictures (for scripts)",
    )
    parser.add_argument(
        "--no-images",
        dest="images",
        action="store_false",
        default=None,
        help="leave the thumbnails out of the table",
    )
    parser.add_argument(
        "--sheet",
        metavar="PATH",
        type=Path,
        completer=cmd2.Cmd.path_complete,
        help="also write the batch as a contact-sheet PNG to PATH",
    )


def render_options(args: argparse.Namespace, base: RenderOptions | None = None) -> RenderOptions:
    """Flags given now, over the listing's own options (for `more`), over the defaults.

    A sheet path is never inherited: `more` writing over the sheet of the previous batch would
    destroy it silently.
    """
    base = base or RenderOptions()
    return RenderOptions(
        json=base.json if args.json is None else args.json,
        images=base.images if args.images is None else args.images,
        sheet=args.sheet,
    )


# --- running a listing ---------------------------------------------------------------------------


def graphics_mode(shell: cmd2.Cmd) -> GraphicsMode:
    isatty = getattr(shell.stdout, "isatty", None)
    return detect_graphics(os.environ, stdout_is_tty=bool(isatty and isatty()))


def _wire_options(shell: cmd2.Cmd, render: RenderOptions, limit: int) -> ListingOptions:
    pictures = render.images and not render.json and graphics_mode(shell) != "none"
    return ListingOptions(limit=limit, thumbnails=pictures or render.sheet is not None)


def _fetch(shell: cmd2.Cmd, request: Request) -> tuple[list[ImageSummary], str | None]:
    """All frames of one (possibly streamed) batch, and the cursor its last frame carries."""
    items: list[ImageSummary] = []
    cursor: str | None = None
    for frame in shell.session.stream(request):  # type: ignore[attr-defined]
        if not isinstance(frame, Batch):
            raise VitrineError(ErrorCode.INTERNAL, f"Expected a Batch, got {type(frame).__name__}.")
        items.extend(frame.items)
        if frame.cursor is not None or frame.final:
            cursor = frame.cursor
    return items, cursor


def start_listing(
    shell: cmd2.Cmd,
    make_request: Callable[[ListingOptions], Request],
    args: argparse.Namespace,
    *,
    what: str,
) -> None:
    """Run a new listing: `make_request` builds the request around the wire options it is given."""
    render = render_options(args)
    first = args.batch or FIRST_BATCH
    items, cursor = _fetch(shell, make_request(_wire_options(shell, render, first)))
    latest = LatestListing(what, cursor, render, more_batch=args.batch or MORE_BATCH)
    memory(shell).latest = latest
    _show(shell, items, latest, render)


def continue_listing(shell: cmd2.Cmd, args: argparse.Namespace) -> None:
    """`more`: the next batch of the latest listing, shown the way it was (unless flags say)."""
    latest = memory(shell).latest
    if latest is None:
        raise CommandFailed("There is no listing to continue yet: browse or search first.")
    render = render_options(args, latest.render)
    if latest.cursor is None:
        _note(shell, render, f"Already at the end of {latest.what} ({latest.shown} shown).")
        return
    limit = args.batch or latest.more_batch
    request = More(id=0, cursor=latest.cursor, options=_wire_options(shell, render, limit))
    items, cursor = _fetch(shell, request)
    latest.cursor = cursor
    if args.batch:
        latest.more_batch = args.batch
    _show(shell, items, latest, render)


def _note(shell: cmd2.Cmd, render: RenderOptions, message: str) -> None:
    """A sentence for people: on stdout for tables, on stderr when stdout carries JSON."""
    if render.json:
        shell.perror(message, style=None)
    else:
        shell.poutput(message)


def _show(
    shell: cmd2.Cmd, items: list[ImageSummary], latest: LatestListing, render: RenderOptions
) -> None:
    memory(shell).remember(items)
    start = latest.shown + 1
    latest.shown += len(items)
    if render.json:
        write = shell.stdout.write
        for item in items:
            write(msgspec.json.encode(image_json(item)).decode() + "\n")
        shell.stdout.flush()
    elif items:
        mode = graphics_mode(shell) if render.images else "none"
        shell.poutput(listing_table(items, mode, terminal_columns()), soft_wrap=False)
    if render.sheet is not None and items:
        labels = [(f"{item.id} {printable(item.title)}", item.thumbnail or b"") for item in items]
        try:
            path = write_contact_sheet(labels, render.sheet)
        except OSError as exc:
            raise CommandFailed(f"Cannot write the sheet {render.sheet}: {exc.strerror}.") from None
        _note(shell, render, f"Wrote a contact sheet of {len(items)} images to {path}.")
    if not items and latest.shown == 0:
        _note(shell, render, f"Nothing found for {latest.what}.")
    elif latest.cursor is None:
        _note(shell, render, f"End of {latest.what}: {plural(latest.shown, 'image')} in all.")
    else:
        _note(
            shell,
            render,
            f"Showing {start}-{latest.shown} of {latest.what}; "
            f"type more for the next {latest.more_batch}.",
        )


# --- forms ---------------------------------------------------------------------------------------


def colour_json(colour: Colour) -> dict[str, Any]:
    value = msgspec.structs.asdict(colour)
    value["hex"] = f"#{colour.r:02x}{colour.g:02x}{colour.b:02x}"
    return value


def image_json(item: ImageSummary) -> dict[str, Any]:
    """The --json form of an image: price as a decimal string, never a float."""
    value: dict[str, Any] = {
        "id": item.id,
        "title": item.title,
        "tags": list(item.tags),
        "price": format_cents(item.price_cents),
        "quantity": item.quantity,
        "owner": item.owner,
        "visibility": item.visibility,
    }
    if item.palette:
        value["palette"] = [colour_json(colour) for colour in item.palette]
    if item.score is not None:
        value["score"] = item.score
    if item.match is not None:
        value["match"] = colour_json(item.match)
    return value


def _thumbnail_cell(item: ImageSummary, mode: GraphicsMode) -> Any:
    if item.thumbnail is None:
        return Text("")
    return picture_renderable(item.thumbnail, mode, *THUMB_CELLS)


def colours_cell(item: ImageSummary) -> Text:
    """The palette, one colour a line as swatch, hex and share; after a colour search the
    colour that matched comes first, marked. A picture without colours says "none", short
    enough not to widen the column."""
    if not item.palette:
        return Text("none", style="dim")
    match = item.match
    # the server's match comes from its colour index, whose floats need not equal the
    # palette's to the last bit: the same colour is the same RGB with the nearest share
    rgb = None if match is None else (match.r, match.g, match.b)
    same = [c for c in item.palette if (c.r, c.g, c.b) == rgb]
    if match is None or not same:
        return palette_text(item.palette, "\n")
    first = min(same, key=lambda c: abs(c.share - match.share))
    cell = palette_text([first])
    cell.append(f" {MATCH_MARK}", style="bold")
    rest = [colour for colour in item.palette if colour is not first]
    if rest:
        cell.append("\n")
        cell.append_text(palette_text(rest, "\n"))
    return cell


def terminal_columns() -> int:
    """The width listings are laid out for (COLUMNS, else the terminal, else 80)."""
    return shutil.get_terminal_size((80, 24)).columns


def listing_table(
    items: Sequence[ImageSummary], mode: GraphicsMode, width: int | None = None
) -> Table:
    """The table people see; the picture column exists only when pictures can be drawn, and
    a terminal `width` under WIDE_LISTING gets the compact form."""
    compact = width is not None and width < WIDE_LISTING
    pictures = mode != "none" and any(item.thumbnail for item in items)
    scores = any(item.score is not None for item in items)
    matches = any(item.match is not None for item in items)
    table = Table(
        show_lines=pictures,
        header_style="bold",
        # no lines between columns, no padding at the edges: about ten cells more for titles
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        collapse_padding=compact,
        pad_edge=not compact,
    )
    if pictures:
        table.add_column("", width=THUMB_CELLS[0], no_wrap=True)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("title", overflow="fold", ratio=3, min_width=12)
    table.add_column("tags", overflow="fold", ratio=2, min_width=8)
    table.add_column("price", justify="right", no_wrap=True)
    table.add_column("qty", justify="right", no_wrap=True)
    table.add_column("owner", no_wrap=True)
    table.add_column(f"colours {MATCH_MARK} match" if matches else "colours", no_wrap=True)
    if scores:
        table.add_column("score", justify="right", no_wrap=True)
    for item in items:
        owner = Text(printable(item.owner))
        if item.visibility == "private":
            owner.append(" private", style="yellow")
        row: list[Any] = [_thumbnail_cell(item, mode)] if pictures else []
        row += [
            str(item.id),
            Text(printable(item.title)),
            Text(", ".join(printable(tag) for tag in item.tags), style="cyan"),
            format_cents(item.price_cents),
            str(item.quantity),
            owner,
            colours_cell(item),
        ]
        if scores:
            row.append("" if item.score is None else f"{item.score:.3f}")
        table.add_row(*row)
    return table


# --- completion ----------------------------------------------------------------------------------


def complete_recent_ids(app: cmd2.Cmd) -> Choices:
    """Ids from recent listings, newest first, with their titles beside them."""
    recent = memory(app).recent
    items = [
        CompletionItem(str(image_id), display_meta=printable(title)[:40])
        for image_id, title in reversed(recent.items())
    ]
    return Choices(items=items)


def known_tags(app: cmd2.Cmd) -> list[TagCount]:
    """Tags from the last `tags` answer, or a fresh ListTags when none is recent enough.

    Completion must never break the prompt, so a failed request offers nothing.
    """
    mem = memory(app)
    if mem.tags is not None and time.monotonic() - mem.tags_at < TAG_CACHE_S:
        return mem.tags
    session = getattr(app, "session", None)
    if session is None or getattr(session, "user", None) is None:
        return mem.tags or []
    try:
        answer = session.call(ListTags(id=0), TagList)
    except Exception:  # completion runs inside the prompt: any failure means no suggestions
        return mem.tags or []
    mem.remember_tags(answer.tags)
    return answer.tags


def complete_tags(app: cmd2.Cmd) -> Choices:
    return Choices(
        items=[CompletionItem(tag.name, display_meta=f"{tag.count}") for tag in known_tags(app)]
    )


def complete_tag_list(app: cmd2.Cmd, text: str, line: str, begidx: int, endidx: int) -> Completions:
    """Comma-separated tags (--tags a,b): completes the part after the last comma."""
    done, _, partial = text.rpartition(",")
    prefix = f"{done}," if done else ""
    already = set(done.split(",")) if done else set()
    items = [
        CompletionItem(prefix + tag.name, display=tag.name, display_meta=f"{tag.count}")
        for tag in known_tags(app)
        if tag.name.startswith(partial) and tag.name not in already
    ]
    return Completions(items=items)
