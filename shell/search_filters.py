"""The filters that searches share (--tags, --min-price, --max-price, --in-stock).

Search by image and search by colour take the same filters, and the server applies them before
results are cut to a batch; one definition keeps their flags, checks and wording identical.
"""

from __future__ import annotations

import argparse

from protocol.catalog import Filters
from shell.app import CommandFailed
from shell.image_commands import add_tag_list_argument
from shell.text import printable
from util.money import format_cents, price_arg


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    add_tag_list_argument(
        parser, "--tags", "only images carrying all these tags", per="in a search filter"
    )
    parser.add_argument(
        "--min-price", type=price_arg, metavar="12.50", help="only images at this price or more"
    )
    parser.add_argument(
        "--max-price", type=price_arg, metavar="40", help="only images at this price or less"
    )
    parser.add_argument(
        "--in-stock", action="store_true", help="only images with at least one unit in stock"
    )


def filters_from(args: argparse.Namespace) -> Filters:
    if (
        args.min_price is not None
        and args.max_price is not None
        and args.min_price > args.max_price
    ):
        raise CommandFailed(
            f"--min-price {format_cents(args.min_price)} is above --max-price "
            f"{format_cents(args.max_price)}."
        )
    return Filters(
        tags=list(args.tags),
        min_price_cents=args.min_price,
        max_price_cents=args.max_price,
        in_stock=args.in_stock,
    )


def describe(filters: Filters) -> list[str]:
    """Phrases for the listing's title, e.g. ["tagged dress", "up to 40.00", "in stock"]."""
    parts = []
    if filters.tags:
        parts.append("tagged " + " and ".join(printable(t) for t in filters.tags))
    if filters.min_price_cents is not None:
        parts.append(f"from {format_cents(filters.min_price_cents)}")
    if filters.max_price_cents is not None:
        parts.append(f"up to {format_cents(filters.max_price_cents)}")
    if filters.in_stock:
        parts.append("in stock")
    return parts
