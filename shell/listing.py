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
- `--sheet PATH` also writes the batch as a contact sheet (PNG, or JPEG for a .jpg PATH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import cmd2
import msgspec
from cmd2 import Choices, CompletionItem, Completions
from cmd2.rich_utils import Cmd2BaseConsole
from rich import box
from rich.cells import cell_len
from rich.console import JustifyMethod
from rich.table import Table
from rich.text import Text

from protocol.base import Request, Response
from protocol.catalog import (
    Batch,
    Colour,
    ColourSearch,
    ImageSearch,
    ImageSummary,
    ListingOptions,
    ListTags,
    More,
    TagCount,
    TagList,
    TextSearch,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_BATCH
from shell.app import CommandFailed, whole_number, write_json_lines
from shell.connection import ConnectionLost
from shell.contact_sheet import sheet_format, write_contact_sheet
from shell.interrupts import HeldInterrupts
from shell.pictures import GraphicsMode, detect_graphics, picture_renderable
from shell.swatches import palette_text
from shell.text import is_terminal, plural, printable
from util.catalogue_text import tag_spellings
from util.money import format_cents

FIRST_BATCH = 20
MORE_BATCH = 10
#: Cells a listing thumbnail occupies (half-blocks make that 16 x 16 pixels).
THUMB_CELLS = (16, 8)
#: The thumbnail of terminals too narrow for the full one beside the numbers.
SMALL_THUMB_CELLS = (8, 4)
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

# --- what a listing remembers --------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """How a listing is shown; `more` reuses the latest one unless its own flags say otherwise."""

    json: bool = False
    images: bool = True
    sheet: Path | None = None


@dataclass(frozen=True)
class Fetched:
    """One whole batch, gathered from its frames."""

    items: list[ImageSummary]
    cursor: str | None
    kept: int
    unindexed: int


@dataclass
class LatestListing:
    what: str
    cursor: str | None
    render: RenderOptions
    more_batch: int
    shown: int = 0
    #: The server kept only this many best results of more matches (Batch.kept), else 0.
    kept: int = 0
    #: What narrows this kind of search, for the end of one the server cut (see `_cut`).
    narrow: str = ""
    #: (this kind of search, the server's backfill that computes what it ranks by), for the
    #: note on images it could not rank yet (see `_unindexed`).
    indexing: tuple[str, str] = ("search by image", "backfill")
    #: ServerConnection.generation the cursor was made on: cursors live and die with their
    #: connection, so after a reconnect the listing is gone whatever the server says.
    generation: int = 0
    #: A batch asked for and not shown yet: its wait, or its drawing, was stopped by Ctrl-C.
    #: The server has answered it (or will), and its cursor has moved past it: the next `more`
    #: shows this answer rather than asking again, which would skip it. It stays here until
    #: `_show` has put it out whole.
    pending: Future[Fetched] | None = None
    #: The connection ended since the listing began, so the server's cursor is gone.
    lost: bool = False


@dataclass
class ListingMemory:
    #: VitrineShell.login_epoch when this memory began: another user (or a logout) since then
    #: means another set of visible images, and server cursors that belong to the old session
    epoch: int = 0
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
    """This shell's listing memory (one per shell, gone with it), started afresh whenever the
    user changed: `more` must not continue, nor completion offer, what another user listed."""
    epoch = getattr(shell, "login_epoch", 0)
    found = _MEMORIES.get(shell)
    if found is None or found.epoch != epoch:
        found = _MEMORIES[shell] = ListingMemory(epoch=epoch)
    return found


# --- flags ---------------------------------------------------------------------------------------


def batch_size(text: str) -> int:
    try:
        value = whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images") from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"a batch holds 1 to {MAX_BATCH} images, not {value}")
    return value


def add_listing_arguments(parser: argparse.ArgumentParser, *, continues: bool = False) -> None:
    """The flags every listing command shares, and `more` (`continues`), whose defaults are
    the listing's own."""
    parser.add_argument(
        "--batch",
        type=batch_size,
        metavar="N",
        help=(
            "images in this batch and the following ones (default: the listing's own --batch, "
            f"else {MORE_BATCH})"
            if continues
            else f"images per batch: this one and each `more` (default {FIRST_BATCH}, "
            f"then {MORE_BATCH})"
        ),
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
        completer=cmd2.Cmd.path_complete,
        help="also write the batch as a contact sheet to PATH (.png, or .jpg for a JPEG)",
    )
    parser.add_argument(
        "--force", action="store_true", help="with --sheet: overwrite an existing file"
    )


def render_options(args: argparse.Namespace, base: RenderOptions | None = None) -> RenderOptions:
    """Flags given now, over the listing's own options (for `more`), over the defaults.

    A sheet path is never inherited: `more` writing over the sheet of the previous batch would
    destroy it silently.
    """
    base = base or RenderOptions()
    if args.sheet is not None:
        check_new_file(args.sheet, args.force)
        try:
            sheet_format(Path(args.sheet))
        except ValueError as exc:
            raise CommandFailed(f"--sheet: {exc}.") from None
    return RenderOptions(
        json=base.json if args.json is None else args.json,
        images=base.images if args.images is None else args.images,
        sheet=Path(os.path.expanduser(args.sheet)) if args.sheet is not None else None,
    )


def check_new_file(given: str, force: bool) -> None:
    """Refuse a path a command would write (like cp: an existing file only with --force, a
    trailing slash only for a directory that exists) before anything is asked of the server,
    so a refusal costs no query and no download. A folder that is missing is said to be
    missing: "is not a directory" sent the user looking for a file in its place."""
    path = Path(os.path.expanduser(given))
    shown = printable(given)
    trailing = given.endswith(("/", os.sep))
    folder = path if trailing else path.parent
    if not os.path.lexists(folder):
        missing = given if trailing else os.path.dirname(given)  # as typed, `~` and all
        raise CommandFailed(f"{printable(missing)} does not exist.")
    if trailing and not path.is_dir():
        raise CommandFailed(f"{shown} is not a directory.")
    if path.is_dir():
        raise CommandFailed(f"{shown} is a directory; give a file name.")
    if path.exists() and not force:
        raise CommandFailed(f"{shown} exists already; add --force to overwrite it.")
    if not path.parent.is_dir():
        raise CommandFailed(f"{printable(str(path.parent))} is not a directory.")


# --- running a listing ---------------------------------------------------------------------------


def graphics_mode(shell: cmd2.Cmd) -> GraphicsMode:
    # is_terminal: a closed stdout (a wrapper's `>&-`) means no pictures, not a failed listing
    return detect_graphics(os.environ, stdout_is_tty=is_terminal(shell.stdout))


def _wire_options(shell: cmd2.Cmd, render: RenderOptions, limit: int) -> ListingOptions:
    pictures = render.images and not render.json and graphics_mode(shell) != "none"
    return ListingOptions(limit=limit, thumbnails=pictures or render.sheet is not None)


def _gather(frames: Iterator[Response], answer: Future[Fetched]) -> None:
    """Read every frame of one (possibly streamed) batch, on a thread of its own, so that a
    Ctrl-C stops only the shell's wait: the answer still lands in `answer`, for `more`."""
    items: list[ImageSummary] = []
    cursor: str | None = None
    kept = unindexed = 0
    try:
        for frame in frames:
            if not isinstance(frame, Batch):
                raise VitrineError(
                    ErrorCode.INTERNAL, f"Expected a Batch, got {type(frame).__name__}."
                )
            items.extend(frame.items)
            unindexed = max(unindexed, frame.unindexed)
            if frame.cursor is not None or frame.final:
                cursor, kept = frame.cursor, frame.kept
    except BaseException as exc:  # handed to the waiting command, which raises it
        answer.set_exception(exc)
    else:
        answer.set_result(Fetched(items, cursor, kept, unindexed))


def _fetch(shell: cmd2.Cmd, request: Request) -> Future[Fetched]:
    """Send `request` and gather its batch in the background; the caller waits on the future."""
    frames = shell.session.stream(request)  # type: ignore[attr-defined]
    answer: Future[Fetched] = Future()
    threading.Thread(
        target=_gather, args=(frames, answer), name="vitrine-batch", daemon=True
    ).start()
    return answer


def _generation(shell: cmd2.Cmd) -> int:
    return getattr(shell.session.connection, "generation", 0)  # type: ignore[attr-defined]


def _send_and_wait(
    shell: cmd2.Cmd, latest: LatestListing, render: RenderOptions, request: Request
) -> Fetched:
    """Send the listing's next request and wait for its batch, which stays pending on `latest`
    whatever Ctrl-C does. A press while the request is being sent comes right after
    `latest.pending` is set (it could land in `Thread.start`, after the request had left and
    before the pending batch was recorded, and `more` then skipped it)."""
    try:
        with HeldInterrupts().whole():
            latest.pending = _fetch(shell, request)
            latest.generation = _generation(shell)
    except KeyboardInterrupt:
        _still_on_its_way(shell, latest, render)
        raise
    return _wait(shell, latest, render)


def _still_on_its_way(shell: cmd2.Cmd, latest: LatestListing, render: RenderOptions) -> None:
    _note(
        shell,
        render,
        f"The batch of {latest.what} that was asked for is still on its way: `more` shows it "
        "when it arrives.",
        error=True,
    )


def _wait(shell: cmd2.Cmd, latest: LatestListing, render: RenderOptions) -> Fetched:
    """The pending batch of `latest`, once it arrives. Ctrl-C leaves it pending (and says so),
    so the next `more` shows it instead of skipping it; so does an answer that arrived but is
    not shown yet (`_show` ends its pending). A batch that failed is no longer pending."""
    pending = latest.pending
    assert pending is not None
    try:
        fetched = pending.result()
    except KeyboardInterrupt:
        _still_on_its_way(shell, latest, render)
        raise
    except BaseException:
        latest.pending = None
        raise
    latest.cursor, latest.kept = fetched.cursor, fetched.kept
    return fetched


def _narrowing(request: Request) -> str:
    """The flags that narrow this kind of ranked search, for when the server cut it."""
    filters = "--tags, --min-price, --max-price or --in-stock"
    if isinstance(request, TextSearch):
        return 'more words (every word must match) or a "phrase" in double quotes'
    if isinstance(request, ImageSearch):
        return filters
    if isinstance(request, ColourSearch):
        return f"a smaller --tolerance, a larger --min-share, {filters}"
    return filters


def _indexing(request: Request) -> tuple[str, str]:
    """What the images a search could not rank yet (`Batch.unindexed`) wait for: an embedding
    for search by image, their colours for search by colour, each computed by its own backfill
    on the server (the note said "search by image" after a search by colour)."""
    if isinstance(request, ColourSearch):
        return ("search by colour", "colour backfill")
    return ("search by image", "backfill")


def start_listing(
    shell: cmd2.Cmd,
    make_request: Callable[[ListingOptions], Request],
    args: argparse.Namespace,
    *,
    what: str,
) -> None:
    """Run a new listing: `make_request` builds the request around the wire options it is given.

    The listing is remembered as soon as its request is sent, with its answer pending: a Ctrl-C
    before the first batch arrives leaves `more` that batch to show, not the listing before.
    """
    render = render_options(args)
    first = args.batch or FIRST_BATCH
    mem = memory(shell)
    request = make_request(_wire_options(shell, render, first))
    latest = LatestListing(
        what,
        None,
        render,
        more_batch=args.batch or MORE_BATCH,
        narrow=_narrowing(request),
        indexing=_indexing(request),
    )
    before, mem.latest = mem.latest, latest
    try:
        fetched = _send_and_wait(shell, latest, render, request)
    except KeyboardInterrupt:
        raise
    except BaseException:
        mem.latest = before  # a refused search is no listing: `more` goes on with the last one
        raise
    _unindexed(shell, fetched, latest)
    _show(shell, fetched.items, latest, render)


def _unindexed(shell: cmd2.Cmd, fetched: Fetched, latest: LatestListing) -> None:
    """Said once, on the first batch, and on stderr whatever the form: these images are
    missing from every batch of the listing, not only this one."""
    if fetched.unindexed:
        count = plural(fetched.unindexed, "image")
        search, backfill = latest.indexing
        shell.perror(
            f"{count} {'is' if fetched.unindexed == 1 else 'are'} still being indexed for "
            f"{search} and not in these results: try again when the server's {backfill} is done.",
            style=None,
        )


def continue_listing(shell: cmd2.Cmd, args: argparse.Namespace) -> None:
    """`more`: the next batch of the latest listing, shown the way it was (unless flags say).

    A batch whose wait Ctrl-C stopped is shown first, when it arrives: the server moved its
    cursor past it already.
    """
    latest = memory(shell).latest
    if latest is None:
        raise CommandFailed("There is no listing to continue yet: browse or search first.")
    render = render_options(args, latest.render)
    if args.batch:
        latest.more_batch = args.batch
    if latest.pending is not None:
        first = latest.shown == 0 and latest.cursor is None
        try:
            fetched = _wait(shell, latest, render)
        except ConnectionLost:
            raise CommandFailed(_lost(latest)) from None
        except VitrineError as exc:
            if not first:
                raise
            memory(shell).latest = None  # a refused search is no listing to go on with
            raise CommandFailed(
                f"The first batch of {latest.what}, interrupted before it arrived, failed: "
                f"{exc.message.rstrip('.')}. There is nothing to continue."
            ) from None
        if first:
            _unindexed(shell, fetched, latest)
        _show(shell, fetched.items, latest, render)
        return
    if latest.lost:
        raise CommandFailed(_lost(latest))
    if latest.cursor is None:
        shown = plural(latest.shown, "image")
        _note(shell, render, f"Already at the end of {latest.what}: {shown} shown.{_cut(latest)}")
        return
    shell.session.ensure_connected()  # type: ignore[attr-defined]
    if _generation(shell) != latest.generation:
        raise CommandFailed(_lost(latest))
    limit = args.batch or latest.more_batch
    request = More(id=0, cursor=latest.cursor, options=_wire_options(shell, render, limit))
    fetched = _send_and_wait(shell, latest, render, request)
    _show(shell, fetched.items, latest, render)


def _lost(latest: LatestListing) -> str:
    """Why `more` cannot go on after the connection it was listed on ended."""
    latest.cursor, latest.lost = None, True
    return (
        f"{latest.what[:1].upper()}{latest.what[1:]} was lost with the connection it was listed "
        "on (the server keeps a listing's place for that connection only): run it again."
    )


def _cut(latest: LatestListing) -> str:
    """What to say when the server's ranking stopped before the matches did: each kind of
    search is narrowed by its own flags."""
    if not latest.kept:
        return ""
    return (
        f" More images match: a search keeps its best {latest.kept}; narrow it "
        f"({latest.narrow}) to reach the others."
    )


def _note(shell: cmd2.Cmd, render: RenderOptions, message: str, *, error: bool = False) -> None:
    """A sentence for people: on stdout for tables, on stderr when stdout carries JSON (or
    when it is about a failure)."""
    if render.json or error:
        shell.perror(message, style=None)
    else:
        shell.poutput(message)


def _show(
    shell: cmd2.Cmd, items: list[ImageSummary], latest: LatestListing, render: RenderOptions
) -> None:
    """Put out the batch `_wait` gave, then end its pending. Ctrl-C while it is being drawn (a
    batch of 200 thumbnails takes a while) keeps it pending for the next `more`, which shows
    it whole and numbered as now: the server's cursor is past it already, and it used to be
    lost. Rows drawn before the press come again then (how far a table got cannot be told)."""
    start = latest.shown + 1
    try:
        if render.json:
            write_json_lines(shell, map(image_json, items))
        elif items:
            print_listing(shell, items, graphics_mode(shell) if render.images else "none")
    except KeyboardInterrupt:
        if latest.pending is not None:
            last = start + len(items) - 1
            shown = f"results {start}-{last}" if len(items) > 1 else f"result {start}"
            _note(
                shell,
                render,
                f"Stopped showing {shown} of {latest.what}: `more` shows "
                f"{'them' if len(items) > 1 else 'it'} again, whole.",
                error=True,
            )
        raise
    latest.pending = None
    memory(shell).remember(items)
    latest.shown += len(items)
    if render.sheet is not None and items:
        labels = [(f"{item.id} {printable(item.title)}", item.thumbnail or b"") for item in items]
        try:
            path = write_contact_sheet(labels, render.sheet)
        except OSError as exc:
            raise CommandFailed(f"Cannot write the sheet {render.sheet}: {exc.strerror}.") from None
        _note(shell, render, f"Wrote a contact sheet of {plural(len(items), 'image')} to {path}.")
    elif render.sheet is not None:
        _note(
            shell, render, f"No contact sheet written to {render.sheet}: no images in this batch."
        )
    if not items and latest.shown == 0:
        _note(shell, render, f"Nothing found for {latest.what}.")
    elif latest.cursor is None and latest.kept:
        _note(
            shell, render, f"End of {latest.what}: {plural(latest.shown, 'image')}.{_cut(latest)}"
        )
    elif latest.cursor is None:
        _note(shell, render, f"End of {latest.what}: {plural(latest.shown, 'image')} in all.")
    else:
        shown = f"results {start}-{latest.shown}" if latest.shown > start else f"result {start}"
        _note(
            shell,
            render,
            f"Showing {shown} of {latest.what}; type more for up to {latest.more_batch} more.",
        )


def _table_console(shell: cmd2.Cmd) -> Cmd2BaseConsole:
    """The console a listing is printed through, as `poutput` would (styles as cmd2's
    `allow_style` says), at the width the table is laid out for: rich takes a terminal whose
    TERM is dumb for 80 columns whatever its size and COLUMNS say, and a table laid out for
    120 was then squeezed into 80, down to empty id and qty columns. rich keeps a width it is
    given only together with a height."""
    columns, lines = terminal_size()
    return Cmd2BaseConsole(
        file=shell.stdout, emoji=False, markup=False, highlight=False, width=columns, height=lines
    )


def print_listing(shell: cmd2.Cmd, items: Sequence[ImageSummary], mode: GraphicsMode) -> None:
    """The listing table of `items`, laid out for the terminal and printed through a console
    of its own (`_table_console`): cmd2 keeps one console for stdout, and rich clears what it
    rendered only once the write is done, so a table whose write Ctrl-C cut would be written
    again, ahead of whatever that console printed next (the batch that `more` then shows
    whole). Whether the swatches can be coloured decides whether the hex codes may go."""
    console = _table_console(shell)
    coloured = console.color_system is not None and not console.no_color
    console.print(listing_table(items, mode, console.width, coloured=coloured), soft_wrap=False)


# --- forms ---------------------------------------------------------------------------------------


def colour_json(colour: Colour) -> dict[str, Any]:
    value = msgspec.structs.asdict(colour)
    value["hex"] = f"#{colour.r:02x}{colour.g:02x}{colour.b:02x}"
    return value


def image_json(item: ImageSummary) -> dict[str, Any]:
    """The --json form of an image: price as a decimal string, never a float. The palette is
    always there, [] for an image without chromatic colours, so scripts need no KeyError guard."""
    value: dict[str, Any] = {
        "id": item.id,
        "title": item.title,
        "tags": list(item.tags),
        "price": format_cents(item.price_cents),
        "quantity": item.quantity,
        "owner": item.owner,
        "visibility": item.visibility,
        "palette": [colour_json(colour) for colour in item.palette],
        "colours_pending": item.colours_pending,
    }
    if item.score is not None:
        value["score"] = item.score
    if item.match is not None:
        value["match"] = colour_json(item.match)
    return value


def _thumbnail_cell(item: ImageSummary, mode: GraphicsMode, cells: tuple[int, int]) -> Any:
    if item.thumbnail is None:
        return Text("")
    return picture_renderable(item.thumbnail, mode, *cells)


def colours_cell(item: ImageSummary, hex_codes: bool = True) -> Text:
    """The palette, one colour a line as swatch, hex and share (narrow terminals leave the hex
    out, never the share); after a colour search the colour that matched comes first, marked.
    A picture without colours says "none", short enough not to widen the column; one whose
    colours were never computed, "not yet"."""
    if not item.palette:
        return Text("not yet" if item.colours_pending else "none", style="dim")
    match = item.match
    # the server's match comes from its colour index, whose floats need not equal the
    # palette's to the last bit: the same colour is the same RGB with the nearest share
    rgb = None if match is None else (match.r, match.g, match.b)
    same = [c for c in item.palette if (c.r, c.g, c.b) == rgb]
    if match is None or not same:
        return palette_text(item.palette, "\n", hex_codes=hex_codes)
    first = min(same, key=lambda c: abs(c.share - match.share))
    cell = palette_text([first], hex_codes=hex_codes)
    cell.append(f" {MATCH_MARK}", style="bold")
    rest = [colour for colour in item.palette if colour is not first]
    if rest:
        cell.append("\n")
        cell.append_text(palette_text(rest, "\n", hex_codes=hex_codes))
    return cell


def terminal_size() -> tuple[int, int]:
    """(columns, lines) listings are laid out for: COLUMNS and LINES, else the terminal's
    size, else 80 x 24."""
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines


def terminal_columns() -> int:
    """The width listings are laid out for (COLUMNS, else the terminal, else 80)."""
    return terminal_size()[0]


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One shape of the listing table; narrower terminals get the later ones of LAYOUTS."""

    #: title, tags and owner stacked in one column instead of three side by side
    stacked: bool
    #: colours as swatch, hex and share instead of swatch and share
    hex_codes: bool
    #: thumbnail size in cells, or None for no picture column
    thumbnail: tuple[int, int] | None
    #: fewest cells the title (or the stacked column) may fold to, so a title never becomes a
    #: letter a line; a big picture is worth keeping only while the words keep 16
    title_least: int


#: Narrowing steps, in order. Numbers (ids, prices, quantities, shares, scores) are never cut:
#: the words give way first (stacked and folded, which costs no height beside a picture), then
#: the hex codes, then the picture's size, then the picture; without a picture the hex codes
#: come back when they fit, and go last.
LAYOUTS = (
    Layout(stacked=False, hex_codes=True, thumbnail=THUMB_CELLS, title_least=12),
    Layout(stacked=True, hex_codes=True, thumbnail=THUMB_CELLS, title_least=16),
    Layout(stacked=True, hex_codes=False, thumbnail=THUMB_CELLS, title_least=16),
    Layout(stacked=True, hex_codes=False, thumbnail=SMALL_THUMB_CELLS, title_least=12),
    Layout(stacked=True, hex_codes=True, thumbnail=None, title_least=12),
    Layout(stacked=True, hex_codes=False, thumbnail=None, title_least=12),
)
#: The steps of a listing without pictures (--no-images, no thumbnails, no graphics): the
#: title's 16 cells are kept only beside a big picture, so here the hex codes outlast them.
TEXT_LAYOUTS = (
    Layout(stacked=False, hex_codes=True, thumbnail=None, title_least=12),
    Layout(stacked=True, hex_codes=True, thumbnail=None, title_least=12),
    Layout(stacked=True, hex_codes=False, thumbnail=None, title_least=12),
)
#: Fewest cells the tags and owner columns fold to (shorter content keeps its own width).
TAGS_MIN, OWNER_MIN = 8, 7


@dataclass
class Column:
    header: str
    cells: list[Text | str]
    justify: JustifyMethod = "left"
    #: None: never wrapped nor cut (numbers, swatches); else folded down to this many cells
    least: int | None = None
    #: how much of the spare room it gets, among the folding columns
    weight: int = 0

    @property
    def natural(self) -> int:
        """The widest line of the header and the cells, in terminal cells."""
        lines = (
            line
            for cell in (self.header, *self.cells)
            for line in (cell.plain if isinstance(cell, Text) else cell).split("\n")
        )
        return max(cell_len(line) for line in lines)


def _tags_cell(item: ImageSummary) -> Text:
    return Text(", ".join(printable(tag) for tag in item.tags), style="cyan")


def _owner_cell(item: ImageSummary) -> Text:
    owner = Text(printable(item.owner))
    if item.visibility == "private":
        owner.append(" private", style="yellow")
    return owner


def _text_columns(items: Sequence[ImageSummary], layout: Layout) -> list[Column]:
    """Every column but the picture, shaped by `layout`, in the order they are shown."""
    titles = [Text(printable(item.title)) for item in items]
    tags = [_tags_cell(item) for item in items]
    owners = [_owner_cell(item) for item in items]
    colours_header = "colours"
    if any(item.match is not None for item in items):
        colours_header += f" {MATCH_MARK} match" if layout.hex_codes else f"\n{MATCH_MARK} match"
    columns = [Column("id", [str(item.id) for item in items], justify="right")]
    if layout.stacked:
        stacked = [
            Text("\n").join(part for part in (title, tag, owner) if part.plain)
            for title, tag, owner in zip(titles, tags, owners, strict=True)
        ]
        columns.append(
            Column("title, tags, owner", list(stacked), least=layout.title_least, weight=1)
        )
    else:
        columns.append(Column("title", list(titles), least=layout.title_least, weight=3))
        columns.append(Column("tags", list(tags), least=TAGS_MIN, weight=2))
    columns.append(
        Column("price", [format_cents(item.price_cents) for item in items], justify="right")
    )
    columns.append(Column("qty", [str(item.quantity) for item in items], justify="right"))
    if not layout.stacked:
        columns.append(Column("owner", list(owners), least=OWNER_MIN, weight=1))
    columns.append(Column(colours_header, [colours_cell(item, layout.hex_codes) for item in items]))
    if any(item.score is not None for item in items):
        scores = ["" if item.score is None else f"{item.score:.3f}" for item in items]
        columns.append(Column("score", list(scores), justify="right"))
    return columns


def _frame(columns: int, compact: bool) -> int:
    """Cells taken by borders and padding: the compact box has a one-cell edge either side and
    a divider and one padding cell between columns; the heavy box pads both sides of each."""
    return 2 * columns if compact else 3 * columns + 1


def _share_room(room: int, folding: Sequence[Column]) -> list[int]:
    """Widths for the folding columns: each its least (or its natural width when smaller),
    then the rest of `room` by weight to those that want more, up to their natural width."""
    natural = [column.natural for column in folding]
    widths = [min(n, column.least or n) for n, column in zip(natural, folding, strict=True)]
    spare = room - sum(widths)
    while spare > 0:
        wanting = [i for i, width in enumerate(widths) if width < natural[i]]
        if not wanting:
            break
        total = sum(folding[i].weight for i in wanting)
        for i in wanting:
            given = min(natural[i] - widths[i], max(1, spare * folding[i].weight // total), spare)
            widths[i] += given
            spare -= given
    return widths


def fold_widths(
    columns: Sequence[Column], width: int, compact: bool, picture: int | None = None
) -> list[int] | None:
    """Widths for the folding columns of a table of `columns` (after a picture column
    `picture` cells wide, if any) laid out in `width` cells with every other column whole, or
    None when it cannot be (the caller then tries a narrower layout, or shows records)."""
    folding = [column for column in columns if column.least is not None]
    used = sum(column.natural for column in columns if column.least is None) + (picture or 0)
    room = width - used - _frame(len(columns) + (picture is not None), compact)
    if room < sum(min(column.natural, column.least or 0) for column in folding):
        return None
    return _share_room(room, folding)


Shape = TypeVar("Shape")


@dataclass(frozen=True)
class Fit(Generic[Shape]):
    """The first shape of a table that fits, as `first_fit` found it."""

    shape: Shape
    columns: Sequence[Column]
    widths: list[int]


def first_fit(
    shapes: Iterable[Shape],
    width: int,
    lay_out: Callable[[Shape], tuple[Sequence[Column], bool, int | None]],
) -> Fit[Shape] | None:
    """The first of `shapes`, widest first, whose table fits `width` cells with every number
    whole; None when none does, and the caller shows records instead. `lay_out` gives a
    shape's columns, whether it is compact, and its picture column's width (None: none).

    Listings, the cart, `orders` and `sales` narrow in different steps (a layout, a picture
    size, the box), but must give way in the same manner, so that no table ever cuts a number.
    """
    for shape in shapes:
        columns, compact, picture = lay_out(shape)
        widths = fold_widths(columns, width, compact, picture)
        if widths is not None:
            return Fit(shape, columns, widths)
    return None


def column_table(
    columns: Sequence[Column],
    widths: Sequence[int] | None,
    *,
    compact: bool = False,
    picture: int | None = None,
    show_lines: bool = False,
) -> Table:
    """An empty table with the columns of `columns`: the numbers whole, each folding column at
    its width from `fold_widths` (None: at least its `least`), after a picture column of
    `picture` cells if any. Listings, the cart, `orders` and `sales` share it."""
    table = Table(
        show_lines=show_lines,
        header_style="bold",
        # no lines between columns, no padding at the edges: about ten cells more for words
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        collapse_padding=compact,
        pad_edge=not compact,
    )
    if picture is not None:
        table.add_column("", width=picture, no_wrap=True)
    folded = iter(widths or [])
    for column in columns:
        folds = column.least is not None
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=not folds,
            overflow="fold",
            width=next(folded, None) if folds else None,
            min_width=column.least if folds and widths is None else None,
        )
    return table


def record_table(
    records: Sequence[Sequence[tuple[str, Text | str]]],
    ruled: Sequence[bool] | None = None,
    caption: str | None = None,
) -> Table:
    """One record after another, a field a line (as psql's expanded display), for terminals too
    narrow for a table: the labels are short, so a number has nearly the whole width and only
    the words fold. A rule ends each record but the last (`ruled[i]` False: none after it)."""
    table = Table(show_header=False, box=box.SIMPLE, pad_edge=False, collapse_padding=True)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.caption = caption
    for number, fields in enumerate(records):
        rule = number < len(records) - 1 and (ruled is None or ruled[number])
        last = len(fields) - 1
        for index, (label, value) in enumerate(fields):
            table.add_row(label, value, end_section=rule and index == last)
    return table


def listing_table(
    items: Sequence[ImageSummary],
    mode: GraphicsMode,
    width: int | None = None,
    *,
    coloured: bool = True,
) -> Table:
    """The table people see, laid out for a terminal `width` (None: as wide as it likes).

    Under WIDE_LISTING the lines between columns go. Then the first of LAYOUTS whose columns
    fit is used, so a narrow terminal loses words and hex codes before any number would be
    cut. A terminal too narrow even for the last layout gets one record per image, a field a
    line: rich would otherwise cut the numbers, and a cut id names another image.

    Output that is not `coloured` (not a terminal, NO_COLOR, TERM=dumb) shows a swatch as two
    blank blocks, so there the hex codes never go: they are all that names the colour.
    """
    compact = width is not None and width < WIDE_LISTING
    pictures = mode != "none" and any(item.thumbnail for item in items)
    layouts = LAYOUTS if pictures else TEXT_LAYOUTS
    if not coloured:
        layouts = tuple(layout for layout in layouts if layout.hex_codes)

    def lay_out(layout: Layout) -> tuple[list[Column], bool, int | None]:
        thumbnail = layout.thumbnail if pictures else None
        return _text_columns(items, layout), compact, thumbnail[0] if thumbnail else None

    layout: Layout = layouts[0]
    columns: Sequence[Column]
    widths: list[int] | None = None
    if width is None:
        columns = _text_columns(items, layout)
    else:
        fit = first_fit(layouts, width, lay_out)
        if fit is None:
            return _record_table(items)
        layout, columns, widths = fit.shape, fit.columns, fit.widths
    thumbnail = layout.thumbnail if pictures else None
    table = column_table(
        columns,
        widths,
        compact=compact,
        picture=thumbnail[0] if thumbnail else None,
        show_lines=pictures,
    )
    for index, item in enumerate(items):
        row = [_thumbnail_cell(item, mode, thumbnail)] if thumbnail is not None else []
        row += [column.cells[index] for column in columns]
        table.add_row(*row)
    return table


def _record_table(items: Sequence[ImageSummary]) -> Table:
    """One image after another, a field a line."""
    records = []
    for item in items:
        fields: list[tuple[str, Text | str]] = [
            ("id", Text(str(item.id), style="bold")),
            ("title", Text(printable(item.title))),
            ("tags", _tags_cell(item)),
            ("price", format_cents(item.price_cents)),
            ("qty", str(item.quantity)),
            ("owner", _owner_cell(item)),
            # the hex fits: records are for MIN_COLUMNS and up, and "██ #rrggbb 42% ◂" is 16
            ("colours", colours_cell(item)),
        ]
        if item.score is not None:
            fields.append(("score", f"{item.score:.3f}"))
        records.append(fields)
    matched = any(item.match is not None for item in items)
    return record_table(
        records, caption=f"{MATCH_MARK} the colour that matched" if matched else None
    )


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
    # ＳＡ completes to sale, as it browses; straß to both strasse and straße½ (not folded).
    typed = tag_spellings(partial) if partial.strip() else ("",)
    items = [
        CompletionItem(prefix + tag.name, display=tag.name, display_meta=f"{tag.count}")
        for tag in known_tags(app)
        if tag.name.startswith(typed) and tag.name not in already
    ]
    return Completions(items=items)
