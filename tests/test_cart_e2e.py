"""The cart end to end: buyers drive the real client.py against the real server.py.

Sellers set up their catalogue over the wire (that is tested elsewhere); buyers only ever use
the shell, and the tests read what it prints (--json lines where a script would) and what it
leaves in the cart file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from protocol.catalog import DeleteImage, GetImages, Images, UpdateImage
from protocol.messages import CreateUser, UserInfo, WhoAmI
from shell.cart_store import CartStore, cart_path
from shell.connection import ServerConnection
from tests.servers import ROOT, ServerProcess, run_client, unread_by_server
from tests.test_images_server import jpeg, unique, upload

PASSWORD = "correct horse"
_seeds = iter(range(500_000, 900_000))


class Result:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code, self.out, self.err = done.returncode, done.stdout, done.stderr

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Buyer:
    """One user's client.py: each call is a new process, so the cart must come from disk."""

    def __init__(self, server: ServerProcess, home: Path, existing: str | None = None) -> None:
        self.server, self.name = server, existing or unique("buyer")
        self.config_dir = home / self.name
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if existing is None:  # create the account only: each shell logs in itself
            conn = server.connect(self.config_dir)
            conn.call(CreateUser(id=0, name=self.name, password=PASSWORD), UserInfo)
            conn.close()

    @property
    def server_id(self) -> str:
        """The server's own id, which names its carts (read anew: a test may swap servers)."""
        conn = self.server.connect(self.config_dir)
        try:
            return conn.server_id
        finally:
            conn.close()

    @property
    def cart_file(self) -> Path:
        return cart_path(self.config_dir / "data", self.server_id, self.name)

    def store(self) -> CartStore:
        return CartStore(
            self.config_dir / "data",
            self.server.address,
            self.name,
            lambda _: None,
            server_id=self.server_id,
        )

    def __call__(self, *commands: str) -> Result:
        done = run_client(
            self.server,
            f"login {self.name}",
            *commands,
            config_dir=self.config_dir,
            password=PASSWORD,
            extra_env={"COLUMNS": "200"},
        )
        result = Result(done)
        assert "Traceback" not in result.out + result.err, result
        return result


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("cart-server")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cart-clients")


@pytest.fixture
def seller(server: ServerProcess, home: Path) -> Iterator[ServerConnection]:
    conn = server.user_connection(home, unique("seller"), PASSWORD)
    yield conn
    conn.close()


@pytest.fixture
def buyer(server: ServerProcess, home: Path) -> Buyer:
    return Buyer(server, home)


def item(seller: ServerConnection, price: int, stock: int, **fields: object) -> int:
    title = fields.pop("title", f"thing {price}")
    data = jpeg(next(_seeds))
    return upload(seller, data, title=title, price_cents=price, quantity=stock, **fields).image_id


def stock_of(conn: ServerConnection, *ids: int) -> dict[int, int]:
    return {i.id: i.quantity for i in conn.call(GetImages(id=0, image_ids=list(ids)), Images).items}


def cart_lines(buyer: Buyer | CartStore) -> list[tuple[int, int]]:
    """The cart file's lines; pass the buyer's store made beforehand while the server is
    stopped (naming the cart asks the server for its id)."""
    store = buyer.store() if isinstance(buyer, Buyer) else buyer
    return [(line.image_id, line.quantity) for line in store.load().lines]


# --- the cart ------------------------------------------------------------------------------------


def test_cart_survives_client_and_server_restarts(tmp_path: Path) -> None:
    own = ServerProcess(tmp_path / "server").start()
    try:
        seller = own.user_connection(tmp_path, "maker", PASSWORD)
        dress = item(seller, 1250, 5, title="Red dress")
        hat = item(seller, 300, 2, title="Hat")
        seller.close()
        buyer = Buyer(own, tmp_path)
        added = buyer(f"add_to_cart {dress} 2", f"add_to_cart {hat}", f"add_to_cart {dress}")
        assert added.code == 0, added
        own.stop()
        own.restart()
        seen = buyer("view_cart --json")
        assert seen.code == 0, seen
        *lines, total = seen.json_lines()
        assert [(line["id"], line["quantity"], line["price"]) for line in lines] == [
            (dress, 3, "12.50"),
            (hat, 1, "3.00"),
        ]
        assert total == {
            "total": "40.50",
            "lines": 2,
            "units": 4,
            "warnings": 0,
            "left_out": 0,
            "checkout_pending": False,
        }
        table = buyer("view_cart")
        assert "Red dress" in table.out and "40.50" in table.out, table
    finally:
        own.stop()


def test_a_new_server_at_the_same_address_does_not_get_the_old_ones_cart(tmp_path: Path) -> None:
    """Image ids belong to a server's data: the cart filled on one shop, shown by another at
    the same address (a server replaced, a port reused), would buy other products under the
    same ids. Each server's cart comes back with it."""
    old = ServerProcess(tmp_path / "old").start()
    new = ServerProcess(tmp_path / "new")
    try:
        seller = old.user_connection(tmp_path / "seller", "maker", PASSWORD)
        trousers = item(seller, 999, 5, title="Trousers")
        seller.close()
        buyer = Buyer(old, tmp_path)
        assert buyer(f"add_to_cart {trousers}").code == 0
        old.stop()

        new.port = old.port
        new.restart()
        seller = new.user_connection(tmp_path / "seller-new", "maker", PASSWORD)
        dress = item(seller, 999, 5, title="Dress")
        seller.close()
        assert dress == trousers  # the same id, another product
        new.user_connection(tmp_path / "seller-new", buyer.name, PASSWORD).close()
        # The buyer trusts the new server (a fresh pin), and keeps the same cart folder.
        on_new = run_client(
            new,
            f"login {buyer.name}",
            "view_cart --json",
            config_dir=tmp_path / "buyer-new",
            data_dir=buyer.config_dir / "data",
            password=PASSWORD,
        )
        assert on_new.returncode == 0, on_new.stderr
        lines = [json.loads(line) for line in on_new.stdout.splitlines()]
        assert lines == [
            {
                "total": "0.00",
                "lines": 0,
                "units": 0,
                "warnings": 0,
                "left_out": 0,
                "checkout_pending": False,
            }
        ]
        new.stop()

        old.restart()
        *kept, _ = buyer("view_cart --json").json_lines()
        assert [(line["id"], line["title"]) for line in kept] == [(trousers, "Trousers")]
    finally:
        old.stop()
        if new.process is not None:
            new.stop()


def test_one_server_by_two_names_keeps_one_cart(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    hat = item(seller, 300, 2, title="Hat")
    assert buyer(f"add_to_cart {hat}").code == 0
    by_name = dataclasses.replace(server, host="localhost")
    seen = run_client(
        by_name,
        f"login {buyer.name}",
        "view_cart --json",
        config_dir=buyer.config_dir,
        password=PASSWORD,
    )
    assert seen.returncode == 0, seen.stderr
    assert f'"id":{hat},' in seen.stdout and '"lines":1' in seen.stdout, seen.stdout


def test_a_cart_kept_under_the_servers_address_is_taken_over(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """Carts were kept by address before servers sent an id: an upgrade keeps them."""
    hat = item(seller, 300, 2, title="Hat")
    by_address = CartStore(buyer.config_dir / "data", server.address, buyer.name, lambda _: None)
    with by_address.edit() as cart:
        cart.add(hat, 2, 300, "Hat")
    *lines, _ = buyer("view_cart --json").json_lines()
    assert [(line["id"], line["quantity"]) for line in lines] == [(hat, 2)]
    assert not by_address.path.exists() and buyer.cart_file.exists()


def test_a_renamed_line_is_flagged_and_not_bought_by_a_script_until_accepted(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """A seller who renames what is in a cart ("EMPTY BOX (photo only)") must not have it
    bought unseen: the price alone did not show the change."""
    shirt = item(seller, 500, 5, title="Linen shirt")
    hat = item(seller, 300, 5, title="Hat")
    assert buyer(f"add_to_cart {shirt} 2", f"add_to_cart {hat}").code == 0
    seller.call(UpdateImage(id=0, image_id=shirt, title="EMPTY BOX (photo only)"))
    *rows, total = buyer("view_cart --json").json_lines()
    by_id = {row["id"]: row for row in rows}
    assert by_id[shirt]["status"] == "title_changed" and by_id[shirt]["available"] is True
    assert by_id[shirt]["warnings"] == ["title changed: was 'Linen shirt'"]
    assert by_id[shirt]["title"] == "EMPTY BOX (photo only)" and by_id[hat]["status"] == "ok"
    assert total["warnings"] == 1 and total["total"] == "13.00"
    table = buyer("view_cart")
    assert "title changed" in table.out and "accepts a new price or title" in table.out, table

    refused = buyer("checkout --yes")
    assert refused.code == 1, refused
    assert "changed title since you added it" in refused.err, refused
    assert f"update_cart ID QTY accepts the new title ({shirt})" in refused.err
    assert stock_of(seller, shirt, hat) == {shirt: 5, hat: 5}  # nothing bought
    assert cart_lines(buyer) == [(shirt, 2), (hat, 1)]

    accepted = buyer(f"update_cart {shirt} 2", "checkout --yes --json")
    assert accepted.code == 0, accepted
    assert "added as 'Linen shirt'" in accepted.err, accepted
    assert stock_of(seller, shirt, hat) == {shirt: 3, hat: 4}


def test_adding_more_of_a_repriced_line_says_what_the_units_there_cost(
    seller: ServerConnection, buyer: Buyer
) -> None:
    cap = item(seller, 100, 9, title="Cap")
    assert buyer(f"add_to_cart {cap} 5").code == 0
    seller.call(UpdateImage(id=0, image_id=cap, price_cents=5000))
    more = buyer(f"add_to_cart {cap}")
    assert more.code == 0, more
    assert "at 50.00 each; the cart holds 6 of it" in more.err, more
    assert "The 5 units already in the cart were added at 1.00" in more.err, more
    unchanged = buyer(f"add_to_cart {cap}")
    assert "already in the cart were added" not in unchanged.err, unchanged


def test_add_to_cart_refuses_what_cannot_be_bought(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: Buyer
) -> None:
    deleted = item(seller, 100, 5)
    seller.call(DeleteImage(id=0, image_id=deleted))
    private = item(seller, 100, 5, private=True)
    scarce = item(seller, 100, 2, title="Scarce")
    sold_out = item(seller, 100, 0, title="Gone")
    missing = 2**40
    # A script stops at its first failure, so each refusal is a run of its own.
    for command, said in (
        (f"add_to_cart {missing}", f"Image {missing} is not available: it does not exist"),
        (f"add_to_cart {deleted}", f"Image {deleted} is not available: it does not exist"),
        (f"add_to_cart {private}", f"Image {private} is not available: it does not exist"),
        (f"add_to_cart {scarce} 3", "you asked for 3"),
        (f"add_to_cart {sold_out}", f"Image {sold_out} (Gone) is sold out"),
        (f"add_to_cart {scarce} 0", "not 0"),
        (f"add_to_cart {scarce} -2", "not -2"),
    ):
        refused = buyer(command)
        assert refused.code == 1 and said in refused.err, (command, refused)
    assert cart_lines(buyer) == []
    # Stock counts what the cart already holds.
    done = buyer(f"add_to_cart {scarce} 2", f"add_to_cart {scarce}")
    assert done.code == 1
    assert "your cart already holds 2" in done.err
    assert done.err.count("Added ") == 1 and done.out == "", done
    assert cart_lines(buyer) == [(scarce, 2)]
    # Sellers cannot fill their own carts with their own goods.
    seller_shell = Buyer(server, home, seller_name(seller))
    own = seller_shell(f"add_to_cart {scarce}")
    assert own.code != 0 and "your own" in own.err, own


def seller_name(conn: ServerConnection) -> str:
    return conn.call(WhoAmI(id=0), UserInfo).name


def test_view_cart_warns_per_line(seller: ServerConnection, buyer: Buyer) -> None:
    repriced = item(seller, 1000, 5, title="Repriced")
    short = item(seller, 200, 5, title="Short")
    gone = item(seller, 300, 5, title="Gone soon")
    hidden = item(seller, 400, 5, title="Hidden soon")
    steady = item(seller, 500, 5, title="Steady")
    sold = item(seller, 600, 5, title="Sold")
    lines = (repriced, short, gone, hidden, steady, sold)
    assert buyer(*(f"add_to_cart {i} 2" for i in lines)).code == 0
    seller.call(UpdateImage(id=0, image_id=repriced, price_cents=1100))
    seller.call(UpdateImage(id=0, image_id=short, quantity=1))
    seller.call(DeleteImage(id=0, image_id=gone))
    seller.call(UpdateImage(id=0, image_id=hidden, private=True))
    seller.call(UpdateImage(id=0, image_id=sold, quantity=0))
    seen = buyer("view_cart --json")
    assert seen.code == 0, seen
    *rows, total = seen.json_lines()
    by_id = {row["id"]: row for row in rows}
    assert by_id[repriced]["warnings"] == ["price changed: was 10.00, now 11.00"]
    assert by_id[repriced]["price"] == "11.00" and by_id[repriced]["available"] is True
    assert by_id[short]["warnings"] == ["stock short: only 1 left"]
    assert by_id[short]["available"] is False
    assert by_id[sold]["warnings"] == ["sold out"] and by_id[sold]["available"] is False
    for image in (gone, hidden):
        assert by_id[image]["available"] is False and by_id[image]["price"] is None
        assert by_id[image]["warnings"][0].startswith("gone"), by_id[image]
        assert by_id[image]["title"] in ("Gone soon", "Hidden soon")  # remembered locally
    assert by_id[steady]["warnings"] == []
    # One field a script can test: only "ok" lines are bought by `checkout --yes` as they are.
    assert [by_id[i]["status"] for i in lines] == [
        "price_changed",
        "stock_short",
        "gone",
        "gone",
        "ok",
        "sold_out",
    ]
    # Total at current prices of what checkout could buy: the repriced and the steady lines.
    assert total == {
        "total": "32.00",
        "lines": 6,
        "units": 12,
        "warnings": 5,
        "left_out": 4,
        "checkout_pending": False,
    }
    table = buyer("view_cart")
    assert "price changed" in table.out and "stock short" in table.out, table
    assert (
        "6 lines, 12 items. Total at current prices: 32.00 "
        "(4 lines left out: stock short, gone, sold out)." in table.out
    ), table
    assert "Checkout buys every line or none" in table.out
    assert "5 lines need attention" in table.out
    assert "until then `checkout --yes` refuses that line" in table.out
    # The line --yes refuses, left alone, is refused; the others were already left out.
    refused = buyer(f"remove_from_cart {short} {gone} {hidden} {sold}", "checkout --yes")
    assert "Checkout refused (CONFLICT)" in refused.err, refused


def test_a_cart_with_one_problem_says_it_needs_attention(
    seller: ServerConnection, buyer: Buyer
) -> None:
    sold = item(seller, 600, 5, title="Sold")
    assert buyer(f"add_to_cart {sold}").code == 0
    seller.call(UpdateImage(id=0, image_id=sold, quantity=0))
    table = buyer("view_cart")
    assert "Total at current prices: 0.00 (1 line left out: sold out)." in table.out, table
    assert "1 line needs attention" in table.out
    assert "update_cart ID QTY" not in table.out


def test_update_remove_and_clear(seller: ServerConnection, buyer: Buyer) -> None:
    a = item(seller, 100, 5, title="Alpha")
    b = item(seller, 200, 5, title="Beta")
    c = item(seller, 300, 5, title="Gamma")
    added = buyer(f"add_to_cart {a}", f"add_to_cart {b}", f"add_to_cart {c}")
    assert added.code == 0, added
    for command, said in (
        ("update_cart 999999 2", "Image 999999 is not in your cart"),
        (f"update_cart {a} -1", "not -1 (0 removes the line)"),
        (f"update_cart {a} 6", "Only 5 of image"),
        ("remove_from_cart 424242", "Not in your cart: 424242"),
    ):
        refused = buyer(command)
        assert refused.code == 1 and said in refused.err, (command, refused)
    assert cart_lines(buyer) == [(a, 1), (b, 1), (c, 1)]
    # A new price is taken on by update_cart, and said; 0 removes a line.
    seller.call(UpdateImage(id=0, image_id=a, price_cents=150))
    changed = buyer(f"update_cart {a} 4", f"update_cart {b} 0", "view_cart --json")
    assert changed.code == 0, changed
    assert (
        "at 1.50 each. The 1 unit already in the cart was added at 1.00; the whole line is now "
        "as shown." in changed.err
    ), changed
    assert "Removed Beta" in changed.err
    assert changed.json_lines()[0]["warnings"] == []
    assert cart_lines(buyer) == [(a, 4), (c, 1)]
    again = buyer(f"update_cart {b} 0")
    assert again.code != 0 and f"Image {b} is not in your cart" in again.err, again
    again = buyer(f"remove_from_cart {c} {b}")
    assert again.code != 0, again
    assert "Removed Gamma" in again.err and f"Not in your cart: {b}" in again.err
    assert cart_lines(buyer) == [(a, 4)]
    cleared = buyer("clear_cart", "view_cart", "clear_cart")
    assert cleared.code == 0, cleared
    assert "Emptied the cart (1 line)" in cleared.err
    assert "Your cart is empty" in cleared.out and "already empty" in cleared.err


def test_a_corrupt_cart_file_is_moved_aside(seller: ServerConnection, buyer: Buyer) -> None:
    thing = item(seller, 100, 5)
    buyer.cart_file.parent.mkdir(parents=True, exist_ok=True)
    buyer.cart_file.write_text('{"version": 1, "lines": [{"image_id": ')
    seen = buyer("view_cart", f"add_to_cart {thing}")
    assert seen.code == 0, seen
    assert "damaged" in seen.err and "moved aside" in seen.err, seen
    aside = [p for p in buyer.cart_file.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text().endswith('"image_id": ')
    assert cart_lines(buyer) == [(thing, 1)]


# --- checkout ------------------------------------------------------------------------------------


def test_checkout_success_empties_the_cart_and_shows_the_order(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: Buyer
) -> None:
    dress = item(seller, 1250, 3, title="Red dress")
    hat = item(seller, 300, 1, title="Hat")
    unconfirmed = buyer(f"add_to_cart {dress} 2", f"add_to_cart {hat}", "checkout")
    assert unconfirmed.code != 0 and "pass --yes" in unconfirmed.err, unconfirmed
    assert cart_lines(buyer) == [(dress, 2), (hat, 1)]

    done = buyer("checkout --yes", "orders --json", "orders")
    assert done.code == 0, done
    assert "Total at current prices: 28.00" in done.out
    assert "placed: 3 items for 28.00" in done.out
    assert cart_lines(buyer) == []
    assert stock_of(seller, dress, hat) == {dress: 1, hat: 0}
    (order,) = done.json_lines()
    assert f"Order #{order['id']} placed" in done.out
    assert order["total"] == "28.00"
    assert [
        (line["image_id"], line["quantity"], line["unit_price"]) for line in order["lines"]
    ] == [
        (dress, 2, "12.50"),
        (hat, 1, "3.00"),
    ]
    assert "order total" in done.out

    seller_shell = Buyer(server, home, seller_name(seller))
    sales = seller_shell("sales --json", "sales")
    *rows, totals = sales.json_lines()
    assert [(row["order_id"], row["buyer"], row["title"], row["line_total"]) for row in rows] == [
        (order["id"], buyer.name, "Red dress", "25.00"),
        (order["id"], buyer.name, "Hat", "3.00"),
    ]
    assert totals == {"total": "28.00", "units": 3, "orders": 1}
    assert "3 items sold in 1 order, 28.00 in all" in sales.out, sales


def test_checkout_failure_leaves_the_cart_intact(seller: ServerConnection, buyer: Buyer) -> None:
    plenty = item(seller, 100, 10, title="Plenty")
    lowered = item(seller, 200, 5, title="Lowered")
    assert buyer(f"add_to_cart {plenty} 2", f"add_to_cart {lowered} 4").code == 0
    before = buyer.cart_file.read_bytes()
    seller.call(UpdateImage(id=0, image_id=lowered, quantity=3))
    failed = buyer("checkout --yes")
    assert failed.code != 0, failed
    assert "Checkout refused (OUT_OF_STOCK)" in failed.err, failed
    assert f"#{lowered} Lowered: only 3 left, 4 wanted" in failed.err, failed
    assert "cart is unchanged" in failed.err
    assert buyer.cart_file.read_bytes() == before
    assert stock_of(seller, plenty, lowered) == {plenty: 10, lowered: 3}
    assert buyer("orders --json").json_lines() == []


def test_a_changed_price_is_refused_by_the_server_not_charged(
    seller: ServerConnection, buyer: Buyer
) -> None:
    steady = item(seller, 100, 10, title="Steady")
    repriced = item(seller, 1000, 10, title="Dearer")
    assert buyer(f"add_to_cart {steady}", f"add_to_cart {repriced}").code == 0
    before = buyer.cart_file.read_bytes()
    seller.call(UpdateImage(id=0, image_id=repriced, price_cents=1200))
    failed = buyer("checkout --yes")
    assert failed.code != 0, failed
    assert "Checkout refused (CONFLICT)" in failed.err
    assert f"#{repriced} Dearer: price changed from 10.00 to 12.00" in failed.err, failed
    assert f"update_cart {repriced} QTY accepts the new price" in failed.err
    assert buyer.cart_file.read_bytes() == before
    assert stock_of(seller, steady, repriced) == {steady: 10, repriced: 10}
    # Accepting the new price, then buying, charges what was shown.
    done = buyer(f"update_cart {repriced} 1", "checkout --yes --json")
    assert done.code == 0, done
    (order,) = done.json_lines()
    assert order["total"] == "13.00"


def test_deleting_or_hiding_an_image_fails_its_line(seller: ServerConnection, buyer: Buyer) -> None:
    kept = item(seller, 100, 5, title="Kept")
    deleted = item(seller, 100, 5, title="Deleted")
    hidden = item(seller, 100, 5, title="Hidden")
    assert buyer(*(f"add_to_cart {i}" for i in (kept, deleted, hidden))).code == 0
    before = buyer.cart_file.read_bytes()
    seller.call(DeleteImage(id=0, image_id=deleted))
    seller.call(UpdateImage(id=0, image_id=hidden, private=True))
    failed = buyer("checkout --yes")
    assert failed.code != 0, failed
    assert "Checkout refused (NOT_FOUND)" in failed.err, failed
    # Its seller or an admin may have deleted it; the server does not record which.
    assert f"#{deleted} Deleted: deleted, so it can no longer be bought" in failed.err, failed
    assert "seller" not in failed.err
    assert f"#{hidden} Hidden: no longer available" in failed.err, failed
    assert f"#{kept} Kept" not in failed.err
    assert buyer.cart_file.read_bytes() == before
    assert stock_of(seller, kept) == {kept: 5}


def test_refusal_hints_keep_cart_order_and_fit_the_problem(
    seller: ServerConnection, buyer: Buyer
) -> None:
    repriced = item(seller, 1000, 5, title="Repriced")
    sold = item(seller, 100, 5, title="Sold")
    short = item(seller, 100, 5, title="Short")
    deleted = item(seller, 100, 5, title="Deleted")
    assert buyer(*(f"add_to_cart {i} 2" for i in (repriced, sold, short, deleted))).code == 0
    seller.call(UpdateImage(id=0, image_id=repriced, price_cents=1100))
    seller.call(UpdateImage(id=0, image_id=sold, quantity=0))
    seller.call(UpdateImage(id=0, image_id=short, quantity=1))
    seller.call(DeleteImage(id=0, image_id=deleted))
    failed = buyer("checkout --yes")
    assert failed.code != 0 and "Checkout refused (CONFLICT)" in failed.err, failed
    hints = [line for line in failed.err.splitlines() if line.startswith("Hint:")]
    # No terminal here, so going to one is worth saying.
    assert hints == [
        f"Hint: update_cart {repriced} QTY accepts the new price (or checkout at a terminal, "
        "which shows the current prices before asking).",
        f"Hint: remove_from_cart {sold} takes the line out.",
        f"Hint: update_cart {short} QTY with fewer, or remove_from_cart {short}.",
        f"Hint: remove_from_cart {deleted} takes the line out.",
    ], failed


@pytest.mark.slow
def test_twenty_shells_race_for_the_last_five_units(
    server: ServerProcess, home: Path, seller: ServerConnection
) -> None:
    """Twenty client.py processes check out at once; their carts were filled beforehand."""
    last = item(seller, 750, 5, title="Last ones")
    price = 750
    buyers = [Buyer(server, home) for _ in range(20)]
    for buyer in buyers:
        with buyer.store().edit() as cart:
            cart.add(last, 1, price, "Last ones")
    with ThreadPoolExecutor(len(buyers)) as pool:
        results = list(pool.map(lambda b: b("checkout --yes --json"), buyers))
    won = [(b, r) for b, r in zip(buyers, results, strict=True) if r.code == 0]
    lost = [(b, r) for b, r in zip(buyers, results, strict=True) if r.code != 0]
    assert len(won) == 5, results
    assert len(lost) == 15
    for buyer, result in lost:
        assert "Checkout refused (OUT_OF_STOCK)" in result.err, result
        assert f"#{last} Last ones: sold out, 1 wanted" in result.err, result
        assert cart_lines(buyer) == [(last, 1)]
    for buyer, result in won:
        (order,) = result.json_lines()
        assert order["total"] == "7.50"
        assert cart_lines(buyer) == []
    assert stock_of(seller, last) == {last: 0}


def test_two_shells_of_one_buyer_cannot_buy_the_cart_twice(
    seller: ServerConnection, buyer: Buyer
) -> None:
    """Both shells read the cart, then each placed an order and emptied it: the same lines were
    bought twice. The test holds the cart's lock while both start, so both read it at once."""
    a, b = item(seller, 300, 10, title="Twice A"), item(seller, 400, 10, title="Twice B")
    for attempt in range(1, 3):
        with buyer.store().edit() as cart:
            cart.add(a, 1, 300, "Twice A")
            cart.add(b, 1, 400, "Twice B")
        with ThreadPoolExecutor(2) as pool:
            with buyer.store().edit():
                shells = [pool.submit(buyer, "checkout --yes --json") for _ in range(2)]
                time.sleep(3)  # both log in and wait for the cart
            results = [shell.result() for shell in shells]
        won = [r for r in results if r.code == 0]
        assert len(won) == 1, results
        (lost,) = [r for r in results if r.code != 0]
        assert "changed in another shell" in lost.err or "cart is empty" in lost.err, lost
        assert stock_of(seller, a, b) == {a: 10 - attempt, b: 10 - attempt}
        assert cart_lines(buyer) == []


@contextmanager
def terminal(buyer: Buyer, *commands: str) -> Iterator[Any]:
    """The buyer's client.py at a pseudo-terminal, logged in: what a person sees. `commands`
    are given as arguments, after a login: the shell then carries on at its prompt, and its
    exit status says whether they all succeeded."""
    pexpect = pytest.importorskip("pexpect")
    env = {
        **os.environ,
        "VITRINE_PASSWORD": PASSWORD,
        "VITRINE_GRAPHICS": "blocks",
        "TERM": "xterm-256color",
        "COLUMNS": "160",
        "LINES": "50",
    }
    child = pexpect.spawn(
        sys.executable,
        [
            str(ROOT / "client.py"),
            "--server",
            buyer.server.address,
            "--config-dir",
            str(buyer.config_dir),
            "--data-dir",
            str(buyer.config_dir / "data"),
            "--fingerprint",
            buyer.server.fingerprint,
            *((f"login {buyer.name}", *commands) if commands else ()),
        ],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
        # A terminal delivers Ctrl-C even when this test run was started with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        if not commands:
            child.expect("vitrine ")
            child.sendline(f"login {buyer.name}")
        child.expect("Logged in as")
        yield child
        if child.isalive():  # not when a test killed it
            child.sendline("quit")
            child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_checkout_at_a_terminal_asks_and_charges_the_prices_shown(
    seller: ServerConnection, buyer: Buyer
) -> None:
    repriced = item(seller, 1000, 5, title="Repriced")
    assert buyer(f"add_to_cart {repriced} 2").code == 0
    seller.call(UpdateImage(id=0, image_id=repriced, price_cents=1100))
    with terminal(buyer) as child:
        # --yes at a terminal: the refusal's hint does not send the user where they are.
        child.sendline("checkout --yes --no-images")
        child.expect(r"Checkout refused \(CONFLICT\)")
        assert f"update_cart {repriced} QTY accepts the new price." in child.before
        assert "at a terminal" not in child.before
        child.sendline("checkout")
        child.expect(r"Buy these 2 items for 22\.00\? \[y/N\]")
        assert "price changed: was 10.00, now 11.00" in child.before
        assert "▀" in child.before or "▄" in child.before  # the thumbnail, drawn at a terminal
        child.sendline("n")
        child.expect("Checkout cancelled; your cart is unchanged")
        assert cart_lines(buyer) == [(repriced, 2)]
        child.sendline("checkout")
        child.expect(r"\[y/N\]")
        child.sendline("y")
        child.expect(r"Order #\d+ placed: 2 items for 22\.00")
    assert cart_lines(buyer) == []
    assert stock_of(seller, repriced) == {repriced: 3}


def test_checkout_of_one_item_asks_in_the_singular(seller: ServerConnection, buyer: Buyer) -> None:
    single = item(seller, 1999, 5, title="Single")
    assert buyer(f"add_to_cart {single}").code == 0
    with terminal(buyer) as child:
        child.sendline("checkout --no-images")
        child.expect(r"Buy (\w+ \d+ \w+) for 19\.99\? \[y/N\]")
        assert child.match.group(1) == "this 1 item"
        child.sendline("n")
        child.expect("Checkout cancelled")
    assert cart_lines(buyer) == [(single, 1)]


#: Given to `terminal`, so that the shell's exit status is that of the checkout.
CHECKOUT = "checkout --no-images"


def confirm_while_stopped(child: Any, server: ServerProcess) -> None:
    """Confirm a checkout while the server is stopped; return once the Checkout frame waits in
    the server's receive queue: the order is on the wire and unanswered."""
    child.expect(r"\[y/N\]")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    assert unread_by_server(child, server) == 0  # everything sent before was read
    child.sendline("y")
    deadline = time.monotonic() + 30
    while unread_by_server(child, server) == 0:
        assert time.monotonic() < deadline, "the Checkout request was never sent"
        time.sleep(0.05)


def interrupt_a_sent_checkout(child: Any, server: ServerProcess) -> None:
    """Confirm a checkout while the server is stopped, so the order is on the wire and
    unanswered, then press Ctrl-C: the shell must wait for the answer, not drop it."""
    confirm_while_stopped(child, server)
    child.sendintr()
    child.expect(
        r"Interrupted: waiting up to 5 s for the server's answer to the order already sent"
    )


def test_ctrl_c_after_the_order_was_sent_still_takes_the_answer(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """Ctrl-C used to print "Interrupted." and leave the cart as it was while the server
    placed the order: the next checkout bought the same lines again."""
    once = item(seller, 2200, 5, title="Bought once")
    assert buyer(f"add_to_cart {once}").code == 0
    try:
        with terminal(buyer, CHECKOUT) as child:
            interrupt_a_sent_checkout(child, server)
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            child.expect(r"Order #(\d+) placed: 1 item for 22\.00\. Your cart is empty")
            order_id = int(child.match.group(1))
            child.expect("vitrine ")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    assert child.exitstatus == 0, "the order went through: the command did not fail"
    assert cart_lines(buyer) == []
    again = buyer("checkout --yes")
    assert again.code != 0 and "Your cart is empty" in again.err, again
    orders = buyer("orders --json")
    assert [order["id"] for order in orders.json_lines()] == [order_id], orders
    assert stock_of(seller, once) == {once: 4}


def test_ctrl_c_twice_after_the_order_was_sent_leaves_the_outcome_unknown(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """A second Ctrl-C stops the wait: the shell cannot know whether the order went through,
    so it keeps the cart and says to look at `orders` (as when the connection is lost)."""
    kept = item(seller, 900, 5, title="Kept in cart")
    assert buyer(f"add_to_cart {kept} 2").code == 0
    cart = buyer.store()
    try:
        with terminal(buyer, CHECKOUT) as child:
            interrupt_a_sent_checkout(child, server)
            child.sendintr()
            child.expect("it is not known whether the order went through")
            child.expect("keeps this checkout's key")
            child.expect("vitrine ")
            assert cart_lines(cart) == [(kept, 2)]
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    finally:
        os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    assert child.exitstatus == 1
    assert cart_lines(buyer) == [(kept, 2)]
    # The server placed it meanwhile: `orders` shows it, as the warning says to check.
    placed = buyer("orders --json").json_lines()
    assert [[line["image_id"] for line in order["lines"]] for order in placed] == [[kept]]


#: The write(2) system call's number, as /proc/PID/syscall names it.
_WRITE = {"x86_64": 1, "aarch64": 64}.get(platform.machine())


def test_ctrl_c_while_the_waiting_notice_is_printed_does_not_escape(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """The second Ctrl-C came while the "waiting" notice was being written: it escaped as a
    plain "Interrupted.", with no word that the order may have gone through. The terminal's
    output is stopped (what Ctrl-S does, but at once) so that the notice's write blocks, and
    the presses are sent as signals, not typed (a typed Ctrl-C restarts the output)."""
    if _WRITE is None:
        pytest.skip(f"write(2)'s number on {platform.machine()} is not known here")
    held = item(seller, 600, 5, title="Held back")
    assert buyer(f"add_to_cart {held}").code == 0
    try:
        with terminal(buyer, CHECKOUT) as child:
            confirm_while_stopped(child, server)
            tty = os.open(f"/proc/{child.pid}/fd/2", os.O_WRONLY | os.O_NOCTTY)
            termios.tcflow(tty, termios.TCOOFF)  # the shell's next write to the terminal blocks
            os.kill(child.pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{child.pid}/syscall").read_text().split()[0] != str(_WRITE):
                assert time.monotonic() < deadline, "the shell never wrote its notice"
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGINT)
            termios.tcflow(tty, termios.TCOON)  # the notice goes out
            os.close(tty)
            child.expect("waiting up to 5 s for the server's answer to the order already sent")
            child.expect("it is not known whether the order went through")
            child.expect("vitrine ")
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    finally:
        os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    assert child.exitstatus == 1
    assert cart_lines(buyer) == [(held, 1)]


def test_no_answer_within_the_grace_period_leaves_the_outcome_unknown(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    kept = item(seller, 800, 5, title="Still frozen")
    assert buyer(f"add_to_cart {kept}").code == 0
    cart = buyer.store()
    try:
        with terminal(buyer, CHECKOUT) as child:
            interrupt_a_sent_checkout(child, server)
            started = time.monotonic()
            child.expect("Checkout was interrupted before the server answered, so it is not known")
            assert 4 <= time.monotonic() - started < 15
            child.expect("vitrine ")
            assert cart_lines(cart) == [(kept, 1)]
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    finally:
        os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    assert child.exitstatus == 1
    assert cart_lines(buyer) == [(kept, 1)]


def test_ctrl_c_at_the_question_still_just_interrupts(
    seller: ServerConnection, buyer: Buyer
) -> None:
    """Nothing was sent yet: no waiting, nothing bought, the cart as it was."""
    untouched = item(seller, 700, 5, title="Untouched")
    assert buyer(f"add_to_cart {untouched}").code == 0
    with terminal(buyer) as child:
        child.sendline("checkout --no-images")
        child.expect(r"\[y/N\]")
        child.sendintr()
        child.expect("vitrine ")
        assert "waiting" not in child.before and "not known" not in child.before, child.before
    assert cart_lines(buyer) == [(untouched, 1)]
    assert stock_of(seller, untouched) == {untouched: 5}


# --- narrow terminals ----------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [50, 44])
def test_a_narrow_terminal_never_cuts_a_number_or_a_note(
    seller: ServerConnection, buyer: Buyer, columns: int
) -> None:
    """At 50 columns the title and notes columns shrank to nothing, so "see the notes column"
    pointed at no column; at 44 ids, prices and totals became "…". The pictures go first,
    then the cart is shown a line after another, a field a row."""
    repriced = item(seller, 1000, 1, title="A fairly long title for a narrow terminal")
    steady = item(seller, 99999, 5, title="Hat")
    assert buyer(f"add_to_cart {repriced}", f"add_to_cart {steady}").code == 0
    seller.call(UpdateImage(id=0, image_id=repriced, price_cents=1250))
    for command in ("view_cart", "checkout --yes"):
        done = run_client(
            buyer.server,
            f"login {buyer.name}",
            command,
            config_dir=buyer.config_dir,
            password=PASSWORD,
            extra_env={"COLUMNS": str(columns), "VITRINE_GRAPHICS": "blocks"},
        )
        out = done.stdout
        assert "…" not in out, out
        table = out[: out.index("Total at current prices")].splitlines()[:-1]
        assert table and all(len(line) <= columns for line in table), out  # sentences wrap
        words = out.split()
        for number in (str(repriced), str(steady), "12.50", "999.99"):
            assert number in words, (number, out)
        notes = " ".join(words)
        assert "price changed: was 10.00, now 12.50" in notes, out
        assert "notes" in words, out
        assert "▀" not in out and "▄" not in out, out  # no room for pictures
    assert (
        "1 line needs attention; see the notes."
        in run_client(
            buyer.server,
            f"login {buyer.name}",
            "view_cart",
            config_dir=buyer.config_dir,
            password=PASSWORD,
            extra_env={"COLUMNS": str(columns)},
        ).stdout
    )
    assert cart_lines(buyer) == [(repriced, 1), (steady, 1)]
