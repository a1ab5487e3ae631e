"""Checkout, a buyer's orders and a seller's sales. (Carts live on the client; `GetImages`, which
they use for fresh prices and stock, is answered by service.images.)

Checkout contract:

* The lines must name distinct images (a repeat is BAD_REQUEST: the client merges them).
* Everything is decided in one transaction (repository.orders.place_order): every line must be
  visible to the buyer (someone else's private image is treated exactly like a missing one),
  live, not the buyer's own, priced as `expected_price_cents` when that is given, and in stock.
  Either the order is recorded with every line and stock decremented, or nothing changes.
* A `key` (the client's idempotency key) makes a checkout sent again harmless: when the buyer
  already has an order placed with that key, that order is the answer, with `placed_earlier`
  set, and nothing is checked or bought (the lines sent are not compared: the client asks
  about the order it got no answer for). Keys are per buyer: another buyer's key never matches.
* Buying one's own image is refused: stock is the seller's to set with `update_image`, and an
  "order" from oneself would only muddle the sales figures.
* A refusal is one `Error` whose `details` hold one sentence per failing line, in request
  order, each starting `image <id>: ` so a client can match it to its line. Its code is the
  kind of problem when all failing lines share it, and CONFLICT when they differ:

  | every failing line is...            | code          |
  | ---                                 | ---           |
  | short of stock                      | OUT_OF_STOCK  |
  | gone (missing, deleted, hidden)     | NOT_FOUND     |
  | priced differently than expected    | CONFLICT      |
  | the buyer's own image               | FORBIDDEN     |
  | a mix of the above                  | CONFLICT      |

`ListOrders` answers the user's orders, newest first, with all lines. `ListSales` answers the
orders that bought the user's images, newest first, each with only that user's lines, its
`buyer` filled in, and `total_cents` the sum of those lines (the seller's takings).

Both answer one page: at most `limit` orders (capped at `max_batch`, as listings are) and
ORDER_PAGE_LINES lines, older than `before`, with `next_before` set while older ones remain.
A history once went out whole, and 421 free hundred-line orders made a 37 MB frame that no
client could read again; a page's worst case is now 1.73 MB whatever the history holds.
The page is encoded in the worker that read it, as listing batches are, so the event loop only
writes bytes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from protocol import codec, framing
from protocol.catalog import (
    ORDER_PAGE_LINES,
    Checkout,
    ListOrders,
    ListSales,
    Order,
    OrderLine,
    OrderList,
    OrderPlaced,
)
from protocol.errors import ErrorCode, VitrineError
from repository import orders as repo
from service.context import RequestContext
from service.registry import Frames, route

_CODES = {
    repo.Refusal.OUT_OF_STOCK: ErrorCode.OUT_OF_STOCK,
    repo.Refusal.GONE: ErrorCode.NOT_FOUND,
    repo.Refusal.PRICE_CHANGED: ErrorCode.CONFLICT,
    repo.Refusal.OWN_IMAGE: ErrorCode.FORBIDDEN,
}


def order_message(record: repo.OrderRecord) -> Order:
    return Order(
        id=record.id,
        created_at=record.created_at,
        total_cents=record.total_cents,
        buyer=record.buyer,
        lines=[
            OrderLine(
                image_id=line.image_id,
                title=line.title,
                quantity=line.quantity,
                unit_price_cents=line.unit_price_cents,
                seller=line.seller,
                buyer=line.buyer,
            )
            for line in record.lines
        ],
    )


def refusal_error(failures: list[repo.LineFailure], line_count: int) -> VitrineError:
    kinds = {failure.refusal for failure in failures}
    code = _CODES[kinds.pop()] if len(kinds) == 1 else ErrorCode.CONFLICT
    failed = len(failures)
    if line_count == 1:
        what = "the line cannot be bought as it is"
    elif failed == 1:
        what = f"1 of {line_count} lines cannot be bought as it is"
    else:
        what = f"{failed} of {line_count} lines cannot be bought as they are"
    return VitrineError(
        code,
        f"Nothing was bought: {what}.",
        [f"image {failure.image_id}: {failure.reason}" for failure in failures],
    )


@route(Checkout)
async def checkout(ctx: RequestContext, request: Checkout) -> OrderPlaced:
    seen: set[int] = set()
    for line in request.lines:
        if line.image_id in seen:
            raise VitrineError(
                ErrorCode.BAD_REQUEST,
                f"Image {line.image_id} appears on two lines; send each image once with the "
                "total quantity.",
            )
        seen.add(line.image_id)
    wanted = [
        repo.WantedLine(line.image_id, line.quantity, line.expected_price_cents)
        for line in request.lines
    ]
    buyer = ctx.user.id

    def place(conn: sqlite3.Connection) -> tuple[repo.OrderRecord | None, bool]:
        """Place the order (or find the one placed with its key) and read it back: one trip to
        the executor."""
        placed = repo.place_order(conn, buyer, wanted, request.key)
        return repo.order_by_id(conn, placed.order_id), placed.earlier

    try:
        record, earlier = await ctx.services.quick_db_call(place)
    except repo.CheckoutRefused as refused:
        raise refusal_error(refused.failures, len(wanted)) from None
    assert record is not None
    return OrderPlaced(id=request.id, order=order_message(record), placed_earlier=earlier)


def _page_frames(
    conn: sqlite3.Connection,
    read: Callable[..., repo.OrderPage],
    user_id: int,
    request_id: int,
    before: int | None,
    limit: int,
) -> Frames:
    page = read(conn, user_id, before=before, limit=limit, max_lines=ORDER_PAGE_LINES)
    answer = OrderList(
        id=request_id,
        orders=[order_message(record) for record in page.orders],
        next_before=page.next_before,
    )
    return Frames(framing.frame(codec.encode(answer)))


def _limit(ctx: RequestContext, limit: int) -> int:
    return min(limit, ctx.services.config.max_batch)


@route(ListOrders)
async def list_orders(ctx: RequestContext, request: ListOrders) -> Frames:
    return await ctx.services.db_call(
        _page_frames,
        repo.orders_of_buyer,
        ctx.user.id,
        request.id,
        request.before,
        _limit(ctx, request.limit),
    )


@route(ListSales)
async def list_sales(ctx: RequestContext, request: ListSales) -> Frames:
    return await ctx.services.db_call(
        _page_frames,
        repo.sales_of_seller,
        ctx.user.id,
        request.id,
        request.before,
        _limit(ctx, request.limit),
    )
