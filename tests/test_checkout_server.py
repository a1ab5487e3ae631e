"""Checkout, orders and sales over the wire against a real server.py: all lines or none, reasons
per line, privacy, and races between many buyers with their own connections."""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.catalog import (
    CartLine,
    Checkout,
    DeleteImage,
    GetImages,
    Images,
    ImageUpdated,
    ListOrders,
    ListSales,
    OrderList,
    OrderPlaced,
    UpdateImage,
)
from protocol.errors import ErrorCode, VitrineError
from repository.database import migrate
from repository.migrations import MIGRATIONS
from service.orders import _CODES as REFUSAL_CODES
from shell.cart_commands import KEY_SETTLING_REFUSALS
from shell.connection import ServerConnection
from tests.servers import ServerProcess
from tests.test_images_server import jpeg, unique, upload

BUYERS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("checkout-server")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients")


@pytest.fixture(scope="module")
def buyer_names() -> list[str]:
    return [unique("buyer") for _ in range(BUYERS)]


@pytest.fixture
def seller(server: ServerProcess, home: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(home, unique("seller"))
    yield conn
    conn.close()


@pytest.fixture
def buyer(server: ServerProcess, home: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(home, unique("buyer"))
    yield conn
    conn.close()


_seeds = iter(range(10_000, 1_000_000))


def item(conn: ServerConnection, price: int, stock: int, **fields: object) -> int:
    title = fields.pop("title", f"item {price}/{stock}")
    return upload(
        conn, jpeg(next(_seeds)), title=title, price_cents=price, quantity=stock, **fields
    ).image_id


def stock_of(conn: ServerConnection, *ids: int) -> dict[int, int]:
    answer = conn.call(GetImages(id=0, image_ids=list(ids)), Images)
    return {image.id: image.quantity for image in answer.items}


def checkout(conn: ServerConnection, *lines: tuple[int, int] | tuple[int, int, int]) -> OrderPlaced:
    cart = [
        CartLine(image_id=line[0], quantity=line[1], expected_price_cents=(line[2:] or (None,))[0])
        for line in lines
    ]
    return conn.call(Checkout(id=0, lines=cart), OrderPlaced)


def refusal(conn: ServerConnection, *lines: tuple[int, int] | tuple[int, int, int]) -> VitrineError:
    with pytest.raises(VitrineError) as caught:
        checkout(conn, *lines)
    return caught.value


# --- one buyer -----------------------------------------------------------------------------------


def test_checkout_records_the_order_and_takes_the_stock(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    dress = item(seller, 1250, 3, title="Red dress")
    hat = item(seller, 500, 1, title="Hat")
    placed = checkout(buyer, (dress, 2, 1250), (hat, 1))
    order = placed.order
    assert order.total_cents == 2 * 1250 + 500
    assert [(line.image_id, line.quantity, line.unit_price_cents) for line in order.lines] == [
        (dress, 2, 1250),
        (hat, 1, 500),
    ]
    assert [line.title for line in order.lines] == ["Red dress", "Hat"]
    assert stock_of(buyer, dress, hat) == {dress: 1, hat: 0}

    # A later price change does not rewrite history.
    seller.call(UpdateImage(id=0, image_id=dress, price_cents=9999, title="Renamed"))
    history = buyer.call(ListOrders(id=0), OrderList).orders
    assert [past.id for past in history] == [order.id]
    assert history[0].total_cents == order.total_cents
    assert [line.unit_price_cents for line in history[0].lines] == [1250, 500]
    assert history[0].lines[0].title == "Red dress"
    sales = seller.call(ListSales(id=0), OrderList).orders
    assert [sale.id for sale in sales] == [order.id]
    assert sales[0].buyer == history[0].buyer
    assert sales[0].total_cents == order.total_cents


def test_orders_and_sales_are_each_users_own(server: ServerProcess, home: Path) -> None:
    first_name, second_name = unique("seller"), unique("seller")
    first = server.user_connection(home, first_name)
    second = server.user_connection(home, second_name)
    shopper = server.user_connection(home, unique("buyer"))
    lurker = server.user_connection(home, unique("buyer"))
    try:
        a = item(first, 100, 5)
        b = item(second, 700, 5)
        order = checkout(shopper, (a, 2), (b, 1)).order
        assert [line.seller for line in order.lines] == [first_name, second_name]
        first_sales = first.call(ListSales(id=0), OrderList).orders
        second_sales = second.call(ListSales(id=0), OrderList).orders
        # Each seller sees only their own lines of the shared order, and only their takings.
        assert [(s.id, s.total_cents, len(s.lines)) for s in first_sales] == [(order.id, 200, 1)]
        assert [(s.id, s.total_cents, len(s.lines)) for s in second_sales] == [(order.id, 700, 1)]
        assert lurker.call(ListOrders(id=0), OrderList).orders == []
        assert lurker.call(ListSales(id=0), OrderList).orders == []
        assert shopper.call(ListSales(id=0), OrderList).orders == []
    finally:
        for conn in (first, second, shopper, lurker):
            conn.close()


def test_a_short_line_refuses_the_whole_order(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    plenty = item(seller, 100, 10)
    scarce = item(seller, 200, 2)
    error = refusal(buyer, (plenty, 3), (scarce, 3))
    assert error.code is ErrorCode.OUT_OF_STOCK
    assert error.details == [f"image {scarce}: only 2 left, 3 wanted"]
    assert stock_of(buyer, plenty, scarce) == {plenty: 10, scarce: 2}
    assert buyer.call(ListOrders(id=0), OrderList).orders == []


def test_a_changed_price_refuses_the_line(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    dress = item(seller, 1250, 5)
    seller.call(UpdateImage(id=0, image_id=dress, price_cents=1500))
    error = refusal(buyer, (dress, 1, 1250))
    assert error.code is ErrorCode.CONFLICT
    assert error.details == [f"image {dress}: price changed from 12.50 to 15.00"]
    assert stock_of(buyer, dress) == {dress: 5}
    # Without an expected price, or with the new one, it goes through at the current price.
    assert checkout(buyer, (dress, 1, 1500)).order.total_cents == 1500
    assert checkout(buyer, (dress, 1)).order.total_cents == 1500


def test_deleted_hidden_and_missing_images_fail_with_their_reason(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    deleted = item(seller, 100, 5)
    hidden = item(seller, 100, 5)
    fine = item(seller, 100, 5)
    seller.call(DeleteImage(id=0, image_id=deleted))
    seller.call(UpdateImage(id=0, image_id=hidden, private=True))
    missing = 2**40
    error = refusal(buyer, (fine, 1), (deleted, 1), (hidden, 1), (missing, 1))
    assert error.code is ErrorCode.NOT_FOUND
    assert error.details == [
        f"image {deleted}: deleted, so it can no longer be bought",
        f"image {hidden}: no longer available (it does not exist or is not shown to you)",
        f"image {missing}: no longer available (it does not exist or is not shown to you)",
    ]
    assert "3 of 4 lines" in error.message
    assert stock_of(seller, fine, hidden) == {fine: 5, hidden: 5}


def test_a_private_image_reads_exactly_like_a_missing_one(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    """Stock, price and deletion of someone else's private image must not leak through checkout."""
    private = item(seller, 100, 0, private=True)
    missing = 2**41
    hidden_error = refusal(buyer, (private, 5, 1))
    missing_error = refusal(buyer, (missing, 5, 1))
    assert hidden_error.code == missing_error.code == ErrorCode.NOT_FOUND
    assert hidden_error.message == missing_error.message
    assert hidden_error.details[0].replace(str(private), "N") == missing_error.details[0].replace(
        str(missing), "N"
    )
    seller.call(DeleteImage(id=0, image_id=private))
    again = refusal(buyer, (private, 1))
    assert again.details == hidden_error.details


def test_buying_ones_own_image_is_refused(seller: ServerConnection) -> None:
    mine = item(seller, 100, 5)
    private_mine = item(seller, 100, 5, private=True)
    error = refusal(seller, (mine, 1), (private_mine, 1))
    assert error.code is ErrorCode.FORBIDDEN
    assert [detail.split(":")[0] for detail in error.details] == [
        f"image {mine}",
        f"image {private_mine}",
    ]
    assert stock_of(seller, mine, private_mine) == {mine: 5, private_mine: 5}


def test_mixed_failures_are_a_conflict_listing_every_line_in_order(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    gone = item(seller, 100, 5)
    short = item(seller, 100, 1)
    repriced = item(seller, 100, 5)
    seller.call(DeleteImage(id=0, image_id=gone))
    seller.call(UpdateImage(id=0, image_id=repriced, price_cents=101))
    error = refusal(buyer, (repriced, 1, 100), (short, 2), (gone, 1))
    assert error.code is ErrorCode.CONFLICT
    assert [detail.split(":")[0] for detail in error.details] == [
        f"image {repriced}",
        f"image {short}",
        f"image {gone}",
    ]


def test_bad_checkouts_are_refused_before_anything_happens(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: ServerConnection
) -> None:
    thing = item(seller, 100, 5)
    twice = refusal(buyer, (thing, 1), (thing, 2))
    assert twice.code is ErrorCode.BAD_REQUEST and "two lines" in twice.message
    for bad in (
        Checkout(id=0, lines=[]),
        Checkout(id=0, lines=[CartLine(image_id=thing, quantity=0)]),
    ):
        with pytest.raises(VitrineError) as caught:
            buyer.call(bad, OrderPlaced)
        assert caught.value.code is ErrorCode.BAD_REQUEST
    anonymous = server.connect(home)
    try:
        for request in (
            Checkout(id=0, lines=[CartLine(image_id=thing, quantity=1)]),
            ListOrders(id=0),
            ListSales(id=0),
        ):
            with pytest.raises(VitrineError) as caught:
                anonymous.call(request)
            assert caught.value.code is ErrorCode.UNAUTHENTICATED
    finally:
        anonymous.close()
    assert stock_of(buyer, thing) == {thing: 5}


# --- many buyers at once -------------------------------------------------------------------------


def race(
    server: ServerProcess,
    home: Path,
    names: list[str],
    carts: list[list[tuple[int, int]]],
) -> list[OrderPlaced | VitrineError]:
    """Every buyer logs in on a connection of their own, then all check out at the same moment."""
    connections = [server.user_connection(home, name) for name in names]
    barrier = threading.Barrier(len(names))
    outcomes: list[OrderPlaced | VitrineError | None] = [None] * len(names)

    def buy(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = checkout(connections[index], *carts[index])
        except VitrineError as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(len(names))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for conn in connections:
            conn.close()
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


def test_twenty_buyers_race_for_the_last_five_units(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer_names: list[str]
) -> None:
    last = item(seller, 999, 5)
    outcomes = race(server, home, buyer_names, [[(last, 1)]] * BUYERS)
    placed = [o for o in outcomes if isinstance(o, OrderPlaced)]
    refused = [o for o in outcomes if isinstance(o, VitrineError)]
    assert len(placed) == 5
    assert len(refused) == BUYERS - 5
    assert {error.code for error in refused} == {ErrorCode.OUT_OF_STOCK}
    assert all(error.details == [f"image {last}: sold out, 1 wanted"] for error in refused)
    assert stock_of(seller, last) == {last: 0}
    assert len({o.order.id for o in placed}) == 5
    sales = seller.call(ListSales(id=0), OrderList).orders
    assert sorted(sale.id for sale in sales) == sorted(o.order.id for o in placed)


def test_multi_line_carts_race_without_partial_orders_or_negative_stock(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer_names: list[str]
) -> None:
    stocks = [4, 6, 3, 5]
    ids = [item(seller, 100 * (n + 1), stock) for n, stock in enumerate(stocks)]
    initial = dict(zip(ids, stocks, strict=True))
    rng = random.Random(6)
    carts = [
        [(image, rng.randint(1, 3)) for image in rng.sample(ids, rng.randint(2, len(ids)))]
        for _ in range(BUYERS)
    ]
    outcomes = race(server, home, buyer_names, carts)

    sold = dict.fromkeys(ids, 0)
    for cart, outcome in zip(carts, outcomes, strict=True):
        if isinstance(outcome, VitrineError):
            assert outcome.code is ErrorCode.OUT_OF_STOCK, outcome
            assert outcome.details, outcome
            continue
        # Every line of the cart is in the order, with its quantity and price: nothing partial.
        bought = [(line.image_id, line.quantity) for line in outcome.order.lines]
        assert bought == cart
        assert outcome.order.total_cents == sum(
            quantity * 100 * (ids.index(image) + 1) for image, quantity in cart
        )
        for image, quantity in cart:
            sold[image] += quantity
    assert any(isinstance(o, OrderPlaced) for o in outcomes)
    assert any(isinstance(o, VitrineError) for o in outcomes)
    final = stock_of(seller, *ids)
    for image in ids:
        assert final[image] >= 0
        assert final[image] == initial[image] - sold[image]
    # The server's own record agrees: the seller's sales are exactly the successful orders.
    placed_ids = {o.order.id for o in outcomes if isinstance(o, OrderPlaced)}
    sales = [s for s in seller.call(ListSales(id=0), OrderList).orders if s.id in placed_ids]
    assert len(sales) == len(placed_ids)
    assert sum(line.quantity for s in sales for line in s.lines) == sum(sold.values())


def test_a_relative_restock_keeps_the_sales_made_since(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    thing = item(seller, 250, 5)
    checkout(buyer, (thing, 2))  # the seller still thinks 5 are left
    after = seller.call(UpdateImage(id=0, image_id=thing, add_quantity=3), ImageUpdated)
    assert after.image.quantity == 6
    emptied = seller.call(UpdateImage(id=0, image_id=thing, add_quantity=-6), ImageUpdated)
    assert emptied.image.quantity == 0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (-4, "has 3 in stock now; taking 4 would leave less than none"),
        (1_000_000_000, "has 3 in stock now; adding 1000000000 would pass the largest quantity"),
    ],
)
def test_a_restock_out_of_range_changes_nothing(
    seller: ServerConnection, buyer: ServerConnection, change: int, words: str
) -> None:
    thing = item(seller, 250, 4)
    checkout(buyer, (thing, 1))
    request = UpdateImage(id=0, image_id=thing, add_quantity=change, title="x")
    with pytest.raises(VitrineError) as caught:
        seller.call(request, ImageUpdated)
    assert caught.value.code is ErrorCode.CONFLICT
    assert words in caught.value.message
    answer = seller.call(GetImages(id=0, image_ids=[thing]), Images).items[0]
    assert (answer.quantity, answer.title) == (3, "item 250/4")  # the title did not change either


def test_setting_and_moving_the_stock_at_once_is_refused(seller: ServerConnection) -> None:
    thing = item(seller, 250, 4)
    with pytest.raises(VitrineError) as caught:
        seller.call(UpdateImage(id=0, image_id=thing, quantity=1, add_quantity=1), ImageUpdated)
    assert caught.value.code is ErrorCode.BAD_REQUEST and "not both" in caught.value.message
    assert stock_of(seller, thing) == {thing: 4}


def test_restocks_racing_buyers_lose_no_sale(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer_names: list[str]
) -> None:
    thing = item(seller, 300, 10)
    restocks = seller.submit_all(
        [UpdateImage(id=0, image_id=thing, add_quantity=2) for _ in range(BUYERS)]
    )
    outcomes = race(server, home, buyer_names, [[(thing, 1)]] * BUYERS)
    assert all(future.result().image.quantity >= 0 for future in restocks)
    sold = sum(isinstance(o, OrderPlaced) for o in outcomes)
    assert sold > 0
    assert stock_of(seller, thing) == {thing: 10 + 2 * BUYERS - sold}


# --- the idempotency key -------------------------------------------------------------------------


def keyed(conn: ServerConnection, key: str, *lines: tuple[int, int]) -> OrderPlaced:
    request = Checkout(id=0, key=key, lines=[CartLine(image_id=i, quantity=q) for i, q in lines])
    return conn.call(request, OrderPlaced)


def test_a_checkout_sent_again_with_its_key_is_answered_not_placed_again(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    """A shell killed after sending its order re-sends it with the same key: the order the
    server placed the first time is the answer, and nothing is bought twice, even once the
    stock that made the first order possible is gone."""
    last = item(seller, 700, 1, title="The last one")
    key = secrets.token_urlsafe(16)
    first = keyed(buyer, key, (last, 1))
    assert first.placed_earlier is False
    again = keyed(buyer, key, (last, 1))
    assert again.placed_earlier is True
    assert again.order == first.order
    assert stock_of(seller, last) == {last: 0}
    orders = buyer.call(ListOrders(id=0), OrderList).orders
    assert [order.id for order in orders].count(first.order.id) == 1
    assert len([o for o in orders if o.lines[0].image_id == last]) == 1


def test_checkout_keys_are_each_buyers_own(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: ServerConnection
) -> None:
    """Another buyer who happens to send the same key gets an order of their own (and never
    sees the first buyer's); a key without an order places one."""
    shared = item(seller, 250, 5, title="Shared key")
    key = "same-key-for-two-buyers"
    mine = keyed(buyer, key, (shared, 1))
    other = server.user_connection(home, unique("buyer"))
    try:
        theirs = keyed(other, key, (shared, 2))
    finally:
        other.close()
    assert theirs.placed_earlier is False
    assert theirs.order.id != mine.order.id
    assert [line.quantity for line in theirs.order.lines] == [2]
    assert stock_of(seller, shared) == {shared: 2}


def test_a_refused_keyed_checkout_leaves_the_key_free(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    """Nothing is stored on a refusal, so the same key places the order once it can be."""
    short = item(seller, 300, 1, title="Short, then restocked")
    key = "refused-then-placed-key"
    request = Checkout(id=0, key=key, lines=[CartLine(image_id=short, quantity=2)])
    with pytest.raises(VitrineError) as refused:
        buyer.call(request, OrderPlaced)
    assert refused.value.code is ErrorCode.OUT_OF_STOCK
    seller.call(UpdateImage(id=0, image_id=short, quantity=5), ImageUpdated)
    placed = buyer.call(request, OrderPlaced)
    assert placed.placed_earlier is False
    assert stock_of(seller, short) == {short: 3}


def test_a_malformed_key_is_a_bad_request(
    seller: ServerConnection, buyer: ServerConnection
) -> None:
    cheap = item(seller, 100, 5, title="Bad key")
    for key in ("", "fifteen chars..", "x" * 65):
        request = Checkout(id=0, key=key, lines=[CartLine(image_id=cheap, quantity=1)])
        with pytest.raises(VitrineError) as bad:
            buyer.call(request, OrderPlaced)
        assert bad.value.code is ErrorCode.BAD_REQUEST, key
    assert stock_of(seller, cheap) == {cheap: 5}


def test_version_5_databases_get_the_checkout_key(tmp_path: Path) -> None:
    """Orders placed before v6 keep working and have no key; keys are unique per buyer."""
    conn = sqlite3.connect(tmp_path / "v5.db", isolation_level=None)
    for number, step in enumerate(MIGRATIONS[:5], start=1):
        step(conn)
        conn.execute(f"PRAGMA user_version={number}")
    conn.execute(
        "INSERT INTO users (id, name, password_hash, created_at) VALUES (1, 'a', '', 0), "
        "(2, 'b', '', 0)"
    )
    conn.execute("INSERT INTO orders (buyer_id, total_cents, created_at) VALUES (1, 100, 0)")

    assert migrate(conn) >= 6
    assert conn.execute("SELECT checkout_key FROM orders").fetchall() == [(None,)]
    insert = (
        "INSERT INTO orders (buyer_id, total_cents, created_at, checkout_key) VALUES (?, 0, 0, ?)"
    )
    conn.execute(insert, (1, None))  # any number of orders without a key
    conn.execute(insert, (1, "k" * 16))
    conn.execute(insert, (2, "k" * 16))  # another buyer's key is independent
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(insert, (1, "k" * 16))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_the_shell_forgets_a_checkout_key_only_on_refusals_made_after_its_lookup() -> None:
    """The shell drops a pending key on exactly the codes a CheckoutRefused becomes: those come
    after the server looked the key up and found no order. Any other error (INTERNAL after the
    order committed, a rate limit) must leave the key, or a resend could buy twice."""
    assert {*REFUSAL_CODES.values(), ErrorCode.CONFLICT} == KEY_SETTLING_REFUSALS
    assert ErrorCode.INTERNAL not in KEY_SETTLING_REFUSALS
