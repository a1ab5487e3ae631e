"""What the finding commands make of their arguments, before anything is sent.

browse_by_tags, search_by_color and search_by_image take words that may start with '-' and
tags or prices that the wire would refuse: each mistake gets a sentence that says what to type,
and costs no round trip. A stand-in session records what would be sent.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.base import Request
from protocol.catalog import Batch, Browse, ColourSearch, Tag, Tags
from shell.app import CommandFailed, VitrineShell
from shell.browse_commands import BrowseCommands, browse_tags
from shell.colour_commands import ColourCommands
from shell.similar_commands import SimilarCommands
from tests.stand_in_session import RecordingSession


class ListingSession(RecordingSession):
    """Every listing request is recorded and answered with an empty batch."""

    def stream(self, request: Request) -> Iterator[Batch]:
        self.sent.append(request)
        yield Batch(id=request.id, items=[])


class Shell:
    """A shell with the finding commands: run a line, see what it said and would have sent."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.session = ListingSession()
        self.capsys = capsys
        self.shell = VitrineShell(
            self.session,  # type: ignore[arg-type]
            data_dir=tmp_path / "data",
            config_dir=tmp_path / "config",
            command_sets=[BrowseCommands(), ColourCommands(), SimilarCommands()],
            stdin=io.StringIO(),
            stdout=io.StringIO(),
        )

    def __call__(self, line: str) -> str:
        """Runs `line`; returns what it said on stderr, in one line (argparse wraps it)."""
        self.shell.exit_code = 0
        self.shell.onecmd_plus_hooks(line)
        return " ".join(self.capsys.readouterr().err.split())


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Shell:
    return Shell(tmp_path, capsys)


# --- words that start with '-' ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (  # no tag starts with '-': advice to type `-- -hat` would only meet the server's no
            "browse_by_tags -hat",
            "browse_by_tags has no option -hat, and a tag starts with a letter or a digit.",
        ),
        (
            "browse_by_tags straw -hat --batch 5",
            "browse_by_tags has no option -hat, and a tag starts with a letter or a digit.",
        ),
        (
            "search_by_color -h5",
            "search_by_color has no option -h5; to search for that colour, put the colour after "
            "--, as in: search_by_color -- -h5",
        ),
        (
            "search_by_image -hat.jpg --in-stock",
            "search_by_image has no option -hat.jpg; to search with that photo, put the photo "
            "after --, as in: search_by_image --in-stock -- -hat.jpg",
        ),
        (
            "search straw -hat",
            "search has no option -hat; to search for that word, put the words after --, "
            "as in: search -- straw -hat",
        ),
    ],
)
def test_a_word_starting_with_a_dash_is_explained(run: Shell, line: str, said: str) -> None:
    err = run(line)
    assert said in err, err
    assert "ignored explicit argument" not in err and "unrecognized" not in err, err
    assert run.shell.exit_code == 1 and run.session.sent == []


@pytest.mark.parametrize(
    ("line", "advice"),
    [
        ('search_by_color red --tags "straw hat",hat', '--tags "straw hat,hat"'),
        ("search_by_color red --tags 'straw hat',hat,cap", '--tags "straw hat,hat,cap"'),
        ('search_by_color red --in-stock --tags "straw hat",hat', '--tags "straw hat,hat"'),
    ],
)
def test_a_list_cut_by_a_leading_quote_says_to_quote_the_whole_list(
    run: Shell, line: str, advice: str
) -> None:
    """cmd2 groups `"straw hat"` and leaves `,hat` as a word of its own: argparse alone would
    only say "unrecognized arguments: ,hat"."""
    err = run(line)
    assert "quote the whole list instead, as in: " + advice in err, err
    assert "unrecognized" not in err, err
    assert run.shell.exit_code == 1 and run.session.sent == []


def test_an_unrelated_stray_word_is_still_named(run: Shell) -> None:
    """Only a list flag's value can have been cut by a quote."""
    err = run("search_by_color red --batch 5 ,x")
    assert "unrecognized arguments: ,x" in err, err


@pytest.mark.parametrize("typed", ["1_0", "１０", "١٠", "1e1", "0x10"])
def test_numbers_are_ascii_digits_only(run: Shell, typed: str) -> None:
    """int() takes `1_0` and non-ASCII digits: a typo would quietly be another number."""
    err = run(f"browse_by_tags straw --batch {typed}")
    assert f"{typed!r} is not a number of images" in err, err
    assert run.session.sent == []


@pytest.mark.parametrize("typed", ["1_2", "１２", "#١٢"])
def test_an_image_id_is_ascii_digits_only(run: Shell, typed: str) -> None:
    err = run(f"search_by_image --id {typed}")
    assert f"{typed!r} is not an image id (a number)" in err, err
    assert run.session.sent == []


def test_an_image_id_may_still_be_written_as_listings_show_it(run: Shell) -> None:
    run("search_by_image --id #12")
    assert run.session.sent and run.session.sent[0].image_id == 12  # type: ignore[attr-defined]


def test_a_bad_value_of_a_real_option_is_not_called_an_unknown_option(run: Shell) -> None:
    err = run("browse_by_tags straw --batch=0")
    assert "no option" not in err and "a batch holds 1 to 500 images" in err, err
    err = run("search_by_color red --tol x")  # an abbreviation argparse accepts
    assert "no option" not in err and "tolerance must be a number" in err, err


def test_after_a_double_dash_the_word_is_sent(run: Shell) -> None:
    run("search -- -hat")
    assert [request.text for request in run.session.sent] == ["-hat"]  # type: ignore[attr-defined]


def test_a_tag_after_a_double_dash_still_follows_the_tag_rule(run: Shell) -> None:
    err = run("browse_by_tags -- -hat")
    assert "Invalid tag '-hat'" in err and run.session.sent == [], err


def test_help_is_still_help(run: Shell) -> None:
    err = run("browse_by_tags -h")
    assert "no option" not in err and run.session.sent == []
    assert "List images that carry the given tags" in run.shell.stdout.getvalue()


def test_a_negative_hue_is_a_value_not_an_option(run: Shell) -> None:
    err = run("search_by_color -10")
    assert "no option" not in err and "hue -10 is out of range" in err, err


# --- browse_by_tags: commas and the wire's limits ---------------------------------------------


def test_a_tag_with_a_comma_says_tags_are_separated_by_spaces(run: Shell) -> None:
    err = run("browse_by_tags hat,straw")
    assert "Invalid tag 'hat,straw'" in err, err
    assert "browse_by_tags takes tags separated by spaces: browse_by_tags hat straw" in err, err
    assert run.shell.exit_code == 1 and run.session.sent == []


def test_the_comma_hint_gives_every_tag() -> None:
    with pytest.raises(CommandFailed, match=r"spaces: browse_by_tags red hat straw$"):
        browse_tags(["red", "hat, straw,"])


def _limit(annotated: Any) -> int:
    """The max_length a protocol.catalog type carries, so the tests follow the wire."""
    return int(annotated.__metadata__[0].max_length)


def test_the_limits_are_the_wires() -> None:
    assert browse_tags(["a" * _limit(Tag)]) == ["a" * _limit(Tag)]
    assert len(browse_tags([f"t{n}" for n in range(_limit(Tags))])) == _limit(Tags)


def test_a_tag_too_long_is_refused_before_sending(run: Shell) -> None:
    err = run("browse_by_tags " + "a" * (_limit(Tag) + 1))
    assert "Invalid tag 'aaaa" in err and f"at most {_limit(Tag)} characters" in err, err
    assert "Invalid message" not in err and run.session.sent == []


def test_tags_are_measured_and_counted_as_the_server_spells_them(run: Shell) -> None:
    """Forty accented letters typed decomposed are 80 code points but a 40-letter tag, and
    `Hat hat` is one tag: what is sent is what the server would store."""
    decomposed = "e\u0301" * 40
    run(f"browse_by_tags {decomposed} Hat hat")
    (request,) = run.session.sent
    assert isinstance(request, Browse) and request.tags == ["\u00e9" * 40, "hat"]


def test_too_many_tags_are_refused_before_sending(run: Shell) -> None:
    err = run("browse_by_tags --any " + " ".join(f"t{n}" for n in range(_limit(Tags) + 1)))
    assert f"browse_by_tags takes at most {_limit(Tags)} tags, not 65." in err, err
    assert run.session.sent == []


def test_repeated_tags_count_once(run: Shell) -> None:
    run("browse_by_tags " + " ".join(["hat"] * (_limit(Tags) + 1)) + " straw")
    (request,) = run.session.sent
    assert isinstance(request, Browse) and request.tags == ["hat", "straw"]


# --- prices in the search filters --------------------------------------------------------------


def test_price_filters_take_trailing_zeros_and_minus_zero(run: Shell) -> None:
    err = run("search_by_color red --min-price 0.000 --max-price -0")
    (request,) = run.session.sent
    assert isinstance(request, ColourSearch), err
    assert (request.filters.min_price_cents, request.filters.max_price_cents) == (0, 0)
    run.session.sent.clear()
    run("search_by_image --id 3 --min-price 1.230 --max-price 12.500")
    (request,) = run.session.sent
    assert (request.filters.min_price_cents, request.filters.max_price_cents) == (123, 1250)  # type: ignore[attr-defined]


def test_a_third_decimal_is_still_refused(run: Shell) -> None:
    err = run("search_by_color red --min-price 1.235")
    assert "has more than two decimals" in err and run.session.sent == []
