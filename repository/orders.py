"""SQL for orders: placing one against the stock, and reading a buyer's orders or a seller's sales.

Checkout is the one place where two buyers race for the same units, so `place_order` decides
everything inside a single `BEGIN IMMEDIATE` transaction, taken after the process-wide
`WRITE_LOCK` (the same hand-off every catalogue write uses):

* every line is checked first (visible, live, not the buyer's own, price as expected, enough
  stock), so a refusal names *every* failing line, not just the first one met;
* only then is stock taken, each line with a guarded
  `UPDATE ... SET quantity = quantity - ? WHERE id = ? AND quantity >= ?`: should any row not
  change (it cannot while the write lock is held, but the guard costs nothing) the whole
  transaction rolls back, and `images.quantity`'s CHECK (>= 0) is a last line of defence;
* the order and its lines are inserted with the unit price actually charged, the title as it
  was, and the seller, so history stays true after prices change or images are purged.

All lines commit together or nothing does. Nothing here knows the wire format.

A checkout may carry the buyer's idempotency key. It is looked up first, in the same
transaction: an order the buyer already placed with that key is the answer, whatever the lines
and stock say now (the client is asking again about an order it got no answer for), and nothing
is bought. The unique index `orders_by_checkout_key` backs that up.

Histories are read a page at a time, keyed on order id (newest first, "older than order X"):
whole orders only, at most `limit` of them and `max_lines` lines, so no answer grows with a
history that anyone, even a stranger buying a free item over and over, can lengthen.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from repository.database import transaction
from repository.images import WRITE_LOCK
from util.money import format_cents


class Refusal(StrEnum):
    """Why one checkout line cannot be bought."""

    #: Missing, deleted, or someone else's private image: all look alike to a buyer, so
    #: a hidden image never reveals that it exists.
    GONE = "gone"
    OUT_OF_STOCK = "out_of_stock"
    PRICE_CHANGED = "price_changed"
    OWN_IMAGE = "own_image"


@dataclass(frozen=True, slots=True)
class WantedLine:
    image_id: int
    quantity: int
    #: The unit price the buyer saw; None accepts the current price.
    expected_price_cents: int | None = None


@dataclass(frozen=True, slots=True)
class LineFailure:
    #: 1-based position of the line in the request.
    line_no: int
    image_id: int
    refusal: Refusal
    #: A sentence for the buyer, without the image's title (the client has it).
    reason: str


class CheckoutRefused(Exception):
    """At least one line failed; nothing was written."""

    def __init__(self, failures: list[LineFailure]) -> None:
        super().__init__(f"{len(failures)} lines cannot be bought")
        self.failures = failures


@dataclass(slots=True)
class OrderLineRecord:
    image_id: int
    title: str
    quantity: int
    unit_price_cents: int
    seller: str
    buyer: str

    @property
    def total_cents(self) -> int:
        return self.quantity * self.unit_price_cents


@dataclass(slots=True)
class OrderRecord:
    id: int
    buyer: str
    created_at: float
    total_cents: int
    lines: list[OrderLineRecord] = field(default_factory=list)


def _check_line(
    number: int, line: WantedLine, row: sqlite3.Row | None, buyer_id: int
) -> LineFailure | None:
    def fail(refusal: Refusal, reason: str) -> LineFailure:
        return LineFailure(number, line.image_id, refusal, reason)

    if row is None or (row["private"] and row["owner_id"] != buyer_id):
        return fail(Refusal.GONE, "no longer available (it does not exist or is not shown to you)")
    if row["deleted_at"] is not None:
        # Its owner or an admin may have deleted it, and the row does not say which: blaming the
        # seller for an admin's deletion would be wrong.
        return fail(Refusal.GONE, "deleted, so it can no longer be bought")
    if row["owner_id"] == buyer_id:
        return fail(Refusal.OWN_IMAGE, "it is your own image; you cannot buy from yourself")
    price = row["price_cents"]
    if line.expected_price_cents is not None and price != line.expected_price_cents:
        return fail(
            Refusal.PRICE_CHANGED,
            f"price changed from {format_cents(line.expected_price_cents)} to "
            f"{format_cents(price)}",
        )
    stock = row["quantity"]
    if stock < line.quantity:
        left = "sold out" if stock == 0 else f"only {stock} left"
        return fail(Refusal.OUT_OF_STOCK, f"{left}, {line.quantity} wanted")
    return None


@dataclass(frozen=True, slots=True)
class Placed:
    order_id: int
    #: Placed by an earlier checkout with the same key; nothing was bought this time.
    earlier: bool = False


def place_order(
    conn: sqlite3.Connection,
    buyer_id: int,
    lines: Sequence[WantedLine],
    key: str | None = None,
) -> Placed:
    """Buy every line or none, or find the buyer's order already placed with `key`. Raises
    CheckoutRefused.

    Lines must name distinct images (the service refuses repeats before calling).
    """
    ids = [line.image_id for line in lines]
    now = time.time()
    with WRITE_LOCK, transaction(conn, immediate=True):
        if key is not None:
            found = conn.execute(
                "SELECT id FROM orders WHERE buyer_id = ? AND checkout_key = ?", (buyer_id, key)
            ).fetchone()
            if found is not None:
                return Placed(int(found[0]), earlier=True)
        marks = ",".join("?" * len(ids))
        rows = {
            row["id"]: row
            for row in conn.execute(
                f"SELECT id, owner_id, title, price_cents, quantity, private, deleted_at "
                f"FROM images WHERE id IN ({marks})",
                ids,
            )
        }
        failures = [
            failure
            for number, line in enumerate(lines, start=1)
            if (failure := _check_line(number, line, rows.get(line.image_id), buyer_id))
        ]
        if failures:
            raise CheckoutRefused(failures)
        for number, line in enumerate(lines, start=1):
            taken = conn.execute(
                "UPDATE images SET quantity = quantity - ? WHERE id = ? AND quantity >= ? "
                "AND deleted_at IS NULL",
                (line.quantity, line.image_id, line.quantity),
            )
            if taken.rowcount != 1:  # unreachable under the write lock; never sell short anyway
                raise CheckoutRefused(
                    [LineFailure(number, line.image_id, Refusal.OUT_OF_STOCK, "sold out meanwhile")]
                )
        total = sum(rows[line.image_id]["price_cents"] * line.quantity for line in lines)
        cursor = conn.execute(
            "INSERT INTO orders (buyer_id, total_cents, created_at, checkout_key) "
            "VALUES (?, ?, ?, ?)",
            (buyer_id, total, now, key),
        )
        order_id = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO order_lines (order_id, line_no, image_id, seller_id, title, quantity, "
            "unit_price_cents) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    order_id,
                    number,
                    line.image_id,
                    rows[line.image_id]["owner_id"],
                    rows[line.image_id]["title"],
                    line.quantity,
                    rows[line.image_id]["price_cents"],
                )
                for number, line in enumerate(lines, start=1)
            ],
        )
    return Placed(order_id)


# --- reading orders -----------------------------------------------------------------------------

_LINE_QUERY = (
    "SELECT o.id AS order_id, o.created_at, o.total_cents, b.name AS buyer, l.image_id, "
    "l.title, l.quantity, l.unit_price_cents, s.name AS seller "
    "FROM orders o JOIN order_lines l ON l.order_id = o.id "
    "JOIN users b ON b.id = o.buyer_id JOIN users s ON s.id = l.seller_id "
)


def _gather(rows: list[sqlite3.Row], *, seller_share: bool) -> list[OrderRecord]:
    """Group line rows (already ordered by order, then line) into orders.

    With `seller_share`, an order's total is the sum of the lines given (the seller's part of
    it), not the whole order's total, which includes other sellers' goods.
    """
    orders: dict[int, OrderRecord] = {}
    for row in rows:
        order = orders.get(row["order_id"])
        if order is None:
            order = orders[row["order_id"]] = OrderRecord(
                id=row["order_id"],
                buyer=row["buyer"],
                created_at=row["created_at"],
                total_cents=0 if seller_share else row["total_cents"],
            )
        line = OrderLineRecord(
            image_id=row["image_id"],
            title=row["title"],
            quantity=row["quantity"],
            unit_price_cents=row["unit_price_cents"],
            seller=row["seller"],
            buyer=row["buyer"],
        )
        order.lines.append(line)
        if seller_share:
            order.total_cents += line.total_cents
    return list(orders.values())


def order_by_id(conn: sqlite3.Connection, order_id: int) -> OrderRecord | None:
    rows = conn.execute(_LINE_QUERY + "WHERE o.id = ? ORDER BY l.line_no", (order_id,)).fetchall()
    found = _gather(rows, seller_share=False)
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class OrderPage:
    #: Newest first.
    orders: list[OrderRecord]
    #: The order id to continue below (the oldest one here) while older orders remain.
    next_before: int | None


#: `before` for a first page: above any order id SQLite will hand out.
NEWEST = 2**62


def _cut(counts: list[sqlite3.Row], limit: int, max_lines: int) -> tuple[list[int], bool]:
    """Order ids for one page out of (id, line count) rows, newest first, fetched one past
    `limit`: whole orders only, stopping before the lines would pass `max_lines` (a first order
    bigger than that still goes alone, or the page could never move on). Returns (ids, more
    remain)."""
    chosen: list[int] = []
    lines = 0
    for order_id, count in counts:
        if len(chosen) >= limit or (chosen and lines + count > max_lines):
            return chosen, True
        chosen.append(order_id)
        lines += count
    return chosen, False


def _page(
    conn: sqlite3.Connection,
    counts: list[sqlite3.Row],
    limit: int,
    max_lines: int,
    *,
    seller_id: int | None = None,
) -> OrderPage:
    ids, more = _cut(counts, limit, max_lines)
    if not ids:
        return OrderPage([], None)
    marks = ",".join("?" * len(ids))
    where = f"WHERE o.id IN ({marks}) "
    params: list[int] = list(ids)
    if seller_id is not None:
        where += "AND l.seller_id = ? "
        params.append(seller_id)
    rows = conn.execute(_LINE_QUERY + where + "ORDER BY o.id DESC, l.line_no", params).fetchall()
    orders = _gather(rows, seller_share=seller_id is not None)
    return OrderPage(orders, ids[-1] if more else None)


def orders_of_buyer(
    conn: sqlite3.Connection,
    buyer_id: int,
    *,
    before: int | None = None,
    limit: int,
    max_lines: int,
) -> OrderPage:
    """A page of a buyer's orders older than order `before`, newest first, each with all its
    lines. Paging by order id (a keyset) means orders placed meanwhile never shift a page."""
    counts = conn.execute(
        "SELECT o.id, (SELECT COUNT(*) FROM order_lines l WHERE l.order_id = o.id) "
        "FROM orders o WHERE o.buyer_id = ? AND o.id < ? ORDER BY o.id DESC LIMIT ?",
        (buyer_id, NEWEST if before is None else before, limit + 1),
    ).fetchall()
    return _page(conn, counts, limit, max_lines)


def sales_of_seller(
    conn: sqlite3.Connection,
    seller_id: int,
    *,
    before: int | None = None,
    limit: int,
    max_lines: int,
) -> OrderPage:
    """A page of the orders that bought a seller's images, older than order `before`, newest
    first, with only that seller's lines (which alone count towards `max_lines`)."""
    counts = conn.execute(
        "SELECT order_id, COUNT(*) FROM order_lines WHERE seller_id = ? AND order_id < ? "
        "GROUP BY order_id ORDER BY order_id DESC LIMIT ?",
        (seller_id, NEWEST if before is None else before, limit + 1),
    ).fetchall()
    return _page(conn, counts, limit, max_lines, seller_id=seller_id)
