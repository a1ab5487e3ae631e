"""Prices and quantities as people type them, turned into the integers the wire carries.

Money is integer cents end to end (../shared/DESIGN.md): a float would turn 0.1 + 0.2 into
0.30000000000000004 and a price into something no till agrees with. Text is parsed with `decimal`
only after a strict pattern check, so inputs Decimal would happily accept ("1e3", "NaN",
"Infinity", "1_000") are refused with a sentence instead of becoming surprising numbers.

Each parser raises `ValueError` with a message a person can act on; argparse `type=` wrappers
turn that into a usage error.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal
from typing import Final, NamedTuple

from protocol.limits import MAX_CENTS, MAX_QUANTITY

# [0-9], not \d: \d also matches other scripts' digits, which Decimal would accept too.
_PRICE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_DECIMALS: Final = re.compile(r"[0-9]*\.([0-9]+)")
#: A quantity's digits; shell.cart_commands reads a cart's quantities with it too.
QUANTITY_DIGITS: Final = re.compile(r"[0-9]+")


def _shown(text: str) -> str:
    """The input as messages quote it: bounded, so a pasted wall of digits stays one line."""
    text = text.strip()
    return text if len(text) <= 24 else text[:20] + "…"


def parse_price(text: str) -> int:
    """ "12.50" -> 1250. Refuses negative, signed (+5), non-numeric, more than two decimals,
    absurdly large.

    A price is a number, not a string of digits: "1.230" is 1.23 (zeros past the cents add no
    precision) and "-0" is 0 (nothing below zero), as a person or a spreadsheet may write them.
    """
    raw = text.strip()
    if raw.startswith("-"):
        if _PRICE.fullmatch(raw[1:]) and not raw[1:].strip(".0"):
            return 0  # -0, -0.00, -.0: zero with a sign, not a negative price
        raise ValueError(f"A price cannot be negative ({_shown(raw)}); give 0 or more, like 12.50.")
    if raw.startswith("+"):
        # update_image's --quantity reads +5 as "add 5"; reading --price +5 as "5.00" on the
        # same command line silently replaced the price of a seller who meant to raise it.
        plain = raw[1:].strip()
        raise ValueError(
            f"{_shown(raw)} is not a price: prices are set, not changed by an amount"
            + (f"; to set it to {plain} write {plain}." if _PRICE.fullmatch(plain) else ".")
        )
    if "," in raw and _PRICE.fullmatch(raw.replace(",", ".")):
        raise ValueError(f"Write prices with a decimal point, not a comma: {raw.replace(',', '.')}")
    if not _PRICE.fullmatch(raw):
        raise ValueError(f"{_shown(text)!r} is not a price; write it like 12.50 or 12.")
    decimals = _DECIMALS.fullmatch(raw)
    if decimals and len(decimals.group(1).rstrip("0")) > 2:
        raise ValueError(f"{_shown(raw)} has more than two decimals; prices are whole cents.")
    whole = raw.partition(".")[0].lstrip("0")
    # Length first, so a thousand-digit paste is refused before any arithmetic on it.
    if len(whole) > len(str(MAX_CENTS // 100)) or int(Decimal(raw) * 100) > MAX_CENTS:
        raise ValueError(
            f"{_shown(raw)} is more than the largest price accepted, {format_cents(MAX_CENTS)}."
        )
    return int(Decimal(raw) * 100)


def parse_quantity(text: str) -> int:
    """A stock count: a whole number from 0 to MAX_QUANTITY.

    A leading "+" is read as the number, which is right only where there is nothing to add to:
    add_image's first stock, add_to_cart's units (which add anyway). A command that replaces a
    count already there must look at the sign first (parse_stock_change; update_cart's
    shell.cart_commands.typed_count), or "+5" silently sets what was meant to be added.
    """
    raw = text.strip()
    if raw.startswith("-") and QUANTITY_DIGITS.fullmatch(raw[1:]):
        raise ValueError(f"A quantity cannot be negative ({_shown(raw)}); give 0 or more.")
    if raw.startswith("+"):
        raw = raw[1:]
    if not QUANTITY_DIGITS.fullmatch(raw):
        raise ValueError(f"{_shown(text)!r} is not a quantity; give a whole number like 3.")
    if len(raw.lstrip("0")) > len(str(MAX_QUANTITY)) or int(raw) > MAX_QUANTITY:
        raise ValueError(f"{_shown(raw)} is more than the largest quantity, {MAX_QUANTITY}.")
    return int(raw)


def format_cents(cents: int) -> str:
    """1250 -> "12.50": the decimal string listings and --json show (never a float)."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def price_arg(text: str) -> int:
    """argparse `type=` for prices: the parser reports the message as a usage error."""
    try:
        return parse_price(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class StockChange(NamedTuple):
    """update_image's --quantity: a count to set, or (`relative`) an amount to add or take."""

    amount: int
    relative: bool


def parse_stock_change(text: str) -> StockChange:
    """ "7" sets the stock to 7; "+5" and "-2" move it by that much from whatever it is when the
    server applies them, so a restock cannot undo the sales made since the seller last looked.

    A bare number keeps its old meaning; only a sign makes the change relative. "+5" used to be
    read as 5, which silently replaced the stock of a seller who meant to add to it.
    """
    raw = text.strip()
    if raw[:1] in ("+", "-"):
        sign, digits = (-1 if raw[0] == "-" else 1), raw[1:]
        if not QUANTITY_DIGITS.fullmatch(digits):
            raise ValueError(
                f"{_shown(text)!r} is not a change of stock; write +5 to add 5, -2 to take 2, "
                "or 7 to set the count."
            )
        if len(digits.lstrip("0")) > len(str(MAX_QUANTITY)) or int(digits) > MAX_QUANTITY:
            raise ValueError(f"{_shown(raw)} is more than the largest quantity, {MAX_QUANTITY}.")
        return StockChange(sign * int(digits), relative=True)
    return StockChange(parse_quantity(raw), relative=False)


def stock_change_arg(text: str) -> StockChange:
    """argparse `type=` for update_image's --quantity."""
    try:
        return parse_stock_change(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quantity_arg(text: str) -> int:
    """argparse `type=` for stock counts."""
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
