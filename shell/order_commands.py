"""orders and sales: a user's order history as buyer and as seller, a page at a time.

Both show one page, newest first; `--older` continues below the last page this shell showed,
and `--before ID` (for scripts, which run each command in a fresh process) starts below an order
id. They are flags rather than a turn for `more`, which continues image listings and keeps its
own latest one; a history of one page says nothing about paging, so it reads as it did before
pages existed. The orders themselves are placed by `checkout` (shell.cart_commands).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cmd2
from rich.table import Table
from rich.text import Text

from protocol.catalog import ListOrders, ListSales, Order, OrderLine, OrderList
from protocol.limits import MAX_BATCH
from shell import listing
from shell.app import (
    CART,
    CommandFailed,
    VitrineShell,
    id_argument,
    parser,
    whole_number,
    write_json_lines,
)
from shell.text import plural, printable
from util.money import format_cents


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _line_total(line: OrderLine) -> str:
    return format_cents(line.quantity * line.unit_price_cents)


#: Columns whose cells are numbers or ids, set flush right.
_RIGHT = frozenset({"order", "image", "qty", "price", "total"})
#: Columns of words (folded down to WORDS_LEAST cells); every other one is never cut nor wrapped.
_WORDS = frozenset({"title", "seller", "buyer"})
#: Fewest cells a title, seller or buyer folds to before the table gives way to records.
WORDS_LEAST = 8

Cell = Text | str


@dataclass
class HistoryRow:
    """One row of `orders` or `sales`, in the table's column order, and as a record."""

    cells: list[Cell]
    #: (label, value) lines of the record form, which leaves out what a table row leaves blank
    fields: list[tuple[str, Cell]]
    #: a rule under the row in the table (under an order's total)
    end_section: bool = False
    #: a rule under the record (False between the lines of one order)
    record_end: bool = True


def _history_table(names: Sequence[str], rows: Sequence[HistoryRow], width: int) -> Table:
    """The table `orders` and `sales` show: numbers flush right and whole, only words fold.

    As in listings, a terminal too narrow for that even without the lines between columns gets
    one record after another, a field a line: rich would otherwise cut prices and totals ("1…")
    and squeeze titles to nothing.
    """
    columns = [
        listing.Column(
            name,
            [row.cells[index] for row in rows],
            justify="right" if name in _RIGHT else "left",
            least=WORDS_LEAST if name in _WORDS else None,
            weight=2 if name == "title" else 1,
        )
        for index, name in enumerate(names)
    ]
    fit = listing.first_fit((False, True), width, lambda compact: (columns, compact, None))
    if fit is None:
        return listing.record_table(
            [row.fields for row in rows], ruled=[row.record_end for row in rows]
        )
    table = listing.column_table(columns, fit.widths, compact=fit.shape)
    for row in rows:
        table.add_row(*row.cells, end_section=row.end_section)
    return table


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "created_at": order.created_at,
        "date": _iso(order.created_at),
        "total": format_cents(order.total_cents),
        "lines": [
            {
                "image_id": line.image_id,
                "title": line.title,
                "seller": line.seller,
                "quantity": line.quantity,
                "unit_price": format_cents(line.unit_price_cents),
                "line_total": _line_total(line),
            }
            for line in order.lines
        ],
    }


# --- order history pages -------------------------------------------------------------------------

#: Orders per page of `orders` and `sales` unless --batch says (as a listing's first batch).
PAGE_SIZE = listing.FIRST_BATCH


@dataclass(frozen=True)
class HistoryKind:
    """What differs between `orders` and `sales` when paging."""

    #: The command's name, which is also what it lists.
    command: str
    request: type[ListOrders] | type[ListSales]


ORDERS = HistoryKind("orders", ListOrders)
SALES = HistoryKind("sales", ListSales)


@dataclass(frozen=True)
class HistoryPage:
    """Where a page ended: `--older` asks for what lies below it, in pages of the same size."""

    next_before: int | None
    batch: int


@dataclass(frozen=True)
class ShownPage:
    """A page as asked for: what it continued from decides what is said around it."""

    answer: OrderList
    #: The `before` it was asked with: None for the newest page.
    before: int | None
    batch: int

    @property
    def paged(self) -> bool:
        """False for a history of one page, which then reads as it did before paging."""
        return self.before is not None or self.answer.next_before is not None


order_id = id_argument("order")


def page_size(text: str) -> int:
    """listing.batch_size's range, in a message about orders rather than images."""
    try:
        value = whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of orders") from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"a page holds 1 to {MAX_BATCH} orders, not {value}")
    return value


def add_history_arguments(parser: argparse.ArgumentParser, noun: str) -> None:
    """The paging flags `orders` and `sales` share."""
    parser.add_argument(
        "--batch",
        type=page_size,
        metavar="N",
        help=f"{noun} per page (default {PAGE_SIZE}; --older keeps the previous page's size)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--older",
        action="store_true",
        help="the next page: what is older than the last page shown",
    )
    where.add_argument(
        "--before",
        type=order_id,
        metavar="ID",
        help=f"start below order ID: only {noun} older than it (for scripts)",
    )


def _note(shell: cmd2.Cmd, json: bool, message: str) -> None:
    """A sentence for people: on stdout under a table, on stderr when stdout carries JSON."""
    if json:
        shell.perror(message, style=None)
    else:
        shell.poutput(message)


def _span(orders: list[Order]) -> str:
    """The order ids a page covers, newest first."""
    newest, oldest = orders[0].id, orders[-1].id
    return f"order #{newest}" if newest == oldest else f"orders #{newest} to #{oldest}"


# --- the commands --------------------------------------------------------------------------------


class OrderHistoryCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = CART

    def __init__(self) -> None:
        super().__init__()
        #: Where the last page of `orders` and of `sales` ended, per user, for `--older`.
        self._pages: dict[tuple[str, str], HistoryPage] = {}

    def _history_page(self, kind: HistoryKind, args: argparse.Namespace) -> ShownPage | None:
        """Ask for the page the flags name and remember where it ended for `--older`; None
        when `--older` has nothing left to show (which has been said)."""
        shell = self._cmd
        key = (shell.session.user or "", kind.command)
        previous = self._pages.get(key)
        batch = args.batch or (previous.batch if args.older and previous else PAGE_SIZE)
        before: int | None = args.before
        if args.older:
            if previous is None:
                name = kind.command
                raise CommandFailed(
                    f"There is no page of {name} to continue yet: run `{name}` first."
                )
            if previous.next_before is None:
                _note(shell, args.json, f"Already at the oldest of your {kind.command}.")
                return None
            before = previous.next_before
        request = kind.request(id=0, before=before, limit=batch)
        answer = shell.session.call(request, OrderList)
        self._pages[key] = HistoryPage(answer.next_before, batch)
        return ShownPage(answer, before, batch)

    def _history_end(self, kind: HistoryKind, page: ShownPage, *, json: bool) -> None:
        """Where this page sits in the history: said only when there is more than one page,
        so a short history reads exactly as it did before paging."""
        older = page.answer.next_before
        if older is not None:
            _note(
                self._cmd,
                json,
                f"Older {kind.command} remain: `{kind.command} --older` shows the next "
                f"{page.batch}, or `{kind.command} --before {older}`.",
            )
        elif page.before is not None and page.answer.orders:
            _note(self._cmd, json, f"End of your {kind.command}: there are none older.")

    orders_parser = parser(
        "List your orders, newest first, with their lines and totals, a page at a time "
        f"({PAGE_SIZE} orders unless --batch says): --older continues with older ones."
    )
    orders_parser.add_argument(
        "--json", action="store_true", help="one JSON object per order per line, with its lines"
    )
    add_history_arguments(orders_parser, "orders")

    @cmd2.with_argparser(orders_parser)
    def do_orders(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        page = self._history_page(ORDERS, args)
        if page is None:
            return
        answer, before, paged = page.answer, page.before, page.paged
        if args.json:
            write_json_lines(shell, [order_json(order) for order in answer.orders])
            self._history_end(ORDERS, page, json=True)
            return
        if not answer.orders:
            shell.poutput(
                "No orders yet: add_to_cart, then checkout."
                if before is None
                else f"You have no orders older than #{before}."
            )
            return
        rows: list[HistoryRow] = []
        for order in answer.orders:
            for number, line in enumerate(order.lines):
                first = number == 0
                title, seller = Text(printable(line.title)), Text(printable(line.seller))
                qty, price = str(line.quantity), format_cents(line.unit_price_cents)
                total = _line_total(line)
                head: list[tuple[str, Cell]] = (
                    [
                        ("order", Text(f"#{order.id}", style="bold")),
                        ("date", _when(order.created_at)),
                    ]
                    if first
                    else []
                )
                rows.append(
                    HistoryRow(
                        [
                            f"#{order.id}" if first else "",
                            _when(order.created_at) if first else "",
                            str(line.image_id),
                            title,
                            seller,
                            qty,
                            price,
                            total,
                        ],
                        [
                            *head,
                            ("image", str(line.image_id)),
                            ("title", title),
                            ("seller", seller),
                            ("qty", qty),
                            ("price", price),
                            ("total", total),
                        ],
                        record_end=False,
                    )
                )
            order_total = Text(format_cents(order.total_cents), style="bold")
            rows.append(
                HistoryRow(
                    ["", "", "", Text("order total", style="bold"), "", "", "", order_total],
                    [("order total", order_total)],
                    end_section=True,
                )
            )
        names = ("order", "date", "image", "title", "seller", "qty", "price", "total")
        table = _history_table(names, rows, listing.terminal_columns())
        shell.poutput(table, soft_wrap=False)
        spent = format_cents(sum(order.total_cents for order in answer.orders))
        count = plural(len(answer.orders), "order")
        if paged:
            span = _span(answer.orders)
            shell.poutput(f"{count} on this page ({span}), {spent}.")
        else:
            shell.poutput(f"{count}, {spent} in all.")
        self._history_end(ORDERS, page, json=False)

    sales_parser = parser(
        "What has been sold of your images: one row per order line (when, buyer, title, "
        "quantity, unit price, line total), then the totals; a page of orders at a time "
        f"({PAGE_SIZE} unless --batch says), newest first: --older continues with older ones."
    )
    sales_parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per sold line, then one with the totals (of this page); a page "
        "with nothing sold on it prints no line",
    )
    add_history_arguments(sales_parser, "orders")

    @cmd2.with_argparser(sales_parser)
    def do_sales(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        page = self._history_page(SALES, args)
        if page is None:
            return
        answer, before, paged = page.answer, page.before, page.paged
        rows = [(order, line) for order in answer.orders for line in order.lines]
        units = sum(line.quantity for _, line in rows)
        revenue = sum(order.total_cents for order in answer.orders)
        if args.json and not answer.orders:
            # An empty page is no line at all, not a totals line of zeros: a script that
            # wants every page loops until a call prints nothing (as `orders --json` does,
            # and listings: docs/shell.md). `view_cart` always has its totals because a cart
            # is not paged. The help and docs/shell.md's table say so, since a reader of
            # "then one totals object" alone expected zeros (QA, session 22).
            return
        if args.json:
            values = [
                {
                    "order_id": order.id,
                    "created_at": order.created_at,
                    "date": _iso(order.created_at),
                    "buyer": order.buyer,
                    "image_id": line.image_id,
                    "title": line.title,
                    "quantity": line.quantity,
                    "unit_price": format_cents(line.unit_price_cents),
                    "line_total": _line_total(line),
                }
                for order, line in rows
            ]
            totals = {"total": format_cents(revenue), "units": units, "orders": len(answer.orders)}
            write_json_lines(shell, [*values, totals])
            self._history_end(SALES, page, json=True)
            return
        if not rows:
            shell.poutput(
                "Nothing of yours has been sold yet."
                if before is None
                else f"Nothing of yours was sold before order #{before}."
            )
            return
        names = ("date", "order", "buyer", "image", "title", "qty", "price", "total")
        history: list[HistoryRow] = []
        for order, line in rows:
            cells: list[Cell] = [
                _when(order.created_at),
                f"#{order.id}",
                Text(printable(order.buyer)),
                str(line.image_id),
                Text(printable(line.title)),
                str(line.quantity),
                format_cents(line.unit_price_cents),
                _line_total(line),
            ]
            history.append(HistoryRow(cells, list(zip(names, cells, strict=True))))
        table = _history_table(names, history, listing.terminal_columns())
        shell.poutput(table, soft_wrap=False)
        sold = f"{plural(units, 'item')} sold in {plural(len(answer.orders), 'order')}"
        if paged:
            shell.poutput(f"{sold} on this page ({_span(answer.orders)}), {format_cents(revenue)}.")
        else:
            shell.poutput(f"{sold}, {format_cents(revenue)} in all.")
        self._history_end(SALES, page, json=False)
