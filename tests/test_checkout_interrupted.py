"""A shell that dies while its order is in flight must not make the next checkout buy again.

The shell writes a random checkout key into the cart file before sending the order, and the
server keeps it with the order: the next `checkout` sends the same key and gets the order
placed earlier instead of a second one. Here the real client.py, at a pseudo-terminal, confirms a
checkout while the server is stopped (SIGSTOP), so the order waits unanswered in the server's
receive queue; the shell is then killed (SIGTERM as `timeout` sends, SIGHUP as a closed
terminal does, SIGKILL), the server resumed, and `checkout --yes` run again.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import msgspec
import pytest

from protocol.catalog import CartLine, Checkout, OrderPlaced
from shell.cart_store import CartFile, CartItem, PendingCheckout
from shell.connection import ServerConnection
from tests import test_cart_e2e as e2e
from tests.servers import ServerProcess
from tests.test_cart_e2e import (
    PASSWORD,
    Buyer,
    cart_lines,
    confirm_while_stopped,
    item,
    stock_of,
    terminal,
)

# The cart tests' server, seller and buyer.
server, home, seller, buyer = e2e.server, e2e.home, e2e.seller, e2e.buyer


def pending_in(cart_file: Path) -> PendingCheckout | None:
    """The cart file's pending checkout, read without its lock (a checkout may hold it)."""
    return msgspec.json.decode(cart_file.read_bytes(), type=CartFile).pending


def wait_for_stock(conn: ServerConnection, image: int, wanted: int) -> bool:
    """True once the image's stock is `wanted`, False after a while."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if stock_of(conn, image) == {image: wanted}:
            return True
        time.sleep(0.1)
    return False


def kill_a_sent_checkout(server: ServerProcess, buyer: Buyer, signum: signal.Signals) -> str:
    """Confirm a checkout at a terminal with the server stopped, kill the shell once the order
    waits in the server's receive queue, resume the server; return what the shell printed."""
    assert server.process is not None
    cart_file = buyer.cart_file  # asks the server for its id: not while it is stopped
    try:
        with terminal(buyer) as child:
            child.sendline("checkout --no-images")
            confirm_while_stopped(child, server)
            assert pending_in(cart_file) is not None, "the key was not written down first"
            os.kill(child.pid, signum)
            child.expect(pytest.importorskip("pexpect").EOF)
            child.wait()
            said = child.before
            if signum != signal.SIGKILL:
                assert "not known whether the order went through" in said, said
                assert f"told to end ({signum.name})" in said, said
                assert "which failed" not in said, said
            assert child.signalstatus == signum, (child.exitstatus, child.signalstatus, said)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    return said


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_shell_killed_after_sending_its_order_does_not_buy_twice(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer, signum: signal.Signals
) -> None:
    """QA bought image 9 twice (orders #5 and #6): the killed shell left the bought lines in
    the cart and nothing saying a checkout was in flight."""
    bought = item(seller, 1500, 5, title=f"Bought once ({signum.name})")
    other = item(seller, 200, 5, title="Added afterwards")
    assert buyer(f"add_to_cart {bought} 2").code == 0
    kill_a_sent_checkout(server, buyer, signum)
    # The resumed server may place the order the dead shell sent (when its database call had
    # started) or drop it with the connection: the key makes either safe.
    placed_by_dead_shell = wait_for_stock(seller, bought, 3)
    assert cart_lines(buyer) == [(bought, 2)]
    seen = buyer("view_cart --json")
    assert seen.json_lines()[-1]["checkout_pending"] is True, seen
    assert "got no answer" in seen.err, seen

    again = buyer("checkout --yes")
    assert again.code == 0, again
    if placed_by_dead_shell:
        assert "had already been placed by the checkout sent at" in again.out, again
        assert "Nothing more was bought" in again.out, again
    else:
        assert "placed: 2 items for 30.00" in again.out, again
    assert cart_lines(buyer) == []
    assert buyer.store().load().pending is None
    orders = buyer("orders --json").json_lines()
    assert [[(line["image_id"], line["quantity"]) for line in o["lines"]] for o in orders] == [
        [(bought, 2)]
    ]
    assert stock_of(seller, bought) == {bought: 3}
    # The key is spent: the next checkout buys what is in the cart then.
    assert buyer(f"add_to_cart {other}").code == 0
    placed = buyer("checkout --yes --json")
    assert placed.code == 0, placed
    assert placed.json_lines()[0]["placed_earlier"] is False
    assert stock_of(seller, bought, other) == {bought: 3, other: 4}


def test_the_next_checkout_reports_the_order_its_key_placed(
    server: ServerProcess, home: Path, seller: ServerConnection, buyer: Buyer
) -> None:
    """The order the lost checkout placed is the answer, whatever the cart holds now: its lines
    leave the cart, nothing is bought again, and a line added since stays (not bought, and the
    command fails, so a script knows). The lost checkout is made by hand, deterministically:
    its key written into the cart file, its order placed with that key over the wire."""
    first = item(seller, 800, 5, title="In the lost checkout")
    later = item(seller, 900, 5, title="Added after it")
    assert buyer(f"add_to_cart {first} 2").code == 0
    key = secrets.token_urlsafe(24)
    with buyer.store().edit() as cart:
        sent = [CartItem(image_id=first, quantity=2, price_cents=800, title="")]
        cart.pending = PendingCheckout(key=key, lines=sent, sent_at=time.time())
    conn = server.user_connection(home, buyer.name, PASSWORD)
    try:
        lost = conn.call(
            Checkout(id=0, key=key, lines=[CartLine(image_id=first, quantity=2)]), OrderPlaced
        )
    finally:
        conn.close()
    assert buyer(f"add_to_cart {later}").code == 0
    shown = buyer("view_cart")
    assert "got no answer" in shown.err, shown

    again = buyer("checkout --yes")
    assert again.code != 0, again
    assert f"Order #{lost.order.id} had already been placed" in again.out, again
    assert "1 line of your cart was not in that order" in again.err, again
    assert cart_lines(buyer) == [(later, 1)]
    assert buyer.store().load().pending is None
    assert stock_of(seller, first, later) == {first: 3, later: 5}
    bought = buyer("checkout --yes --json")
    assert bought.code == 0 and bought.json_lines()[0]["placed_earlier"] is False, bought
    assert cart_lines(buyer) == [] and stock_of(seller, first, later) == {first: 3, later: 4}
