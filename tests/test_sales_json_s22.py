"""`sales --json` on an empty page (QA, session 22): QA read "then one totals object" in
docs/shell.md's table and `sales --help` and expected a totals line of zeros, as `view_cart`
prints for an empty cart. A page with nothing sold prints no line by design (a script paging
with `--before` stops when a call prints nothing; `tests/test_piped_output.py` pins that), so
the help and the table now say it where the totals object is promised."""

from __future__ import annotations

import re

from shell.order_commands import OrderHistoryCommands
from tests.servers import ROOT


def test_sales_help_says_an_empty_page_prints_no_line() -> None:
    text = " ".join(OrderHistoryCommands.sales_parser.format_help().split())
    assert "then one with the totals (of this page)" in text
    assert "a page with nothing sold on it prints no line" in text, text


def test_the_json_table_says_it_where_the_totals_are_promised() -> None:
    doc = (ROOT / "docs" / "shell.md").read_text(encoding="utf-8")
    (row,) = [line for line in doc.splitlines() if re.match(r"\| `sales` \| a sold line", line)]
    assert "one totals object" in row and "prints no line" in row, row
