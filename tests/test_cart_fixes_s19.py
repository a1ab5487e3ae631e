"""Cart fixes from QA round 19: strict quantities, the message after a repeated checkout, an
order placed whose cart cannot be saved, a cart file from a newer Vitrine, and a FIFO (or any
non-regular file) at the cart's path.

The buyers drive the real client.py against the real server.py (tests/test_cart_e2e.py's
fixtures). Only the full disk is faked: a wrapper around client.py makes the one save that
would drop the checkout's key fail with ENOSPC, since a full disk cannot be made here without a
mount.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import msgspec
import pytest

from protocol.catalog import CartLine, Checkout, OrderPlaced
from shell.cart_commands import signed_quantity
from shell.cart_store import CartError, CartFile, CartItem, CartStore, PendingCheckout
from shell.connection import ServerConnection
from tests import test_cart_e2e as e2e
from tests.servers import ROOT, ServerProcess, client_argv, run_client
from tests.test_cart_e2e import PASSWORD, Buyer, Result, cart_lines, item, stock_of

# The cart tests' server, seller and buyer.
server, home, seller, buyer = e2e.server, e2e.home, e2e.seller, e2e.buyer


# --- 1. quantities are ASCII digits --------------------------------------------------------------


@pytest.mark.parametrize("typed", ["1_0", "３", "٣", "1e1", "0x3", "--3", "-+3", "- 3", ""])
def test_a_cart_quantity_is_ascii_digits_only(typed: str) -> None:
    """int() took "1_0" as 10 and full-width or Arabic-Indic digits as 3."""
    with pytest.raises(argparse.ArgumentTypeError, match="is not a quantity; give a whole number"):
        signed_quantity(typed)


def test_signs_and_plain_numbers_still_reach_the_command() -> None:
    """The command explains a zero or a negative (update_cart names an id not in the cart
    first), so they still parse."""
    assert [signed_quantity(text) for text in ("3", " 12 ", "+4", "0", "-2", "007")] == [
        3,
        12,
        4,
        0,
        -2,
        7,
    ]


def test_odd_digits_put_nothing_in_the_cart(seller: ServerConnection, buyer: Buyer) -> None:
    image = item(seller, 500, 20, title="Strictly counted")
    for command in (f"add_to_cart {image} 1_0", f"add_to_cart {image} ٣"):
        refused = buyer(command)
        assert refused.code != 0, refused
        assert "is not a quantity; give a whole number like 3." in refused.err, refused
        assert cart_lines(buyer) == []
    assert buyer(f"add_to_cart {image} 2").code == 0
    refused = buyer(f"update_cart {image} ３")
    assert refused.code != 0 and "is not a quantity" in refused.err, refused
    assert cart_lines(buyer) == [(image, 2)]
    negative = buyer(f"update_cart {image} -1")
    assert negative.code != 0 and "must be 1 or more, not -1" in negative.err, negative


# --- 2. what a repeated checkout says stays ------------------------------------------------------


def lose_a_checkout(server: ServerProcess, home: Path, buyer: Buyer, lines: dict[int, int]) -> int:
    """A checkout whose answer was lost: its key written into the cart file as the shell does
    before sending, its order placed with that key over the wire. Returns the order id."""
    key = secrets.token_urlsafe(24)
    with buyer.store().edit() as cart:
        sent = [CartItem(image_id=i, quantity=q, price_cents=0) for i, q in lines.items()]
        cart.pending = PendingCheckout(key=key, lines=sent, sent_at=time.time())
    conn = server.user_connection(home, buyer.name, PASSWORD)
    try:
        request = Checkout(
            id=0, key=key, lines=[CartLine(image_id=i, quantity=q) for i, q in lines.items()]
        )
        return conn.call(request, OrderPlaced).order.id
    finally:
        conn.close()


def test_a_line_the_earlier_order_bought_part_of_is_not_called_missing_from_it(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: Buyer
) -> None:
    """QA: the earlier order held line #50 (1 unit), the buyer then set it to 3, and the
    repeated checkout said "1 line of your cart was not in that order" of #50."""
    raised = item(seller, 700, 9, title="Raised since")
    added = item(seller, 300, 9, title="Added since")
    assert buyer(f"add_to_cart {raised} 1").code == 0
    order = lose_a_checkout(server, home, buyer, {raised: 1})
    assert buyer(f"update_cart {raised} 3", f"add_to_cart {added}").code == 0

    again = buyer("checkout --yes --no-images")
    assert again.code != 0, again
    assert f"Order #{order} had already been placed" in again.out, again
    assert "what it bought left your cart." in again.out, again
    err = " ".join(again.err.split())
    assert f"1 line of your cart was not in that order and stays in it (#{added})" in err, again
    assert (
        f"that order bought 1 of the 3 units of #{raised} (Raised since) in your cart; "
        "the other 2 stay in it" in err
    ), again
    assert "Run checkout again to buy 3 items." in err, again
    assert cart_lines(buyer) == [(raised, 2), (added, 1)]
    assert stock_of(seller, raised, added) == {raised: 8, added: 9}


def test_only_partly_bought_lines_are_not_called_lines_outside_the_order(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: Buyer
) -> None:
    raised = item(seller, 700, 9, title="Only raised")
    assert buyer(f"add_to_cart {raised} 2").code == 0
    lose_a_checkout(server, home, buyer, {raised: 2})
    assert buyer(f"update_cart {raised} 5").code == 0
    again = buyer("checkout --yes --json")
    assert again.code != 0 and again.json_lines()[0]["placed_earlier"] is True, again
    err = " ".join(again.err.split())
    assert "not in that order" not in err, again
    assert f"that order bought 2 of the 5 units of #{raised}" in err, again
    assert "the other 3 stay in it" in err, again
    assert cart_lines(buyer) == [(raised, 3)]


# --- 3. an order placed whose cart cannot be saved -----------------------------------------------

#: client.py, with the cart's save that would drop a checkout's key failing as on a full disk.
_FULL_DISK_CLIENT = textwrap.dedent(
    """
    import errno, runpy, sys
    sys.path.insert(0, {root!r})
    import shell.cart_store as cart_store

    real = cart_store.write_atomically

    def full_disk(path, data):
        if b'"pending":{{' not in data and path.exists() and b'"pending":{{' in path.read_bytes():
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    cart_store.write_atomically = full_disk
    sys.argv[0] = {client!r}
    runpy.run_path({client!r}, run_name="__main__")
    """
)


def run_on_a_full_disk(buyer: Buyer, tmp_path: Path, *commands: str) -> Result:
    wrapper = tmp_path / "full_disk_client.py"
    wrapper.write_text(_FULL_DISK_CLIENT.format(root=str(ROOT), client=str(ROOT / "client.py")))
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD, "COLUMNS": "200"}
    done = subprocess.run(
        client_argv(
            buyer.server, buyer.config_dir, f"login {buyer.name}", *commands, program=wrapper
        ),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    result = Result(done)
    assert "Traceback" not in result.out + result.err, result
    return result


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_order_placed_whose_cart_cannot_be_saved_fails_and_says_what_to_do(
    seller: ServerConnection, buyer: Buyer, tmp_path: Path, as_json: bool
) -> None:
    """QA: "Order #7 was placed, but the cart could not be updated" and then "Order #7 placed
    ... The bought lines are still in your cart", exit 0, with the key still in the file."""
    image = item(seller, 1100, 5, title="Bought on a full disk")
    assert buyer(f"add_to_cart {image} 2").code == 0
    placed = run_on_a_full_disk(
        buyer, tmp_path, "checkout --yes" + (" --json" if as_json else " --no-images")
    )
    assert placed.code == 1, placed
    said = " ".join(placed.err.split())
    assert "was placed (2 items for 22.00), but your cart could not be saved" in said, placed
    assert "No space left on device" in said, placed
    assert "nothing is bought twice" in said, placed
    assert said.count("was placed") == 1, placed
    assert " placed: " not in placed.out, placed
    if as_json:
        assert [line["placed_earlier"] for line in placed.json_lines()] == [False], placed
    assert stock_of(seller, image) == {image: 3}
    assert cart_lines(buyer) == [(image, 2)]
    assert buyer.store().load().pending is not None

    # What the message promises: the next checkout reports that order and buys nothing twice.
    order = int(said.split("Order #", 1)[1].split(" ", 1)[0])
    again = buyer("checkout --yes --no-images")
    assert again.code == 0, again
    assert f"Order #{order} had already been placed" in again.out, again
    assert cart_lines(buyer) == [] and buyer.store().load().pending is None
    assert stock_of(seller, image) == {image: 3}


# --- 4. a cart file from a newer Vitrine ---------------------------------------------------------


NEWER = {
    "version": 2,
    "lines": [{"image_id": 5, "quantity": 1, "price_cents": 100, "currency": "EUR"}],
    "saved_for_later": [],
}


def test_a_cart_file_from_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    notices: list[str] = []
    cart_store = CartStore(tmp_path, "127.0.0.1:7878", "ann", notice=notices.append)
    cart_store.path.parent.mkdir(parents=True)
    content = json.dumps(NEWER).encode()
    cart_store.path.write_bytes(content)
    for use in (cart_store.load, lambda: cart_store.edit().__enter__()):
        with pytest.raises(CartError, match="written by a newer version of Vitrine") as refused:
            use()
        assert str(cart_store.path) in str(refused.value)
    assert cart_store.path.read_bytes() == content
    assert sorted(p.name for p in cart_store.path.parent.iterdir()) == ["ann.json", "ann.json.lock"]
    assert notices == []


@pytest.mark.parametrize("version", [0, -1, "2"])
def test_a_version_no_vitrine_wrote_is_still_damage(tmp_path: Path, version: object) -> None:
    cart_store = CartStore(tmp_path, "127.0.0.1:7878", "ann", notice=lambda _: None)
    cart_store.path.parent.mkdir(parents=True)
    cart_store.path.write_text(json.dumps({"version": version, "lines": []}))
    assert len(cart_store.load()) == 0
    assert any(".corrupt-" in p.name for p in cart_store.path.parent.iterdir())


def test_cart_commands_refuse_a_newer_cart_and_other_commands_work(buyer: Buyer) -> None:
    cart_file = buyer.cart_file
    cart_file.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps(NEWER).encode()
    cart_file.write_bytes(content)
    for command in ("view_cart", "add_to_cart 1", "checkout --yes", "clear_cart"):
        refused = buyer(command)
        assert refused.code != 0, refused
        said = " ".join(refused.err.split())
        assert "written by a newer version of Vitrine" in said, refused
        assert "damaged" not in said, refused
    assert cart_file.read_bytes() == content
    assert not [p for p in cart_file.parent.iterdir() if ".corrupt-" in p.name]
    assert buyer("orders --json").code == 0


# --- 5. only a regular file is read --------------------------------------------------------------


def test_a_fifo_at_the_cart_path_is_refused_without_waiting(buyer: Buyer) -> None:
    """QA: `view_cart` hung for ever on a FIFO (read_bytes waits for a writer)."""
    cart_file = buyer.cart_file
    cart_file.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(cart_file)
    done = run_client(
        buyer.server,
        f"login {buyer.name}",
        "view_cart",
        config_dir=buyer.config_dir,
        password=PASSWORD,
        timeout=30,
    )
    assert done.returncode != 0, done
    said = " ".join(done.stderr.split())
    assert f"Cannot read the cart {cart_file}: it is a FIFO (named pipe), not a regular" in said
    assert "Traceback" not in done.stderr
    os.unlink(cart_file)
    assert buyer("view_cart").code == 0


def unblock_a_reader_later(path: Path, done: threading.Event) -> threading.Thread:
    """Without the fix, load() waits on the FIFO for ever: a writer that comes after a while
    (unless the test is done first) gives the reader an end of file, so the test fails
    instead of hanging."""

    def writer() -> None:
        if not done.wait(10):
            with open(path, "wb"):
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_nothing_but_a_regular_file_is_read_as_a_cart(tmp_path: Path, kind: str) -> None:
    cart_store = CartStore(tmp_path, "127.0.0.1:7878", "ann", notice=lambda _: None)
    path = cart_store.path
    path.parent.mkdir(parents=True)
    held, done, unblocker = None, threading.Event(), None
    if kind == "fifo":
        os.mkfifo(path)
        unblocker = unblock_a_reader_later(path, done)
    elif kind == "socket":
        held = socket.socket(socket.AF_UNIX)
        held.bind(str(path))
    elif kind == "device":
        # /dev/null, not /dev/zero: without the fix, reading /dev/zero to its end eats all memory.
        path.symlink_to("/dev/null")
    else:
        path.mkdir()
    try:
        with pytest.raises(CartError, match=f"Cannot read the cart {path}: it is a"):
            cart_store.load()
    finally:
        done.set()
        if unblocker is not None:
            unblocker.join()
        if held is not None:
            held.close()
    assert path.exists() or path.is_symlink()


def test_a_regular_cart_still_reads(tmp_path: Path) -> None:
    cart_store = CartStore(tmp_path, "127.0.0.1:7878", "ann", notice=lambda _: None)
    with cart_store.edit() as cart:
        cart.add(4, 2, 100, "kept")
    stored = msgspec.json.decode(cart_store.path.read_bytes(), type=CartFile)
    assert [(line.image_id, line.quantity) for line in stored.lines] == [(4, 2)]
    assert [(line.image_id, line.quantity) for line in cart_store.load().lines] == [(4, 2)]
