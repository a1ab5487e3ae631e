"""Cart commands: add_to_cart, view_cart, update_cart, remove_from_cart, clear_cart and checkout.

The cart itself is shell.cart_store's (a local file per server and user); the server only
answers fresh facts (`GetImages`) and decides checkouts. Choices made here:

* `add_to_cart` asks the server first, so an image that is missing, deleted, someone else's
  private one, the user's own, or short of stock is refused before it reaches the cart.
* A line keeps the unit price seen when it was added; `view_cart` and `checkout` fetch fresh
  prices and stock and warn per line (price changed, stock short, image gone). Their total is
  of the lines that can be bought now, at current prices, and names the lines it leaves out
  (checkout buys every line or none, so those must be fixed or removed first); each
  `--json` line has a `status`, "ok" only when `checkout --yes` would buy it as it stands.
* `update_cart` re-reads the line's price and shows it, so the line then holds the price the
  buyer just saw. It sets a count: a signed one ("+2", "-0") is refused, naming what to type
  for what was likely meant, rather than read as the count ("+2" once left 2 of 5, "-0"
  removed the line); `add_to_cart` adds, so there "+2" is 2 more. A cart quantity past
  MAX_LINE_QUANTITY is refused in the cart's words, whatever its length.
* `checkout` shows the lines at current prices and asks. Confirmed at a terminal, the order is
  placed at the prices shown; with `--yes` (scripts) it is placed at the prices stored in the
  cart, so a changed price makes the server refuse that line rather than charge a price nobody
  saw. At a terminal, lines already known to be unbuyable (gone, short) stop the checkout
  before the question; with `--yes` the server always decides, so scripts get its error code
  (OUT_OF_STOCK, NOT_FOUND, CONFLICT...) and its reason per line. On any refusal the cart
  stays as it was and each failing line is named with its reason; on success the bought lines
  leave the cart and the order id is shown.
* A connection lost while a checkout is in flight leaves the outcome unknown: the cart is kept
  and the user is told to look at `orders` before trying again. Ctrl-C once the order is sent
  does not drop it (the server places it anyway): the answer is awaited a few seconds more and
  applied as usual; without one (a second Ctrl-C, or none in time) it is the same unknown.
  From then until the cart file is saved, Ctrl-C is only counted (`HeldInterrupts`).
  SIGTERM and SIGHUP in that span end the wait at once (the same unknown outcome), and the
  shell ends by that signal once the cart is saved.
* A checkout the server refuses before reading it (UNAUTHENTICATED: the session ended, say by
  a password change in another shell while this one asked; BAD_REQUEST) bought nothing: it is
  reported so, the shell shows itself logged out after UNAUTHENTICATED, and a key first sent
  with it is dropped. A key sent again is kept: the refusal says nothing of its earlier send.
* Checkout is idempotent across dying shells: a random key and the lines sent are written into
  the cart file (fsynced) before the order leaves, and the server keeps the key with the order.
  Saving the answer drops it; a shell killed in between (SIGKILL included) leaves it, and the
  next checkout sends it again with whatever the cart holds then. If the earlier order went
  through, the server answers with it (`placed_earlier`): it is reported, what it bought leaves
  the cart, nothing more is bought, and the command fails only if something remains (naming
  lines the order did not hold apart from lines it bought only some units of). `view_cart`
  warns while a key is pending; `clear_cart` forgets it.
* An order placed whose cart cannot then be saved (a full disk) fails the command: the cart
  still holds the bought lines and the key, and the message says so and that the next
  `checkout` reports the order and buys nothing twice.
* The cart table never cuts a number or a note: a narrow terminal loses the pictures, then gets
  one record per line (as listings do).

The orders checkout places are listed by `orders` and `sales` (shell.order_commands).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import signal
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cmd2
from cmd2 import Choices, CompletionItem
from rich.table import Table
from rich.text import Text

from protocol.base import Response
from protocol.catalog import (
    CartLine,
    Checkout,
    GetImages,
    Images,
    ImageSummary,
    Order,
    OrderPlaced,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_IDS_PER_REQUEST, MAX_LINE_QUANTITY
from shell import listing
from shell.app import CART, CommandFailed, VitrineShell, image_id, parser, write_json_lines
from shell.cart_store import LINE_LIMIT, Cart, CartError, CartItem, CartStore, PendingCheckout
from shell.connection import ConnectionLost, unexpected_response
from shell.interrupts import HeldInterrupts
from shell.order_commands import order_json
from shell.pictures import picture_renderable
from shell.text import plural, printable
from shell.upload import INTERRUPT_GRACE_S
from util.money import QUANTITY_DIGITS, format_cents, parse_quantity

#: A server detail line names its image first: "image 12: sold out, 1 wanted".
_DETAIL = re.compile(r"image (\d+): (.*)", re.DOTALL)


# --- arguments -----------------------------------------------------------------------------------


def signed_quantity(text: str) -> int:
    """A quantity as util.money reads one (ASCII digits only: int() would also take "1_0",
    "３" and "٣"), or such a quantity with a minus sign, which is kept so that the command, not
    argparse, explains why a negative is refused (update_cart names an id not in the cart
    first). A plus sign is read as the number: add_to_cart adds, so "+2" means 2 more either
    way (update_cart, which sets a count, reads its own with `typed_count`)."""
    raw = text.strip()
    # Past MAX_LINE_QUANTITY in the cart's words, not parse_quantity's stock limit (a thousand
    # times larger): a cart's quantities have one limit and one message.
    digits = raw[1:] if raw[:1] in ("+", "-") else raw
    if QUANTITY_DIGITS.fullmatch(digits) and (
        len(digits.lstrip("0")) > len(str(MAX_LINE_QUANTITY)) or int(digits) > MAX_LINE_QUANTITY
    ):
        raise argparse.ArgumentTypeError(LINE_LIMIT)
    try:
        if raw[:1] == "-" and raw[1:2].isascii() and raw[1:2].isdigit():
            with contextlib.suppress(ValueError):  # else parse_quantity(raw) says what is wrong
                return -parse_quantity(raw[1:])
        return parse_quantity(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class TypedCount(NamedTuple):
    """update_cart's QTY: the count, and the sign typed before it ("" when none)."""

    count: int
    sign: str

    def __str__(self) -> str:
        return f"{self.sign}{self.count}"


def typed_count(text: str) -> TypedCount:
    """update_cart sets a line's count, so a sign cannot be read away: "+2" was once taken as 2,
    which left 2 of the 5 a buyer meant to add to, and "-0" as 0, which removed the line. The
    sign is kept for the command to refuse it, naming the command that does what was meant."""
    raw = text.strip()
    sign = raw[:1] if raw[:1] in ("+", "-") else ""
    return TypedCount(abs(signed_quantity(raw)), sign)


def store_for(shell: cmd2.Cmd) -> CartStore:
    session = shell.session  # type: ignore[attr-defined]
    if session.user is None:
        raise CommandFailed("Log in first: carts belong to a user.")
    return CartStore(
        shell.data_dir,  # type: ignore[attr-defined]
        session.server,
        session.user,
        notice=lambda text: shell.perror(text, style=None),
        server_id=session.connection.server_id,
        wait_s=session.connection.answer_timeout,
        data_dir_setting=shell.data_dir_setting,  # type: ignore[attr-defined]
    )


def complete_cart_ids(app: cmd2.Cmd) -> Choices:
    """Ids in the cart, with their titles; completion must never break the prompt."""
    try:
        cart = store_for(app).load()
    except Exception:  # any failure here only means no suggestions
        return Choices(items=[])
    return Choices(
        items=[
            CompletionItem(str(line.image_id), display_meta=printable(line.title)[:40])
            for line in cart.lines
        ]
    )


# --- fresh facts about cart lines ----------------------------------------------------------------


#: A line's `status` in `view_cart --json`, worst first: the one a line gets is the worst that
#: applies. Only "ok" lines are bought by `checkout --yes`, which sends the prices stored in the
#: cart; "price_changed" and "title_changed" lines are still bought by a checkout at a terminal,
#: which shows them as they are now before asking.
STATUSES = ("gone", "own_image", "sold_out", "stock_short", "price_changed", "title_changed", "ok")

#: How the summary names lines left out of the total, by status.
_LEFT_OUT = {
    "gone": "gone",
    "own_image": "your own",
    "sold_out": "sold out",
    "stock_short": "stock short",
}


@dataclass
class LineView:
    """A cart line next to what the server says now."""

    item: CartItem
    fresh: ImageSummary | None
    warnings: list[str] = field(default_factory=list)
    #: True when checkout cannot succeed as the line is (gone, short of stock, own image).
    blocked: bool = False
    #: The seller renamed the image since it was added: `checkout --yes` refuses to buy what
    #: nobody saw under its new name (the server knows nothing of the cart's titles).
    renamed: bool = False
    #: One of STATUSES, so a script can tell "buy as is" from "needs attention" by one field.
    status: str = "ok"

    def flag(self, status: str, warning: str) -> None:
        """Keep the worst status: a gone line that also changed price must be removed, and
        `update_cart` (the fix for a price) would not help it."""
        self.warnings.append(warning)
        if STATUSES.index(status) < STATUSES.index(self.status):
            self.status = status
        self.blocked = self.blocked or status in _LEFT_OUT

    @property
    def title(self) -> str:
        return self.fresh.title if self.fresh is not None else self.item.title

    @property
    def unit_price(self) -> int | None:
        return self.fresh.price_cents if self.fresh is not None else None

    @property
    def line_total(self) -> int | None:
        price = self.unit_price
        return None if price is None else price * self.item.quantity


def fetch_images(shell: cmd2.Cmd, ids: list[int], thumbnails: bool) -> dict[int, ImageSummary]:
    found: dict[int, ImageSummary] = {}
    for start in range(0, len(ids), MAX_IDS_PER_REQUEST):
        chunk = ids[start : start + MAX_IDS_PER_REQUEST]
        request = GetImages(id=0, image_ids=chunk, thumbnails=thumbnails)
        answer = shell.session.call(request, Images)  # type: ignore[attr-defined]
        found.update((item.id, item) for item in answer.items)
    return found


def assess(cart: Cart, fresh: dict[int, ImageSummary], me: str) -> list[LineView]:
    views = []
    for item in cart.lines:
        view = LineView(item, fresh.get(item.image_id))
        now = view.fresh
        if now is None:
            view.flag("gone", "gone: deleted, made private or no longer there")
        else:
            if now.owner == me:
                view.flag("own_image", "your own image: you cannot buy it")
            if now.price_cents != item.price_cents:
                view.flag(
                    "price_changed",
                    f"price changed: was {format_cents(item.price_cents)}, "
                    f"now {format_cents(now.price_cents)}",
                )
            if item.title and now.title != item.title:
                view.flag("title_changed", f"title changed: was {printable(item.title)!r}")
                view.renamed = True
            if now.quantity == 0:
                view.flag("sold_out", "sold out")
            elif now.quantity < item.quantity:
                view.flag("stock_short", f"stock short: only {now.quantity} left")
        views.append(view)
    return views


def _seen(line: CartItem) -> tuple[int, int, str]:
    """What the buyer saw of a line before a command takes the image as it is now."""
    return line.quantity, line.price_cents, line.title


def _changes_since(before: tuple[int, int, str], image: ImageSummary) -> str:
    """The sentence that says what a line's price and title were, when add_to_cart or
    update_cart has just replaced them with the ones shown now: the units already there are
    bought at the new price, and a script's log should say so."""
    quantity, price_cents, title = before
    said = []
    if price_cents != image.price_cents:
        said.append(f"at {format_cents(price_cents)}")
    if title and title != image.title:
        said.append(f"as {printable(title)!r}")
    if not said:
        return ""
    verb = "was" if quantity == 1 else "were"
    return (
        f" The {plural(quantity, 'unit')} already in the cart {verb} added {' and '.join(said)};"
        " the whole line is now as shown."
    )


def _signed_count(number: int, typed: TypedCount, held: int) -> str:
    """Why update_cart refuses a signed count, and what to type for what was likely meant: it
    sets the line's count, so "+2" is not "2 more" and "-0" is not a way to remove it."""
    if typed.count == 0:
        return (
            f"update_cart sets how many the cart holds, so {typed} is refused rather than read as "
            f"0, which would remove the line: remove_from_cart {number} takes the line out "
            f"(as update_cart {number} 0 does). The cart still holds {held} of it."
        )
    if typed.sign == "+":
        wanted = held + typed.count
        return (
            f"update_cart sets how many the cart holds, so {typed} is refused rather than read "
            f"as {typed.count}: add_to_cart {number} {typed.count} adds {typed.count} "
            f"({wanted} in all), and update_cart {number} {wanted} sets the line to {wanted}. "
            f"The cart still holds {held} of it."
        )
    left = held - typed.count
    fewer = (
        f"update_cart {number} {left} leaves {left} of the {held} there, and " if left > 0 else ""
    )
    return (
        f"A quantity must be 1 or more, not {typed} (0 removes the line): update_cart sets how "
        f"many the cart holds and does not take units off. {fewer}remove_from_cart {number} "
        f"takes the line out. The cart still holds {held} of it."
    )


def _name_lines(shell: cmd2.Cmd, views: list[LineView]) -> None:
    """The lines that stop a checkout, each with its warnings, on stderr."""
    for view in views:
        shell.perror(
            f"  #{view.item.image_id} {printable(view.title)}: {'; '.join(view.warnings)}",
            style=None,
        )


def _hints(shell: cmd2.Cmd, views: list[LineView]) -> list[str]:
    """What to type for each line that stops `checkout --yes`, by its worst status."""
    hints = []
    for view in views:
        number = view.item.image_id
        if view.status == "price_changed":
            elsewhere = (
                ""
                if shell.stdin.isatty()
                else " (or checkout at a terminal, which shows the current prices before asking)"
            )
            hints.append(f"update_cart {number} QTY accepts the new price{elsewhere}.")
        elif view.status == "stock_short":
            hints.append(f"update_cart {number} QTY with fewer, or remove_from_cart {number}.")
        else:  # sold out, gone or one's own: no quantity would make it buyable
            hints.append(f"remove_from_cart {number} takes the line out.")
    return hints


def _total(views: list[LineView]) -> int:
    """What the lines that can be bought now cost: one that cannot would only inflate the sum.
    (Checkout itself buys every line or none.)"""
    return sum(view.line_total or 0 for view in views if not view.blocked)


def _left_out(views: list[LineView]) -> list[LineView]:
    return [view for view in views if view.blocked]


def cart_summary(views: list[LineView], units: int) -> str:
    """The sentence under a cart table; it names what the total leaves out, so a total lower
    than the table's line totals add up to does not read as a mistake."""
    text = (
        f"{plural(len(views), 'line')}, {plural(units, 'item')}. Total at current prices: "
        f"{format_cents(_total(views))}"
    )
    left = _left_out(views)
    if left:
        reasons = ", ".join(dict.fromkeys(_LEFT_OUT[view.status] for view in left))
        text += f" ({plural(len(left), 'line')} left out: {reasons})"
    return text + "."


#: Fewest cells the title and notes columns fold to: below that the picture shrinks, then goes,
#: then the table gives way to one record per line (at 50 columns rich once folded both to
#: nothing, so "see the notes column" pointed at no column, and at 44 it cut ids to "…").
TITLE_LEAST, NOTES_LEAST = 12, 16


def _cells(view: LineView) -> list[Text | str]:
    """id, title, price, qty, total and notes, as shown in either layout."""
    price, total = view.unit_price, view.line_total
    return [
        str(view.item.image_id),
        Text(printable(view.title)),
        format_cents(price) if price is not None else Text("-", style="dim"),
        str(view.item.quantity),
        format_cents(total) if total is not None else Text("-", style="dim"),
        Text("; ".join(view.warnings), style="red" if view.blocked else "yellow"),
    ]


_HEADERS = ("id", "title", "price", "qty", "total", "notes")
#: Columns that fold (title, notes): their least widths and weights for spare room.
_FOLDING = {1: (TITLE_LEAST, 3), 5: (NOTES_LEAST, 2)}


def cart_table(views: list[LineView], mode: listing.GraphicsMode, width: int) -> Table:
    """The cart as people see it, laid out for a terminal `width`. A narrow terminal gets
    smaller pictures, then none, then one record per line, a field a row, so no number and no
    note is ever cut."""
    pictures = mode != "none" and any(v.fresh and v.fresh.thumbnail for v in views)
    rows = [_cells(view) for view in views]
    columns = [
        listing.Column(
            header,
            [row[i] for row in rows],
            justify="left" if i in _FOLDING else "right",
            least=_FOLDING[i][0] if i in _FOLDING else None,
            weight=_FOLDING[i][1] if i in _FOLDING else 0,
        )
        for i, header in enumerate(_HEADERS)
    ]
    sizes = [listing.THUMB_CELLS, listing.SMALL_THUMB_CELLS] if pictures else []
    fit = listing.first_fit(  # the full picture, a small one, none
        [*sizes, None], width, lambda size: (columns, False, size[0] if size else None)
    )
    if fit is None:
        return listing.record_table(
            [
                [
                    (label, cell)
                    for label, cell in zip(_HEADERS, cells, strict=True)
                    if label != "notes" or str(cell)
                ]
                for cells in rows
            ]
        )
    thumbnail = fit.shape
    table = listing.column_table(
        columns,
        fit.widths,
        picture=thumbnail[0] if thumbnail else None,
        show_lines=thumbnail is not None,
    )
    for view, cells in zip(views, rows, strict=True):
        row: list[Any] = []
        if thumbnail is not None:
            thumb = view.fresh.thumbnail if view.fresh else None
            row.append(picture_renderable(thumb, mode, *thumbnail) if thumb else Text(""))
        table.add_row(*row, *cells)
    return table


def line_json(view: LineView) -> dict[str, Any]:
    price, total = view.unit_price, view.line_total
    return {
        "id": view.item.image_id,
        "title": view.title,
        "quantity": view.item.quantity,
        "price": None if price is None else format_cents(price),
        "price_when_added": format_cents(view.item.price_cents),
        "line_total": None if total is None else format_cents(total),
        "stock": None if view.fresh is None else view.fresh.quantity,
        "available": not view.blocked,
        "status": view.status,
        "warnings": view.warnings,
    }


def _outcome_unknown(why: str) -> CommandFailed:
    """The one answer when an order may or may not have been placed: keep the cart (buying
    twice is worse than buying again) and send the buyer to `orders` before a new checkout."""
    return CommandFailed(
        f"{why}, so it is not known whether the order went through. Your cart is unchanged and "
        "keeps this checkout's key: `checkout` again asks the server with it, so these lines "
        "cannot be bought twice (`orders` shows whether the order was placed)."
    )


#: Refusals the server gives only after looking the checkout's key up and finding no order
#: placed with it (`repository.orders.CheckoutRefused`): nothing was bought, ever, under that key,
#: so the cart may forget it. Any other error (INTERNAL after the order committed, a lost
#: session, a rate limit) says nothing about an earlier send, so the key is kept: sending it
#: again is always harmless, forgetting it could buy the same lines twice.
KEY_SETTLING_REFUSALS = frozenset(
    {ErrorCode.OUT_OF_STOCK, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT, ErrorCode.FORBIDDEN}
)

#: Refusals the server gives before it reads the checkout at all: UNAUTHENTICATED when the
#: connection's session has ended (service.connection, before any handler; service.orders reads
#: the buyer before placing anything), BAD_REQUEST for a request it could not decode or one
#: naming an image twice (checked before the transaction). Neither can follow a committed order,
#: so this send bought nothing and a key first sent with it may go. But the key was not looked
#: up either: a key sent again (a checkout that got no answer) is kept, as unknown as before.
UNREAD_REFUSALS = frozenset({ErrorCode.UNAUTHENTICATED, ErrorCode.BAD_REQUEST})


@dataclass(frozen=True)
class Stays:
    """A cart line left after an order's lines were taken out of the cart."""

    image_id: int
    title: str
    #: Units still in the cart.
    quantity: int
    #: Units of this image the order bought (0: the image was not in the order at all).
    bought: int


def _not_bought_now(stays: list[Stays]) -> str:
    """Why a checkout answered with an earlier order fails: what of the cart that order did not
    buy. A line it bought only some units of (the quantity was raised since) is told apart from
    one it did not hold at all, so nobody looks for a whole line that did leave."""
    absent = [line for line in stays if not line.bought]
    parts = []
    if absent:
        one = len(absent) == 1
        numbers = ", ".join(f"#{line.image_id}" for line in absent)
        parts.append(
            f"{plural(len(absent), 'line')} of your cart {'was' if one else 'were'} not in that "
            f"order and {'stays' if one else 'stay'} in it ({numbers})"
        )
    for line in stays:
        if line.bought:
            title = f" ({printable(line.title)})" if line.title else ""
            parts.append(
                f"that order bought {line.bought} of the {line.bought + line.quantity} units of "
                f"#{line.image_id}{title} in your cart; the other {line.quantity} "
                f"{'stays' if line.quantity == 1 else 'stay'} in it"
            )
    units = sum(line.quantity for line in stays)
    return f"Not bought now: {'; '.join(parts)}. Run checkout again to buy {plural(units, 'item')}."


def _not_saved(order: Order, placed_earlier: bool, problem: CartError) -> str:
    """The one message when an order was placed but the cart could not be saved: the file still
    holds the bought lines and the checkout's key (written before the order was sent), and the
    shell has no way to record the order number either. The key is what makes the advice safe:
    the next checkout sends it, and the server answers with this order instead of a new one."""
    units = sum(line.quantity for line in order.lines)
    return (
        f"Order #{order.id} was placed{' earlier' if placed_earlier else ''} "
        f"({plural(units, 'item')} for {format_cents(order.total_cents)}), but your cart could "
        f"not be saved: {problem} It still holds the bought lines and this checkout's key, so "
        "view_cart will say the checkout got no answer. Once the cart can be saved again, run "
        f"`checkout`: the server answers with order #{order.id}, its lines leave the cart and "
        "nothing is bought twice."
    )


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _pending_note(pending: PendingCheckout) -> str:
    """What view_cart and checkout say while a checkout's answer was never saved."""
    return (
        f"A checkout sent at {_clock(pending.sent_at)} got no answer (the shell was stopped or "
        "the connection lost), so it may have been placed. The next `checkout` sends its key "
        "again: if that order went through, it is reported and nothing is bought twice."
    )


# --- the commands --------------------------------------------------------------------------------


class CartCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = CART

    def _store(self) -> CartStore:
        return store_for(self._cmd)

    def _views(self, cart: Cart, thumbnails: bool) -> list[LineView]:
        shell = self._cmd
        fresh = fetch_images(shell, [line.image_id for line in cart.lines], thumbnails)
        return assess(cart, fresh, shell.session.user or "")

    # --- add -------------------------------------------------------------------------------------

    add_parser = parser(
        "Put an image in your cart (ids come from any listing). Refused if the image is not "
        "available to you, is your own, or has less stock than your cart would hold."
    )
    add_parser.add_argument(
        "image_id",
        type=image_id,
        metavar="ID",
        choices_provider=listing.complete_recent_ids,
        help="the image",
    )
    add_parser.add_argument(
        "quantity", type=signed_quantity, nargs="?", default=1, metavar="QTY", help="default 1"
    )

    @cmd2.with_argparser(add_parser)
    def do_add_to_cart(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        number, quantity = args.image_id, args.quantity
        if quantity < 1:
            raise CommandFailed(f"A quantity must be 1 or more, not {quantity}.")
        image = fetch_images(shell, [number], thumbnails=False).get(number)
        if image is None:
            raise CommandFailed(
                f"Image {number} is not available: it does not exist, was deleted, or is "
                "private to its owner. Nothing was added."
            )
        title = printable(image.title) or f"#{number}"
        if image.owner == shell.session.user:
            raise CommandFailed(f"Image {number} ({title}) is your own; you cannot buy it.")
        store = self._store()
        try:
            with store.edit() as cart:
                line = cart.find(number)
                before = _seen(line) if line else None
                wanted = quantity + (line.quantity if line else 0)
                if image.quantity < wanted:
                    have = f"; your cart already holds {line.quantity}" if line else ""
                    if image.quantity == 0:
                        raise CartError(f"Image {number} ({title}) is sold out{have}.")
                    raise CartError(
                        f"Only {image.quantity} of image {number} ({title}) in stock; you asked "
                        f"for {wanted} in all{have}. Nothing was added."
                    )
                line = cart.add(number, quantity, image.price_cents, image.title)
                listing.memory(shell).remember([image])
        except CartError as exc:
            raise CommandFailed(str(exc)) from None
        shell.confirm(
            f"Added {quantity} x {title} (#{number}) at {format_cents(image.price_cents)} each; "
            f"the cart holds {line.quantity} of it, {plural(len(cart), 'line')} in all."
            + (_changes_since(before, image) if before else "")
        )

    # --- view ------------------------------------------------------------------------------------

    view_parser = parser(
        "Show your cart with current prices and stock from the server; each line warns when "
        "its price changed since you added it, its stock is short, or its image is gone."
    )
    view_parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line, then one with the total (prices as decimal strings)",
    )
    view_parser.add_argument(
        "--no-images", dest="images", action="store_false", help="leave the thumbnails out"
    )

    @cmd2.with_argparser(view_parser)
    def do_view_cart(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        try:
            cart = self._store().load()
        except CartError as exc:
            raise CommandFailed(str(exc)) from None
        mode = listing.graphics_mode(shell) if args.images and not args.json else "none"
        views = self._views(cart, thumbnails=mode != "none") if cart.lines else []
        flagged = sum(1 for view in views if view.warnings)
        if cart.pending:  # on stderr, so --json's stdout stays JSON lines
            shell.perror(f"Warning: {_pending_note(cart.pending)}", style=None)
        if args.json:
            summary = {
                "total": format_cents(_total(views)),
                "lines": len(views),
                "units": cart.units,
                "warnings": flagged,
                "left_out": len(_left_out(views)),
                "checkout_pending": cart.pending is not None,
            }
            write_json_lines(shell, [*(line_json(view) for view in views), summary])
            return
        if not views:
            shell.poutput("Your cart is empty: add_to_cart ID [QTY] puts an image in it.")
            return
        table = cart_table(views, mode, listing.terminal_columns())
        shell.poutput(table, soft_wrap=False)
        shell.poutput(cart_summary(views, cart.units))
        if _left_out(views):  # the total leaves them out, but checkout does not buy around them
            shell.poutput(
                "Checkout buys every line or none: update or remove the lines left out first."
            )
        if flagged:
            verb = "needs" if flagged == 1 else "need"
            where = "the notes column" if table.show_header else "the notes"
            shell.poutput(f"{plural(flagged, 'line')} {verb} attention; see {where}.")
        if any(view.status == "price_changed" or view.renamed for view in views):
            shell.poutput(
                "update_cart ID QTY accepts a new price or title; until then `checkout --yes` "
                "refuses that line."
            )

    # --- update / remove / clear ----------------------------------------------------------------

    update_parser = parser(
        "Change how many of an image your cart holds (0 removes the line). The line then holds "
        "the image's current price, which is shown."
    )
    update_parser.add_argument(
        "image_id",
        type=image_id,
        metavar="ID",
        choices_provider=complete_cart_ids,
        help="an image in the cart",
    )
    update_parser.add_argument(
        "quantity",
        type=typed_count,
        metavar="QTY",
        help="the new count, not a change: add_to_cart adds",
    )

    @cmd2.with_argparser(update_parser)
    def do_update_cart(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        number, typed = args.image_id, args.quantity
        quantity = typed.count
        store = self._store()
        try:
            if typed.sign:
                # An id not in the cart is the first thing to say.
                raise CartError(_signed_count(number, typed, store.load().get(number).quantity))
            if quantity == 0:
                with store.edit() as cart:
                    removed = cart.remove(number)
                shell.confirm(f"Removed {printable(removed.title)} (#{number}).")
                return
            store.load().get(number)
            image = fetch_images(shell, [number], thumbnails=False).get(number)
            if image is None:
                raise CartError(
                    f"Image {number} is gone (deleted, or made private); remove_from_cart "
                    f"{number} takes it out of the cart."
                )
            if image.quantity < quantity:
                raise CartError(
                    f"Only {image.quantity} of image {number} in stock; the cart is unchanged."
                )
            with store.edit() as cart:
                line = cart.get(number)
                before = _seen(line)
                cart.set_quantity(number, quantity)
                line.price_cents, line.title = image.price_cents, image.title
        except CartError as exc:
            raise CommandFailed(str(exc)) from None
        shell.confirm(
            f"The cart now holds {quantity} x {printable(image.title)} (#{number}) at "
            f"{format_cents(image.price_cents)} each." + _changes_since(before, image)
        )

    remove_parser = parser("Take images out of your cart.")
    remove_parser.add_argument(
        "image_ids",
        type=image_id,
        nargs="+",
        metavar="ID",
        choices_provider=complete_cart_ids,
        help="images in the cart",
    )

    @cmd2.with_argparser(remove_parser)
    def do_remove_from_cart(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        missing: list[str] = []
        try:
            with self._store().edit() as cart:
                for number in dict.fromkeys(args.image_ids):
                    if cart.find(number) is None:
                        missing.append(str(number))
                        continue
                    removed = cart.remove(number)
                    shell.confirm(f"Removed {printable(removed.title)} (#{number}).")
        except CartError as exc:
            raise CommandFailed(str(exc)) from None
        if missing:
            raise CommandFailed(f"Not in your cart: {', '.join(missing)}; view_cart lists what is.")

    @cmd2.with_argparser(parser("Empty your cart."))
    def do_clear_cart(self, _: argparse.Namespace) -> None:
        try:
            with self._store().edit() as cart:
                count = cart.clear()
                pending, cart.pending = cart.pending, None
        except CartError as exc:
            raise CommandFailed(str(exc)) from None
        if pending:
            self._cmd.perror(
                f"The cart no longer remembers the checkout sent at {_clock(pending.sent_at)} "
                "that got no answer: `orders` shows whether it went through.",
                style=None,
            )
        if count:
            self._cmd.confirm(f"Emptied the cart ({plural(count, 'line')}).")
        else:
            self._cmd.confirm("Your cart was already empty.")

    # --- checkout --------------------------------------------------------------------------------

    checkout_parser = parser(
        "Buy everything in your cart in one order: all lines or none. Shows the lines and the "
        "total at current prices and asks first; --yes buys without asking, at the prices "
        "stored in the cart (a line whose price or title changed is then refused, not bought)."
    )
    checkout_parser.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    checkout_parser.add_argument(
        "--json", action="store_true", help="print the placed order as one JSON object"
    )
    checkout_parser.add_argument(
        "--no-images", dest="images", action="store_false", help="leave the thumbnails out"
    )

    @cmd2.with_argparser(checkout_parser)
    def do_checkout(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        store = self._store()
        try:
            cart = store.load()
        except CartError as exc:
            raise CommandFailed(str(exc)) from None
        if not cart.lines:
            raise CommandFailed(
                "Your cart is empty: add_to_cart ID [QTY] first."
                + (
                    f" (A checkout sent at {_clock(cart.pending.sent_at)} got no answer: "
                    "`orders` shows whether it went through.)"
                    if cart.pending
                    else ""
                )
            )
        if not args.yes and not shell.stdin.isatty():
            raise CommandFailed(
                "checkout asks for confirmation and there is no terminal to ask at: pass "
                "--yes to buy without being asked. Nothing was bought."
            )
        mode = listing.graphics_mode(shell) if args.images and not args.json else "none"
        views = self._views(cart, thumbnails=mode != "none")
        total = _total(views)
        say = (lambda text: shell.perror(text, style=None)) if args.json else shell.poutput
        if not args.json:
            shell.poutput(cart_table(views, mode, listing.terminal_columns()), soft_wrap=False)
        say(cart_summary(views, cart.units))
        if cart.pending:
            say(_pending_note(cart.pending))
        blocked = [view for view in views if view.blocked]
        if blocked and not args.yes:
            _name_lines(shell, blocked)
            raise CommandFailed(
                f"Not bought: {plural(len(blocked), 'line')} cannot be bought now (see above); "
                "fix with update_cart or remove_from_cart. Your cart is unchanged."
            )
        renamed = [view for view in views if view.renamed]
        if renamed and args.yes:
            # Nothing is sent, so the server cannot name the other lines that would stop this
            # checkout (a price changed, an image gone): they are named now too, all at once,
            # not one kind per attempt.
            others = [view for view in views if view.status != "ok" and not view.renamed]
            _name_lines(shell, [view for view in views if view.status != "ok" or view.renamed])
            for hint in _hints(shell, others):
                shell.perror(f"Hint: {hint}", style=None)
            numbers = " ".join(str(view.item.image_id) for view in renamed)
            also = (
                f" {plural(len(others), 'other line')} cannot be bought as "
                f"{'it was' if len(others) == 1 else 'they were'} added either (see the hints)."
                if others
                else ""
            )
            raise CommandFailed(
                f"Not bought: {plural(len(renamed), 'line')} changed title since you added "
                f"{'it' if len(renamed) == 1 else 'them'} (see above); update_cart ID QTY "
                f"accepts the new title ({numbers}).{also} Your cart is unchanged."
            )
        if args.yes:
            prices = {line.image_id: line.price_cents for line in cart.lines}
        else:
            these = "this" if cart.units == 1 else "these"
            question = f"Buy {these} {plural(cart.units, 'item')} for {format_cents(total)}?"
            if not shell.ask_yes_no(question):
                shell.note("Checkout cancelled; your cart is unchanged.")
                return
            prices = {view.item.image_id: view.unit_price or 0 for view in views}
        # The key of a checkout that got no answer is sent again: if that order was placed, the
        # server answers with it instead of placing this one.
        key = cart.pending.key if cart.pending else secrets.token_urlsafe(24)
        request = Checkout(
            id=0,
            key=key,
            lines=[
                CartLine(
                    image_id=line.image_id,
                    quantity=line.quantity,
                    expected_price_cents=prices[line.image_id],
                )
                for line in cart.lines
            ],
        )
        interrupts = HeldInterrupts()
        try:
            self._checkout(store, cart, request, interrupts, as_json=args.json)
        except CommandFailed as exc:
            if interrupts.terminated is None:
                raise
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                shell.perror(str(exc))
        finally:
            interrupts.end()

    def _checkout(
        self,
        store: CartStore,
        cart: Cart,
        request: Checkout,
        interrupts: HeldInterrupts,
        *,
        as_json: bool,
    ) -> None:
        shell = self._cmd
        bought = {line.image_id: line.quantity for line in cart.lines}
        sent = PendingCheckout(
            key=request.key or "",
            lines=[
                CartItem(
                    image_id=line.image_id,
                    quantity=line.quantity,
                    price_cents=line.expected_price_cents or 0,
                    title=cart.get(line.image_id).title,
                )
                for line in request.lines
            ],
        )
        before = cart.pending
        answer: OrderPlaced | VitrineError | None = None
        stays: list[Stays] = []
        unsaved: CartError | None = None
        try:
            # The cart's lock is held from here until what was bought has left the cart, so two
            # shells of one buyer cannot both place an order for the same lines; Ctrl-C, SIGTERM
            # and SIGHUP are held back from writing the key down until the cart is saved.
            with interrupts, store.edit() as current:
                if {line.image_id: line.quantity for line in current.lines} != bought or (
                    current.pending and current.pending.key
                ) != (before and before.key):
                    raise CommandFailed(
                        "Your cart changed in another shell while this checkout was being "
                        "prepared; nothing was bought. Run checkout again to see it as it is."
                    )
                self._cmd.session.ensure_connected()  # Ctrl-C in here: nothing was sent
                interrupts.hold()
                # Written down (fsynced) before the order leaves: a shell killed while waiting
                # leaves the key for the next checkout to ask about.
                sent.sent_at = time.time()
                current.pending = sent
                store.save_now(current)
                answer = self._place(request, interrupts)
                if isinstance(answer, OrderPlaced) or answer.code in KEY_SETTLING_REFUSALS:
                    current.pending = None  # settled: the file no longer needs it
                elif answer.code in UNREAD_REFUSALS:
                    current.pending = before  # as if never sent: it was not read
                if isinstance(answer, OrderPlaced):
                    ordered = {line.image_id: line.quantity for line in answer.order.lines}
                    current.take(ordered)
                    stays = [
                        Stays(
                            line.image_id, line.title, line.quantity, ordered.get(line.image_id, 0)
                        )
                        for line in current.lines
                    ]
        except CartError as exc:
            if answer is None:
                raise CommandFailed(f"{exc} Nothing was bought.") from None
            unsaved = exc
        if isinstance(answer, VitrineError):
            if answer.code in UNREAD_REFUSALS:
                raise self._unread(answer, before)
            if answer.code not in KEY_SETTLING_REFUSALS:
                raise _outcome_unknown(
                    f"The server answered the checkout with {answer.code.value} "
                    f"({printable(answer.message)})"
                )
            raise self._refused(cart, answer)
        assert answer is not None
        order = answer.order
        if as_json:
            write_json_lines(
                shell, [{**order_json(order), "placed_earlier": answer.placed_earlier}]
            )
        if unsaved is not None:  # placed, but the cart still holds what it bought: exit 1
            raise CommandFailed(_not_saved(order, answer.placed_earlier, unsaved))
        if as_json:
            if answer.placed_earlier and stays:
                raise CommandFailed(_not_bought_now(stays))
            return
        units = sum(line.quantity for line in order.lines)
        placed = f"{plural(units, 'item')} for {format_cents(order.total_cents)}"
        if answer.placed_earlier:
            sent_at = f" at {_clock(before.sent_at)}" if before else ""
            shell.poutput(
                f"Order #{order.id} had already been placed by the checkout sent{sent_at}, "
                f"which got no answer: {placed}. Nothing more was bought; "
                + (
                    "what it bought left your cart."
                    if stays
                    else "its lines left your cart, which is now empty."
                )
            )
            if stays:
                raise CommandFailed(_not_bought_now(stays))
            return
        shell.poutput(
            f"Order #{order.id} placed: {placed}. "
            + (
                "What it did not buy stays in your cart."
                if stays
                else "Your cart is empty; `orders` lists your orders."
            )
        )

    def _place(self, request: Checkout, interrupts: HeldInterrupts) -> OrderPlaced | VitrineError:
        """The answer (the order, or the server's refusal), or CommandFailed when it is not
        known whether the order was placed (a lost connection, Ctrl-C twice, SIGTERM).

        Once the request is handed to the connection the server places the order whatever the
        shell does, so a Ctrl-C from then on must not drop its answer: the cart would keep the
        bought lines and the next checkout buy them again. The answer is awaited a little
        longer instead (as `add_image` does for uploads already sent)."""
        session = self._cmd.session
        try:
            future = session.submit(request)
        except ConnectionLost as exc:
            raise _outcome_unknown(f"The connection was lost during checkout ({exc})") from None
        response = self._answer(future, interrupts)
        if isinstance(response, VitrineError | OrderPlaced):
            return response
        return unexpected_response(OrderPlaced, response)

    def _answer(
        self, future: Future[Response], interrupts: HeldInterrupts
    ) -> Response | VitrineError:
        """The sent order's answer (or refusal). After a Ctrl-C it must come within
        INTERRUPT_GRACE_S; a second Ctrl-C, or none in time, leaves the outcome unknown."""
        if not interrupts.wait(future):
            self._terminated(interrupts)
            self._cmd.perror(
                f"Interrupted: waiting up to {INTERRUPT_GRACE_S:g} s for the server's answer to "
                "the order already sent (Ctrl-C again to stop waiting).",
                style=None,
            )
            if not interrupts.wait(future, INTERRUPT_GRACE_S):
                self._terminated(interrupts)
                raise _outcome_unknown("Checkout was interrupted before the server answered")
        try:
            return future.result()
        except VitrineError as exc:
            return exc
        except ConnectionLost as exc:
            raise _outcome_unknown(f"The connection was lost during checkout ({exc})") from None

    @staticmethod
    def _terminated(interrupts: HeldInterrupts) -> None:
        if interrupts.terminated is not None:
            name = signal.Signals(interrupts.terminated).name
            raise _outcome_unknown(f"The shell was told to end ({name}) before the server answered")

    def _unread(self, exc: VitrineError, before: PendingCheckout | None) -> CommandFailed:
        """A checkout the server refused before reading it bought nothing; after an
        UNAUTHENTICATED one the shell shows itself logged out, as after any other command."""
        again = ""
        if exc.code is ErrorCode.UNAUTHENTICATED:
            self._cmd.session.recheck_login()
            again = " Log in again, then checkout."
        earlier = (
            f" The checkout sent at {_clock(before.sent_at)} still got no answer: the cart keeps "
            "its key, and the next checkout asks the server about it."
            if before
            else ""
        )
        return CommandFailed(
            f"Not bought: the server refused the checkout before reading it ({exc.code.value}: "
            f"{printable(exc.message)}), so nothing was bought; your cart is unchanged.{again}"
            f"{earlier}"
        )

    def _refused(self, cart: Cart, exc: VitrineError) -> CommandFailed:
        self._report_refusal(cart, exc)
        return CommandFailed(
            f"Checkout refused ({exc.code.value}): nothing was bought; your cart is unchanged."
        )

    def _report_refusal(self, cart: Cart, exc: VitrineError) -> None:
        shell = self._cmd
        shell.perror(f"{exc.message}", style=None)
        #: In cart order (the server names lines in request order), each said once.
        hints: dict[str, None] = {}
        for detail in exc.details:
            match = _DETAIL.fullmatch(detail)
            if match is None:
                shell.perror(f"  {printable(detail)}", style=None)
                continue
            number, reason = int(match.group(1)), match.group(2)
            line = cart.find(number)
            title = printable(line.title) if line else ""
            shell.perror(f"  #{number} {title}: {printable(reason)}", style=None)
            if "price changed" in reason:
                # Someone at a terminal is already where that advice would send them.
                elsewhere = (
                    ""
                    if shell.stdin.isatty()
                    else " (or checkout at a terminal, which shows the current prices before "
                    "asking)"
                )
                hints[f"update_cart {number} QTY accepts the new price{elsewhere}."] = None
            elif "left" in reason and "sold out" not in reason:
                hints[f"update_cart {number} QTY with fewer, or remove_from_cart {number}."] = None
            else:  # sold out, gone or one's own: no quantity would make it buyable
                hints[f"remove_from_cart {number} takes the line out."] = None
        for hint in hints:
            shell.perror(f"Hint: {hint}", style=None)
