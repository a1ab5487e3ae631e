"""Order history a page at a time, against a real server.py and the real client.py.

`ListOrders` and `ListSales` once answered a whole history in one frame: 421 free
hundred-line orders with 800-byte titles made a 37 MB frame, above the client's 32 MiB limit,
and both lists became unreadable for good. These tests read long histories page by page (no
order twice, none missed, newest first), check that no page passes its bound whatever the
orders hold, and drive `orders` / `sales` through their pages from the shell.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from rich.cells import cell_len

from protocol import codec
from protocol.catalog import (
    ORDER_PAGE_LINES,
    CartLine,
    Checkout,
    ListOrders,
    ListSales,
    Order,
    OrderLine,
    OrderList,
    OrderPlaced,
)
from protocol.errors import ErrorCode
from protocol.limits import MAX_ORDER_LINES
from protocol.messages import PROTOCOL_VERSION, CreateUser, Error, Session, UserInfo, Welcome
from service.context import ServerConfig
from shell.connection import ServerConnection
from tests.servers import LoggedInShell, ServerProcess, json_lines, run_client
from tests.test_images_server import jpeg, unique, upload_many
from tests.wire import read_response, send_message, tls_socket

PASSWORD = "correct horse"
#: Four bytes of UTF-8 a character: the longest title the wire takes is 800 bytes.
WIDE_TITLE = "\U0001f600" * 200
#: Far below the frame limit: what the worst page may encode to.
PAGE_BYTES_BOUND = 2 * 1024 * 1024
_seeds = iter(range(700_000, 800_000))


# --- the bound, without a server -----------------------------------------------------------------


def test_an_order_cannot_hold_more_lines_than_a_page() -> None:
    """A page ends before the order that would pass ORDER_PAGE_LINES but always takes one
    whole order; that is only bounded while an order is smaller than a page."""
    lines = next(f for f in msgspec.inspect.type_info(Checkout).fields if f.name == "lines")
    assert isinstance(lines.type, msgspec.inspect.ListType)
    assert lines.type.max_length == MAX_ORDER_LINES
    assert MAX_ORDER_LINES <= ORDER_PAGE_LINES


def test_the_largest_possible_page_is_far_below_the_frame_limit() -> None:
    """Every field at its largest: ORDER_PAGE_LINES lines with 800-byte titles and names of 64
    four-byte characters (the wire allows 64; the server takes 32 ASCII ones), the biggest
    ids and prices, split into one-line orders so the order overhead counts too."""
    name = "\U0001f600" * 64
    big = 2**53
    orders = [
        Order(
            id=big,
            created_at=1e12 + 0.123456789,
            total_cents=big,
            buyer=name,
            lines=[
                OrderLine(
                    image_id=big,
                    title=WIDE_TITLE,
                    quantity=big,
                    unit_price_cents=big,
                    seller=name,
                    buyer=name,
                )
            ],
        )
        for _ in range(ORDER_PAGE_LINES)
    ]
    size = len(codec.encode(OrderList(id=big, orders=orders, next_before=big)))
    assert size < PAGE_BYTES_BOUND
    assert size * 16 < ServerConfig.max_frame_bytes


# --- over the wire -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("order-pages"), ["--no-colours"]).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("order-page-clients")


def connection(server: ServerProcess, home: Path, name: str) -> ServerConnection:
    return server.user_connection(home, name, PASSWORD)


def free_items(seller: ServerConnection, count: int, title: str = "free thing") -> list[int]:
    datas = [jpeg(next(_seeds), (16, 16)) for _ in range(count)]
    done = upload_many(seller, datas, title=title, price_cents=0, quantity=1_000_000)
    return [uploaded.image_id for uploaded in done]


def buy(buyer: ServerConnection, ids: list[int]) -> int:
    lines = [CartLine(image_id=number, quantity=1) for number in ids]
    return buyer.call(Checkout(id=0, lines=lines), OrderPlaced).order.id


Request = Callable[[int | None, int], ListOrders | ListSales]


def read_all(
    conn: ServerConnection, make: Request, limit: int, before: int | None = None
) -> list[OrderList]:
    """Every page from `before` on, following `next_before` to the end."""
    pages: list[OrderList] = []
    while True:
        page = conn.call(make(before, limit), OrderList)
        pages.append(page)
        if page.next_before is None:
            return pages
        assert page.orders, "a page that says more remain must hold something"
        assert page.next_before == page.orders[-1].id
        before = page.next_before
        assert len(pages) < 1000, "paging does not end"


def orders_request(before: int | None, limit: int) -> ListOrders:
    return ListOrders(id=0, before=before, limit=limit)


def sales_request(before: int | None, limit: int) -> ListSales:
    return ListSales(id=0, before=before, limit=limit)


def ids_of(pages: list[OrderList]) -> list[int]:
    return [order.id for page in pages for order in page.orders]


def test_a_long_history_reads_page_by_page_newest_first(server: ServerProcess, home: Path) -> None:
    seller = connection(server, home, unique("seller"))
    buyer = connection(server, home, unique("buyer"))
    other = connection(server, home, unique("buyer"))
    try:
        ids = free_items(seller, 3)
        placed = [buy(buyer, ids[: 1 + k % 3]) for k in range(23)]
        elsewhere = buy(other, ids)  # someone else's order: never in this buyer's pages
        newest_first = sorted(placed, reverse=True)

        for limit in (1, 5, 7, 23, 500):
            pages = read_all(buyer, orders_request, limit)
            assert ids_of(pages) == newest_first, limit
            assert all(len(page.orders) <= limit for page in pages)
            assert len(pages) == -(-len(placed) // limit), limit
            # each order whole, with all its lines
            assert [len(o.lines) for p in pages for o in p.orders] == [
                1 + k % 3 for k in reversed(range(23))
            ]

        # the seller sees both buyers' orders, in pages of 4, each once, newest first
        sales = read_all(seller, sales_request, 4)
        assert ids_of(sales) == sorted([*placed, elsewhere], reverse=True)
        assert [len(page.orders) for page in sales] == [4] * 6
    finally:
        for conn in (seller, buyer, other):
            conn.close()


def test_orders_placed_meanwhile_never_shift_a_page(server: ServerProcess, home: Path) -> None:
    seller = connection(server, home, unique("seller"))
    buyer = connection(server, home, unique("buyer"))
    try:
        (item,) = free_items(seller, 1)
        placed = [buy(buyer, [item]) for _ in range(6)]
        first = buyer.call(ListOrders(id=0, limit=2), OrderList)
        later = [buy(buyer, [item]) for _ in range(3)]  # newer than everything on any page
        assert first.next_before is not None
        rest = read_all(buyer, orders_request, 2, first.next_before)
        seen = [order.id for order in first.orders] + ids_of(rest)
        assert seen == sorted(placed, reverse=True)
        assert ids_of(read_all(buyer, orders_request, 4))[:3] == sorted(later, reverse=True)
        # past the oldest order there is nothing, and nothing more
        empty = buyer.call(ListOrders(id=0, before=min(placed)), OrderList)
        assert empty.orders == [] and empty.next_before is None
    finally:
        seller.close()
        buyer.close()


def test_paging_arguments_are_checked(server: ServerProcess, home: Path) -> None:
    """Out-of-range pages are refused by the wire types, naming the field."""
    name = unique("buyer")
    connection(server, home, name).close()
    sock = tls_socket(server)
    try:
        send_message(sock, {"type": "Hello", "id": 1, "protocol": PROTOCOL_VERSION})
        send_message(sock, {"type": "Login", "id": 2, "name": name, "password": PASSWORD})
        assert isinstance(read_response(sock), Welcome)
        assert isinstance(read_response(sock), Session)
        for field, bad in (("limit", 0), ("limit", 501), ("before", 0), ("before", -3)):
            for kind in ("ListOrders", "ListSales"):
                send_message(sock, {"type": kind, "id": 7, field: bad})
                reply = read_response(sock)
                assert isinstance(reply, Error), reply
                assert (reply.id, reply.code) == (7, ErrorCode.BAD_REQUEST)
                assert f"$.{field}" in reply.message
    finally:
        sock.close()


def test_a_huge_history_stays_readable_within_the_page_bound(
    server: ServerProcess, home: Path
) -> None:
    """The reproduction at full size: 421 free hundred-line orders with 800-byte titles, once
    a 37 MB answer that no client could receive. Pages stop at ORDER_PAGE_LINES lines however
    many orders were asked for, stay far below the frame limit, and read back the whole
    history for the buyer and for the seller."""
    seller = connection(server, home, unique("seller"))
    buyer = connection(server, home, unique("buyer"))
    try:
        ids = free_items(seller, 100, title=WIDE_TITLE)
        placed = [buy(buyer, ids) for _ in range(421)]
        per_page = ORDER_PAGE_LINES // 100
        for conn, make in ((buyer, orders_request), (seller, sales_request)):
            pages = read_all(conn, make, 500)
            assert ids_of(pages) == sorted(placed, reverse=True)
            assert [len(page.orders) for page in pages] == [per_page] * 42 + [1]
            sizes = [len(codec.encode(page)) for page in pages]
            assert max(sizes) < PAGE_BYTES_BOUND
            assert sum(sizes) > ServerConfig.max_frame_bytes  # what one answer used to be
            for page in pages:
                assert sum(len(order.lines) for order in page.orders) <= ORDER_PAGE_LINES
                assert all(line.title == WIDE_TITLE for o in page.orders for line in o.lines)
    finally:
        seller.close()
        buyer.close()


# --- the shell -----------------------------------------------------------------------------------


def shell(server: ServerProcess, home: Path, name: str) -> LoggedInShell:
    """One user's client.py runs: each call logs in and runs the commands given."""
    (home / name).mkdir(parents=True, exist_ok=True)
    return LoggedInShell(server, name, home / name, PASSWORD)


def test_the_shell_pages_through_orders_and_sales(server: ServerProcess, home: Path) -> None:
    seller_name, buyer_name = unique("seller"), unique("buyer")
    seller = connection(server, home, seller_name)
    buyer = connection(server, home, buyer_name)
    try:
        ids = free_items(seller, 2)
        placed = [buy(buyer, ids[: 1 + k % 2]) for k in range(5)]
    finally:
        seller.close()
        buyer.close()
    newest_first = sorted(placed, reverse=True)
    shopper, merchant = shell(server, home, buyer_name), shell(server, home, seller_name)

    code, out, err = shopper(
        "orders --json --batch 2",
        "orders --json --older",
        "orders --json --older",
        "orders --json --older",
    )
    assert code == 0, out + err
    assert [row["id"] for row in json_lines(out) if "lines" in row] == newest_first
    assert "orders --older" in err and "older" not in out.lower()
    assert "Already at the oldest of your orders." in err

    code, out, err = shopper("orders --batch 3", "orders --older")
    assert code == 0, out + err
    assert f"3 orders on this page (orders #{newest_first[0]} to #{newest_first[2]})" in out
    assert f"`orders --before {newest_first[2]}`" in out
    assert "2 orders on this page" in out and "End of your orders" in out
    for number in newest_first:
        assert f"#{number}" in out

    code, out, err = shopper(f"orders --json --before {newest_first[1]}")
    assert code == 0, out + err
    assert [row["id"] for row in json_lines(out)] == newest_first[2:]

    code, out, err = shopper("orders --older")
    assert code != 0 and "run `orders` first" in err, out + err
    code, out, err = shopper("orders --older --before 3")
    assert code != 0 and "not allowed with argument" in err, out + err
    code, out, err = shopper("orders --batch 0")
    assert code != 0 and "a page holds 1 to 500 orders, not 0" in err, out + err

    code, out, err = merchant(
        "sales --json --batch 2", "sales --json --older", "sales --json --older"
    )
    assert code == 0, out + err
    rows = json_lines(out)
    sold = [row for row in rows if "order_id" in row]
    totals = [row for row in rows if "orders" in row]
    order_ids = list(dict.fromkeys(row["order_id"] for row in sold))
    assert order_ids == newest_first
    assert [total["orders"] for total in totals] == [2, 2, 1]
    assert sum(int(str(total["units"])) for total in totals) == sum(1 + k % 2 for k in range(5))
    assert "sales --older" in err

    code, out, err = merchant("sales --batch 4", "sales --older")
    assert code == 0, out + err
    assert "sold in 4 orders on this page" in out and "Older sales remain" in out
    assert "sold in 1 order on this page" in out and "End of your sales" in out


def test_a_short_history_reads_as_before(server: ServerProcess, home: Path) -> None:
    """One page: no paging notes, the totals said "in all" as they always were."""
    name = unique("buyer")
    conn = server.connect(home)
    conn.call(CreateUser(id=0, name=name, password=PASSWORD), UserInfo)
    conn.close()
    code, out, err = shell(server, home, name)("orders", "sales", "orders --json")
    assert code == 0, out + err
    assert "No orders yet" in out and "Nothing of yours has been sold yet." in out
    assert "older" not in (out + err).lower()


@pytest.mark.parametrize("width", [50, 44])
def test_narrow_terminals_never_cut_a_price_or_total(
    server: ServerProcess, home: Path, width: int
) -> None:
    """QA: at 50 and 44 columns `orders` and `sales` showed prices and totals as "1…" and
    gave title and qty no width at all; they now fall back to one record per line, as
    listings do."""
    seller_name, buyer_name = unique("seller"), unique("buyer")
    seller = connection(server, home, seller_name)
    buyer = connection(server, home, buyer_name)
    try:
        title = "Wide-brimmed straw hat with a ribbon"
        (image,) = upload_many(
            seller, [jpeg(next(_seeds), (16, 16))], title=title, price_cents=123456, quantity=9
        )
        lines = [CartLine(image_id=image.image_id, quantity=3)]
        order = buyer.call(Checkout(id=0, lines=lines), OrderPlaced).order.id
    finally:
        seller.close()
        buyer.close()
    for name, command in ((buyer_name, "orders"), (seller_name, "sales")):
        (home / name).mkdir(parents=True, exist_ok=True)
        done = run_client(
            server,
            f"login {name}",
            command,
            config_dir=home / name,
            password=PASSWORD,
            extra_env={"COLUMNS": str(width)},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "…" not in out, out
        assert max(cell_len(line) for line in out.splitlines()) <= width, out
        for number in ("1234.56", "3703.68", f"#{order}", str(image.image_id)):
            assert re.search(rf"(^|\s){re.escape(number)}(\s|$)", out, re.MULTILINE), (number, out)
        assert re.search(r"(^|\s)qty\s+3(\s|$)", out, re.MULTILINE), out
        assert "Wide-brimmed" in out and "ribbon" in out, out  # the title, folded but whole
