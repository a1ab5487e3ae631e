"""Prices and quantities: text in, integer cents out, and the refusals people will hit."""

from __future__ import annotations

import argparse
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol.catalog import UploadImage
from util.money import (
    MAX_CENTS,
    MAX_QUANTITY,
    StockChange,
    format_cents,
    parse_price,
    parse_quantity,
    parse_stock_change,
    price_arg,
    quantity_arg,
    stock_change_arg,
)


@given(st.integers(min_value=0, max_value=MAX_CENTS))
def test_format_then_parse_round_trips(cents: int) -> None:
    assert parse_price(format_cents(cents)) == cents


@given(st.integers(min_value=0, max_value=MAX_CENTS))
def test_formatted_price_is_the_exact_decimal(cents: int) -> None:
    assert Decimal(format_cents(cents)) * 100 == cents
    assert format_cents(cents).split(".")[1].isdigit()
    assert len(format_cents(cents).split(".")[1]) == 2


@given(st.integers(min_value=0, max_value=MAX_CENTS), st.integers(min_value=1, max_value=40))
def test_zeros_past_the_cents_change_nothing(cents: int, zeros: int) -> None:
    assert parse_price(format_cents(cents) + "0" * zeros) == cents


@given(st.integers(min_value=0, max_value=MAX_CENTS // 100), st.integers(min_value=1, max_value=9))
def test_a_third_decimal_that_is_not_zero_is_refused(whole: int, third: int) -> None:
    with pytest.raises(ValueError, match="more than two decimals"):
        parse_price(f"{whole}.00{third}0")


@given(st.sampled_from(["0", "00", "0.", ".0", "0.0", "0.00", "0.000"]))
def test_minus_zero_is_zero(zero: str) -> None:
    assert parse_price("-" + zero) == 0


@given(st.integers(min_value=1, max_value=MAX_CENTS))
def test_a_negative_price_is_refused(cents: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_price("-" + format_cents(cents))


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("12.50", 1250),
        ("12.5", 1250),
        ("12", 1200),
        ("12.", 1200),
        (".05", 5),
        (" 0 ", 0),
        ("1.230", 123),  # zeros past the cents are the same number, not more precision
        ("12.500", 1250),
        ("0.0500", 5),
        ("-0", 0),  # zero with a sign is zero, not a negative price
        ("-0.00", 0),
        ("-.0", 0),
        ("-0.", 0),
    ],
)
def test_usual_spellings(text: str, cents: int) -> None:
    assert parse_price(text) == cents


def test_no_float_rounding() -> None:
    # 0.29 * 100 is 28.999999999999996 in binary floating point.
    assert parse_price("0.29") == 29
    assert parse_price("1.15") == 115


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-1", "negative"),
        ("-0.01", "negative"),
        ("abc", "not a price"),
        ("", "not a price"),
        ("1e3", "not a price"),
        ("NaN", "not a price"),
        ("Infinity", "not a price"),
        ("1_000", "not a price"),
        ("١٢", "not a price"),  # Arabic-Indic digits: Decimal would take them
        ("12.505", "more than two decimals"),
        ("0.001", "more than two decimals"),
        ("1.235", "more than two decimals"),
        ("1.2350", "more than two decimals"),
        ("0.0010", "more than two decimals"),
        ("-0.001", "negative"),
        ("-0.01", "negative"),
        ("-0.0.0", "negative"),
        ("-", "negative"),
        ("12,50", "decimal point"),
        ("100000000.01", "largest price"),
        ("9" * 5000, "largest price"),
    ],
)
def test_bad_prices_are_refused_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        parse_price(text)
    assert len(str(caught.value)) < 200  # a pasted wall of digits is not echoed back whole


def test_largest_price_passes_the_wire_contract() -> None:
    """The local limit is the wire's: the largest accepted price decodes on the other side."""
    request = UploadImage(id=1, filename="a.jpg", data=b"x", price_cents=parse_price("100000000"))
    assert codec.decode_request(codec.encode(request)) == request
    too_big = msgspec.structs.replace(request, price_cents=MAX_CENTS + 1)
    with pytest.raises(codec.MessageError):
        codec.decode_request(codec.encode(too_big))


@pytest.mark.parametrize(("text", "count"), [("0", 0), ("3", 3), (" 12 ", 12), ("+4", 4)])
def test_quantities(text: str, count: int) -> None:
    assert parse_quantity(text) == count


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-3", "negative"),
        ("2.5", "whole number"),
        ("three", "whole number"),
        ("", "whole number"),
        (str(MAX_QUANTITY + 1), "largest quantity"),
        ("9" * 5000, "largest quantity"),
    ],
)
def test_bad_quantities_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "change"),
    [
        ("7", StockChange(7, relative=False)),
        (" 0 ", StockChange(0, relative=False)),
        ("+5", StockChange(5, relative=True)),
        ("-2", StockChange(-2, relative=True)),
        ("+0", StockChange(0, relative=True)),
        (f"-{MAX_QUANTITY}", StockChange(-MAX_QUANTITY, relative=True)),
    ],
)
def test_stock_changes_set_without_a_sign_and_move_with_one(text: str, change: StockChange) -> None:
    assert parse_stock_change(text) == change


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("+", "not a change of stock"),
        ("-x", "not a change of stock"),
        ("+-3", "not a change of stock"),
        ("+2.5", "not a change of stock"),
        ("2.5", "whole number"),
        (f"+{MAX_QUANTITY + 1}", "largest quantity"),
        ("-" + "9" * 5000, "largest quantity"),
    ],
)
def test_bad_stock_changes_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_stock_change(text)


def test_a_signed_stock_change_reads_as_a_value_not_a_flag() -> None:
    """argparse takes "-2" for an option unless the parser has none that look like numbers."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--quantity", type=stock_change_arg)
    assert parser.parse_args(["--quantity", "-2"]).quantity == StockChange(-2, relative=True)


def test_argparse_wrappers_report_usage_errors() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--price", type=price_arg)
    parser.add_argument("--quantity", type=quantity_arg)
    assert parser.parse_args(["--price", "3.10", "--quantity", "2"]).price == 310
    with pytest.raises(argparse.ArgumentError, match="negative"):
        parser.parse_args(["--price=-3"])
    assert parser.parse_args(["--price=-0"]).price == 0
    assert parser.parse_args(["--price", "12.500"]).price == 1250
    with pytest.raises(argparse.ArgumentError, match="whole number"):
        parser.parse_args(["--quantity", "1.5"])
