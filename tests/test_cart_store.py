"""The local cart file: where it lives, what it allows, atomic saves, corruption and two writers."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from protocol.limits import MAX_ORDER_LINES
from shell.cart_store import (
    Cart,
    CartError,
    CartItem,
    CartStore,
    NotInCart,
    PendingCheckout,
    cart_path,
)

SERVER = "127.0.0.1:7878"


def store(tmp_path: Path, user: str = "ann", server: str = SERVER) -> tuple[CartStore, list[str]]:
    notices: list[str] = []
    return CartStore(tmp_path, server, user, notice=notices.append), notices


def test_paths_are_per_server_and_user_and_filename_safe(tmp_path: Path) -> None:
    servers = ["127.0.0.1:7878", "127.0.0.1:7879", "[::1]:7878", "::1_7878", "a/b:1", ".."]
    paths = {cart_path(tmp_path, server, user) for server in servers for user in ("ann", "bob")}
    assert len(paths) == len(servers) * 2
    carts = tmp_path / "carts"
    for path in paths:
        assert path.parent.parent == carts, path
        assert path.parent.name not in (".", ".."), path
        assert "/" not in path.parent.name and ":" not in path.parent.name


def test_a_cart_survives_a_new_store_object(tmp_path: Path) -> None:
    first, _ = store(tmp_path)
    with first.edit() as cart:
        cart.add(5, 2, 1250, "Red dress")
        cart.add(7, 1, 300, "Hat")
    again, notices = store(tmp_path)
    cart = again.load()
    assert [(line.image_id, line.quantity, line.price_cents) for line in cart.lines] == [
        (5, 2, 1250),
        (7, 1, 300),
    ]
    assert notices == []
    other, _ = store(tmp_path, user="bob")
    assert len(other.load()) == 0
    elsewhere, _ = store(tmp_path, server="shop.example:7878")
    assert len(elsewhere.load()) == 0


def test_adding_again_merges_and_takes_the_price_just_seen() -> None:
    cart = Cart()
    cart.add(5, 2, 1250, "Red dress")
    cart.add(5, 3, 1300, "Red dress, new")
    assert len(cart) == 1
    line = cart.get(5)
    assert (line.quantity, line.price_cents, line.title) == (5, 1300, "Red dress, new")
    assert cart.units == 5


def test_quantities_and_unknown_ids_are_refused_clearly() -> None:
    cart = Cart()
    cart.add(5, 2, 100, "a")
    for bad in (0, -1):
        with pytest.raises(CartError, match="1 or more"):
            cart.add(6, bad, 100, "b")
    with pytest.raises(CartError, match="1 or more"):
        cart.set_quantity(5, -2)
    assert cart.get(5).quantity == 2
    with pytest.raises(NotInCart, match="not in your cart"):
        cart.set_quantity(9, 1)
    with pytest.raises(NotInCart):
        cart.remove(9)
    assert cart.set_quantity(5, 0) is None
    assert len(cart) == 0


def test_a_cart_has_a_line_limit() -> None:
    cart = Cart()
    for number in range(1, MAX_ORDER_LINES + 1):
        cart.add(number, 1, 100, "x")
    with pytest.raises(CartError, match=f"at most {MAX_ORDER_LINES}"):
        cart.add(MAX_ORDER_LINES + 1, 1, 100, "x")
    cart.add(1, 1, 100, "x")  # more of an image already there still fits
    assert cart.get(1).quantity == 2


def test_take_removes_what_was_bought_and_keeps_the_rest() -> None:
    cart = Cart()
    cart.add(1, 2, 100, "a")
    cart.add(2, 5, 100, "b")
    cart.add(3, 1, 100, "c")
    cart.take({1: 2, 2: 3, 9: 1})
    assert [(line.image_id, line.quantity) for line in cart.lines] == [(2, 2), (3, 1)]


def test_save_leaves_no_temporary_files_and_owner_only_permissions(tmp_path: Path) -> None:
    cart_store, _ = store(tmp_path)
    for number in range(1, 4):
        with cart_store.edit() as cart:
            cart.add(number, 1, 100, "x")
    names = sorted(path.name for path in cart_store.path.parent.iterdir())
    assert names == ["ann.json", "ann.json.lock"]
    assert cart_store.path.stat().st_mode & 0o077 == 0
    stored = json.loads(cart_store.path.read_text())
    assert stored["server"] == SERVER and stored["user"] == "ann"
    assert [line["image_id"] for line in stored["lines"]] == [1, 2, 3]


def test_a_failed_save_keeps_the_previous_cart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cart_store, _ = store(tmp_path)
    with cart_store.edit() as cart:
        cart.add(1, 1, 100, "kept")
    before = cart_store.path.read_bytes()

    def no_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(CartError, match="Cannot save the cart"), cart_store.edit() as cart:
        cart.add(2, 1, 100, "lost")
    monkeypatch.undo()
    assert cart_store.path.read_bytes() == before
    assert sorted(p.name for p in cart_store.path.parent.iterdir()) == ["ann.json", "ann.json.lock"]


def test_an_exception_inside_edit_saves_nothing(tmp_path: Path) -> None:
    cart_store, _ = store(tmp_path)
    with cart_store.edit() as cart:
        cart.add(1, 1, 100, "kept")
    with pytest.raises(CartError), cart_store.edit() as cart:
        cart.add(2, 1, 100, "dropped")
        raise CartError("refused halfway")
    assert [line.image_id for line in cart_store.load().lines] == [1]


def test_a_pending_checkout_saved_mid_edit_survives_a_death_before_the_end(
    tmp_path: Path,
) -> None:
    """Checkout writes its key down (save_now) before sending; a shell that dies before the
    edit ends (here: an exception) leaves the key, and the lines, for the next checkout."""
    cart_store, _ = store(tmp_path)
    with cart_store.edit() as cart:
        cart.add(1, 2, 100, "in flight")
    key = "k" * 32
    with pytest.raises(KeyboardInterrupt), cart_store.edit() as cart:
        sent = [CartItem(image_id=1, quantity=2, price_cents=100)]
        cart.pending = PendingCheckout(key=key, lines=sent, sent_at=5.0)
        cart_store.save_now(cart)
        raise KeyboardInterrupt  # killed while waiting for the answer
    again = cart_store.load()
    assert again.pending is not None and again.pending.key == key
    assert [(line.image_id, line.quantity) for line in again.pending.lines] == [(1, 2)]
    assert [(line.image_id, line.quantity) for line in again.lines] == [(1, 2)]
    with cart_store.edit() as cart:  # the answer saved: the key goes
        cart.pending = None
        cart.take({1: 2})
    assert cart_store.load().pending is None and cart_store.load().lines == []


def test_a_cart_file_from_before_pending_checkouts_still_loads(tmp_path: Path) -> None:
    cart_store, notices = store(tmp_path)
    cart_store.path.parent.mkdir(parents=True)
    cart_store.path.write_text(
        json.dumps({"version": 1, "lines": [{"image_id": 3, "quantity": 1, "price_cents": 5}]})
    )
    cart = cart_store.load()
    assert cart.pending is None and [line.image_id for line in cart.lines] == [3]
    assert notices == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b'{"version": 1, "lines": [{"image_id": "five", "quantity": 1, "price_cents": 1}]}',
        b'{"version": 1, "lines": [{"image_id": 5, "quantity": 0, "price_cents": 1}]}',
        b'{"version": 1, "lines": [{"image_id": 5, "quantity": 1, "price_cents": -3}]}',
        b'{"version": 0, "lines": []}',
        b"[1, 2, 3]",
    ],
    ids=[
        "empty",
        "truncated",
        "binary",
        "wrong-type",
        "zero-qty",
        "negative-price",
        "version",
        "list",
    ],
)
def test_a_corrupt_cart_is_moved_aside_with_a_notice(tmp_path: Path, content: bytes) -> None:
    cart_store, notices = store(tmp_path)
    cart_store.path.parent.mkdir(parents=True)
    cart_store.path.write_bytes(content)
    cart = cart_store.load()
    assert len(cart) == 0
    aside = [p for p in cart_store.path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert not cart_store.path.exists()
    assert len(notices) == 1 and str(aside[0]) in notices[0] and "moved aside" in notices[0]
    with cart_store.edit() as cart:  # and the cart works again afterwards
        cart.add(1, 1, 100, "fresh")
    assert len(cart_store.load()) == 1 and len(notices) == 1


def test_two_corruptions_in_one_second_keep_both_copies(tmp_path: Path) -> None:
    cart_store, notices = store(tmp_path)
    cart_store.path.parent.mkdir(parents=True)
    for content in (b"first", b"second"):
        cart_store.path.write_bytes(content)
        cart_store.load()
    kept = sorted(p.read_bytes() for p in cart_store.path.parent.iterdir() if ".corrupt-" in p.name)
    assert kept == [b"first", b"second"] and len(notices) == 2


def test_an_unreadable_cart_is_an_error_not_a_crash(tmp_path: Path) -> None:
    cart_store, _ = store(tmp_path)
    cart_store.path.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(CartError, match="Cannot read the cart"):
        cart_store.load()


def test_concurrent_editors_never_lose_a_line(tmp_path: Path) -> None:
    """Two shells of one user at once: the lock makes each read-modify-write whole."""
    barrier = threading.Barrier(8)

    def add_many(worker: int) -> None:
        own, _ = store(tmp_path)
        barrier.wait()
        for n in range(10):
            with own.edit() as cart:
                cart.add(worker * 100 + n + 1, 1, 100, "x")
                cart.add(9999, 1, 100, "shared")

    threads = [threading.Thread(target=add_many, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cart = store(tmp_path)[0].load()
    assert len(cart) == 8 * 10 + 1
    assert cart.get(9999).quantity == 80


def test_a_cart_held_by_another_shell_is_waited_for_then_given_up_on(tmp_path: Path) -> None:
    """A checkout holds the cart while the server places the order; another shell of the
    buyer says it waits, and gives up after its timeout instead of hanging with it."""
    holder, _ = store(tmp_path)
    waiter = CartStore(tmp_path, SERVER, "ann", notice=(notices := []).append, wait_s=0.8)
    with holder.edit() as cart:
        cart.add(5, 1, 100, "Hat")
        with pytest.raises(CartError, match="still in use by another shell of yours"):
            waiter.load()
    assert len(notices) == 1 and notices[0].startswith("Waiting for your cart")
    assert [line.image_id for line in waiter.load().lines] == [5]  # and once it is free


def test_a_waiting_shell_gets_the_cart_when_the_other_lets_go(tmp_path: Path) -> None:
    holder, _ = store(tmp_path)
    waiter, _ = store(tmp_path)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.edit() as cart:
            cart.add(5, 1, 100, "Hat")
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    threading.Timer(0.3, release.set).start()
    with waiter.edit() as cart:  # blocks until the holder has saved
        assert [line.image_id for line in cart.lines] == [5]
        cart.add(7, 1, 300, "Scarf")
    thread.join(10)
    assert [line.image_id for line in holder.load().lines] == [5, 7]
