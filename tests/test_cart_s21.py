"""Cart fixes from QA round 21: a signed count given to update_cart, a checkout the server
refused before reading it (the session had ended), and one limit for cart quantities.

The buyers drive the real client.py against the real server.py (tests/test_cart_e2e.py's
fixtures); the checkout whose session ends at the question runs at a pseudo-terminal.
"""

from __future__ import annotations

import argparse
import re
import secrets

import pytest

from protocol.catalog import CartLine, Checkout, OrderPlaced
from protocol.limits import MAX_LINE_QUANTITY, MAX_QUANTITY
from protocol.messages import ChangePassword, Session
from shell.cart_commands import TypedCount, signed_quantity, typed_count
from shell.cart_store import CartItem, PendingCheckout
from shell.connection import ServerConnection
from tests import test_cart_e2e as e2e
from tests.servers import ServerProcess
from tests.test_cart_e2e import PASSWORD, Buyer, cart_lines, item, stock_of, terminal

# The cart tests' server, seller and buyer.
server, home, seller, buyer = e2e.server, e2e.home, e2e.seller, e2e.buyer

LINE_LIMIT = f"At most {MAX_LINE_QUANTITY} units of one image fit on a line."


# --- 1. update_cart sets a count: a sign is refused, never read as the count ----------------------


def test_update_cart_refuses_a_plus_sign_instead_of_setting_the_count(
    seller: ServerConnection, buyer: Buyer
) -> None:
    """QA: with 5 in the cart, `update_cart 3 +2` said "The cart now holds 2 x ...": the
    buyer who meant to add 2 was left with 2."""
    image = item(seller, 400, 20, title="Counted")
    assert buyer(f"add_to_cart {image} 5").code == 0
    refused = buyer(f"update_cart {image} +2")
    assert refused.code == 1, refused
    err = " ".join(refused.err.split())
    assert "update_cart sets how many the cart holds" in err, refused
    assert f"add_to_cart {image} 2 adds 2 (7 in all)" in err, refused
    assert f"update_cart {image} 7 sets the line to 7" in err, refused
    assert "The cart now holds" not in refused.out + refused.err, refused
    assert cart_lines(buyer) == [(image, 5)]
    # add_to_cart adds whatever the sign: +2 there still means 2 more.
    added = buyer(f"add_to_cart {image} +2")
    assert added.code == 0 and "the cart holds 7 of it" in added.err, added
    assert cart_lines(buyer) == [(image, 7)]


@pytest.mark.parametrize(("typed", "shown"), [("-0", "-0"), ("+0", "+0"), ("-00", "-0")])
def test_a_signed_zero_does_not_remove_the_line(
    seller: ServerConnection, buyer: Buyer, typed: str, shown: str
) -> None:
    """QA: `update_cart 3 -0` silently removed the line."""
    image = item(seller, 400, 20, title="Kept")
    assert buyer(f"add_to_cart {image} 5").code == 0
    refused = buyer(f"update_cart {image} {typed}")
    assert refused.code == 1, refused
    err = " ".join(refused.err.split())
    assert f"{shown} is refused rather than read as 0" in err, refused
    assert f"remove_from_cart {image} takes the line out" in err, refused
    assert "Removed" not in err, refused
    assert cart_lines(buyer) == [(image, 5)]


def test_a_negative_count_says_what_to_type(seller: ServerConnection, buyer: Buyer) -> None:
    image = item(seller, 400, 20, title="Fewer")
    assert buyer(f"add_to_cart {image} 5").code == 0
    refused = buyer(f"update_cart {image} -2")
    err = " ".join(refused.err.split())
    assert refused.code == 1 and "not -2 (0 removes the line)" in err, refused
    assert f"update_cart {image} 3 leaves 3 of the 5 there" in err, refused
    everything = buyer(f"update_cart {image} -5")
    err = " ".join(everything.err.split())
    assert everything.code == 1 and f"remove_from_cart {image} takes the line out" in err
    assert f"update_cart {image} 0 leaves" not in err, everything
    assert cart_lines(buyer) == [(image, 5)]
    # A sign on an id not in the cart: that is what is said first.
    absent = buyer("update_cart 987654 +2")
    assert absent.code == 1 and "Image 987654 is not in your cart" in absent.err, absent
    # Plain counts keep their meaning.
    assert buyer(f"update_cart {image} 3").code == 0
    assert cart_lines(buyer) == [(image, 3)]
    assert buyer(f"update_cart {image} 0").code == 0
    assert cart_lines(buyer) == []


def test_typed_count_keeps_the_sign() -> None:
    assert [typed_count(text) for text in ("3", " +2 ", "-0", "007", "+0")] == [
        TypedCount(3, ""),
        TypedCount(2, "+"),
        TypedCount(0, "-"),
        TypedCount(7, ""),
        TypedCount(0, "+"),
    ]
    for typed in ("1_0", "３", "+-3", "- 3", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a quantity"):
            typed_count(typed)


# --- 2. a checkout the server refused unread ------------------------------------------------------


def end_the_session(server: ServerProcess, buyer: Buyer, new_password: str) -> ServerConnection:
    """Change the buyer's password from another connection, as another shell would: every
    other session of the buyer ends. Returns that connection, logged in anew."""
    other = server.user_connection(buyer.config_dir, buyer.name, PASSWORD)
    other.call(ChangePassword(id=0, old_password=PASSWORD, new_password=new_password), Session)
    return other


def logged_out_prompt(server: ServerProcess) -> str:
    """The prompt of a shell nobody is logged in to (the terminal draws what follows it)."""
    return f"vitrine {re.escape(server.address)}>"


def test_a_checkout_refused_for_an_ended_session_bought_nothing_and_logs_out(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """QA: the password changed in another shell while this one sat at [y/N]; the shell called
    the outcome unknown, kept the checkout's key, and view_cart went on warning. The server
    refuses a request of a connection whose session ended before it looks at it."""
    image = item(seller, 800, 5, title="Not bought")
    assert buyer(f"add_to_cart {image} 2").code == 0
    other = None
    try:
        with terminal(buyer) as child:
            child.sendline("checkout --no-images")
            child.expect(r"\[y/N\]")
            other = end_the_session(server, buyer, PASSWORD + " anew")
            child.sendline("y")
            child.expect(r"Not bought: the server refused the checkout before reading it")
            child.expect(r"nothing was bought; your cart is unchanged")
            child.expect(r"Log in again")
            child.expect(logged_out_prompt(server))
            assert "not known whether the order went through" not in child.before
        cart = buyer.store().load()
        assert cart.pending is None  # nothing was placed under the key: it is dropped
        assert [(line.image_id, line.quantity) for line in cart.lines] == [(image, 2)]
        assert stock_of(seller, image) == {image: 5}
    finally:
        if other is not None:  # the other tests log in with PASSWORD
            change_back = ChangePassword(
                id=0, old_password=PASSWORD + " anew", new_password=PASSWORD
            )
            other.call(change_back, Session)
            other.close()
    shown = buyer("view_cart --no-images")
    assert shown.code == 0 and "got no answer" not in shown.err, shown


def test_an_unread_resend_keeps_the_key_of_the_checkout_that_got_no_answer(
    server: ServerProcess, seller: ServerConnection, buyer: Buyer
) -> None:
    """Refused unread, a checkout sending an earlier key again says nothing about that earlier
    send: dropping the key would let the next checkout buy its lines a second time."""
    image = item(seller, 900, 5, title="Bought once")
    assert buyer(f"add_to_cart {image} 1").code == 0
    key = secrets.token_urlsafe(24)
    with buyer.store().edit() as cart:
        cart.pending = PendingCheckout(
            key=key, lines=[CartItem(image_id=image, quantity=1, price_cents=900)], sent_at=1.0
        )
    placer = server.user_connection(buyer.config_dir, buyer.name, PASSWORD)
    lost = Checkout(id=0, key=key, lines=[CartLine(image_id=image, quantity=1)])
    placer.call(lost, OrderPlaced)  # the earlier send went through; its answer was lost
    placer.close()
    other = None
    try:
        with terminal(buyer) as child:
            child.sendline("checkout --no-images")
            child.expect(r"\[y/N\]")
            other = end_the_session(server, buyer, PASSWORD + " anew")
            child.sendline("y")
            child.expect(r"Not bought: the server refused the checkout before reading it")
            child.expect(r"still got no answer")
            child.expect(logged_out_prompt(server))
        cart = buyer.store().load()
        assert cart.pending is not None and cart.pending.key == key
        assert cart.pending.sent_at == 1.0  # the earlier send's, not this unread one's
    finally:
        if other is not None:
            change_back = ChangePassword(
                id=0, old_password=PASSWORD + " anew", new_password=PASSWORD
            )
            other.call(change_back, Session)
            other.close()
    again = buyer("checkout --yes --no-images")
    assert again.code == 0 and "had already been placed" in again.out, again
    assert stock_of(seller, image) == {image: 4}  # bought once
    assert cart_lines(buyer) == []


# --- 3. one limit for a cart line's quantity -----------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        str(MAX_LINE_QUANTITY + 1),
        "2000000",
        str(MAX_QUANTITY),
        "99999999999999999999999",
        "+99999999999999999999999",
        "-" + "9" * 5000,
    ],
)
def test_a_quantity_past_a_line_is_refused_with_the_lines_limit(typed: str) -> None:
    """QA: 2000000 was refused as past a line's limit (1000000) but a longer number as past
    the stock limit (1000000000), as if that were the cart's."""
    for parse in (signed_quantity, typed_count):
        with pytest.raises(argparse.ArgumentTypeError) as caught:
            parse(typed)
        assert str(caught.value) == LINE_LIMIT
    assert signed_quantity(str(MAX_LINE_QUANTITY)) == MAX_LINE_QUANTITY


def test_add_to_cart_names_the_line_limit(seller: ServerConnection, buyer: Buyer) -> None:
    image = item(seller, 100, 5, title="Plenty")
    refused = buyer(f"add_to_cart {image} 99999999999999999999999")
    assert refused.code != 0 and LINE_LIMIT in refused.err, refused
    assert str(MAX_QUANTITY) not in refused.err, refused
    assert cart_lines(buyer) == []
