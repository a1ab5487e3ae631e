"""One rule for how a COLOR may be written (QA, session 22).

Arabic-Indic `٣٠` and full-width `１２０` were hues 30 and 120, while full-width `ｒｅｄ` and
`#ＦＦ0000` were "unknown colour" and "malformed hex", and `1e3` was an "unknown colour".
The rule now: the full-width and half-width forms a keyboard sends read as ASCII (letters,
digits, `#`), then any script's decimal digits as ASCII digits, wherever a digit goes. Not
NFKC, which also made `1²` hue 12, `①` 1 and `ⓡⓔⓓ` red (review, session 22); and a hue is a
plain number: an exponent made `1e-400` hue 0, and is now refused by name. The shell and the
server both parse with `util.colour_spec.parse_colour`, so both are checked here: the server
through a raw `ColourSearch` (no shell in between), the shell through client.py, and the shell
against a server that reads only ASCII, to which it sends the COLOR as it read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.catalog import ColourSearch, Filters
from tests.servers import ROOT, ServerProcess, create_users
from tests.servers import LoggedInShell as Shell
from tests.test_colour_search_e2e import PASSWORD, alice, found, server, shop
from util.colour_spec import NAMES, ColourSpecError, parse_colour, parse_tolerance

__all__ = ["alice", "server", "shop"]  # fixtures, used by name

#: Decimal digits 0-9 of a few scripts: Arabic-Indic, Devanagari, Bengali, Thai, full-width.
DIGITS = {
    "arabic-indic": "٠١٢٣٤٥٦٧٨٩",
    "devanagari": "०१२३४५६७८९",
    "bengali": "০১২৩৪৫৬৭৮৯",
    "thai": "๐๑๒๓๔๕๖๗๘๙",
    "full-width": "０１２３４５６７８９",
}


def full_width(text: str) -> str:
    """The full-width form of printable ASCII, as an East Asian keyboard's wide mode types it."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def in_script(text: str, digits: str) -> str:
    return "".join(digits[int(c)] if c.isdigit() else c for c in text)


def same(a: str, b: str) -> None:
    """`a` reads as `b` does, down to the text the shell sends for it (`ColourQuery.text`), so
    that a server that reads only ASCII gets what the shell read (review, session 22)."""
    qa, qb = parse_colour(a), parse_colour(b)
    assert (qa.hue, qa.tolerance, qa.boxes, qa.name, qa.text) == (
        qb.hue,
        qb.tolerance,
        qb.boxes,
        qb.name,
        qb.text,
    )
    assert qa.text.isascii() or qa.text.endswith("°"), qa.text


@pytest.mark.parametrize(
    ("written", "plain"),
    [
        ("ｒｅｄ", "red"),
        ("ＲＥＤ", "red"),
        ("#ＦＦ0000", "#ff0000"),
        ("＃ｆｆ００００", "#ff0000"),
        ("#ff٣٠٠٠", "#ff3000"),
        ("٣٠", "30"),
        ("１２０", "120"),
        ("３５５°", "355°"),
        ("３５５ｄｅｇ", "355deg"),
        ("−０", "-0"),
        ("２.５", "2.5"),
        ("\u3000ｒｅｄ\u3000", "red"),  # the full-width space, stripped like any other
    ],
)
def test_one_rule_for_names_hex_and_hues(written: str, plain: str) -> None:
    same(written, plain)


@pytest.mark.parametrize("text", ["361", "３６１", "٣٦١", "400deg", "−5", "-20"])
def test_a_number_out_of_range_says_so_whatever_its_form(text: str) -> None:
    with pytest.raises(ColourSpecError) as err:
        parse_colour(text)
    message = str(err.value)
    assert message.startswith(f"hue {text} is out of range"), message  # quoted as typed
    assert "0 to 360" in message and "#rrggbb" in message


@pytest.mark.parametrize("text", ["ｔｅａｌ", "#ＦＦ00", "inf", "٣٠٫٥"])
def test_what_is_still_refused_is_quoted_as_typed(text: str) -> None:
    with pytest.raises(ColourSpecError, match=r"unknown colour|malformed hex") as err:
        parse_colour(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize(
    "text",
    ["1²", "²", "①", "⒛", "¹⁰", "𝟏𝟐𝟎", "ⓡⓔⓓ", "𝐫𝐞𝐝", "#ff⁰⁰⁰⁰", "#𝟏e90ff", "①②⓪"],
)
def test_other_compatibility_forms_are_unknown_colours(text: str) -> None:
    """NFKC read superscripts, circled and parenthesised numbers and font variants as digits
    and letters: `1²` was hue 12, `⒛` hue 20, `ⓡⓔⓓ` red. Only what a keyboard sends for ASCII
    (full-width and half-width forms) and other scripts' own digits are read so now."""
    with pytest.raises(ColourSpecError) as err:
        parse_colour(text)
    message = str(err.value)
    assert message.startswith((f"unknown colour {text!r}", f"malformed hex colour {text!r}"))
    assert "0 to 360" in message and "#rrggbb" in message, message


@pytest.mark.parametrize("text", ["1e3", "１e３", "٣e٣", "1E3deg", "1e2", "1e-400", "0e0", "-2e1"])
def test_a_hue_with_an_exponent_is_refused_by_name(text: str) -> None:
    """1e-400 read as hue 0 and 1e2 as 100: a hue is a plain number of degrees. Said as such,
    not as an unknown colour (1e3 was one before session 22)."""
    with pytest.raises(ColourSpecError) as err:
        parse_colour(text)
    message = str(err.value)
    assert message.startswith(f"{text} is not a hue in degrees: "), message
    assert "without an exponent" in message and "#rrggbb" in message, message


@given(
    name=st.sampled_from(sorted(NAMES)),
    upper=st.booleans(),
)
def test_every_name_reads_the_same_full_width(name: str, upper: bool) -> None:
    typed = name.upper() if upper else name
    same(full_width(typed), name)


@given(
    rgb=st.tuples(*[st.integers(0, 255)] * 3).filter(lambda c: len(set(c)) > 1),
    script=st.sampled_from(sorted(DIGITS)),
    wide=st.booleans(),
)
def test_every_hex_reads_the_same_in_any_digits(
    rgb: tuple[int, int, int], script: str, wide: bool
) -> None:
    plain = "#" + "".join(f"{v:02x}" for v in rgb)
    written = in_script(plain, DIGITS[script])
    same(full_width(written) if wide else written, plain)


@given(
    hue=st.one_of(st.integers(0, 360).map(str), st.decimals(0, 360, places=2).map(str)),
    script=st.sampled_from(sorted(DIGITS)),
    unit=st.sampled_from(["", "°", "deg"]),
)
def test_every_hue_reads_the_same_in_any_digits(hue: str, script: str, unit: str) -> None:
    same(in_script(hue, DIGITS[script]) + unit, hue + unit)


# --- --tolerance, written as hues are -----------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "degrees"),
    [
        ("20", 20.0),
        ("20°", 20.0),
        ("20deg", 20.0),
        ("２０ｄｅｇ", 20.0),
        ("٢٠", 20.0),
        ("１２.５°", 12.5),
        (" 7 ", 7.0),
        ("-0", 0.0),
        ("400", 180.0),
        ("9" * 400, 180.0),  # a plain number too large for a float still means any hue
    ],
)
def test_a_tolerance_is_written_as_a_hue_is(typed: str, degrees: float) -> None:
    assert parse_tolerance(typed) == degrees


@pytest.mark.parametrize("typed", ["−5", "-5", "-5°", "−０.５", "wide", "inf", "nan", "5 deg"])
def test_a_tolerance_that_is_no_number_of_degrees_is_refused_quoting_it(typed: str) -> None:
    """Review: `−5` (a typeset minus) was "must be a number", while `-5` was "0 or more"."""
    with pytest.raises(ColourSpecError) as err:
        parse_tolerance(typed)
    assert str(err.value) == (
        "tolerance must be a number of degrees, 0 or more (180 or more takes any hue), "
        f"not {typed.strip()}"
    )


@pytest.mark.parametrize("typed", ["1e-400", "1e1", "１e１", "2E1deg", "-1e3"])
def test_a_tolerance_with_an_exponent_is_refused_by_name(typed: str) -> None:
    """Review: `--tolerance 1e-400` was a tolerance of 0, the case refused for hues."""
    with pytest.raises(ColourSpecError) as err:
        parse_tolerance(typed)
    assert str(err.value) == (
        "tolerance must be a number of degrees without an exponent, 0 or more (180 or more "
        f"takes any hue), not {typed}"
    )


@given(
    value=st.one_of(st.integers(0, 360).map(str), st.decimals(0, 360, places=2).map(str)),
    script=st.sampled_from(sorted(DIGITS)),
    unit=st.sampled_from(["", "°", "deg"]),
)
def test_a_tolerance_reads_as_the_same_hue_would(value: str, script: str, unit: str) -> None:
    typed = in_script(value, DIGITS[script]) + unit
    assert parse_tolerance(typed) == min(float(value), 180.0)


# --- through the server and the shell ------------------------------------------------------------


def _server_ids(server: ServerProcess, home: Path, spec: str) -> list[int]:
    """What the server ranks for `spec` sent as typed, with no shell to normalise it first."""
    conn = server.user_connection(home, "alice", PASSWORD)
    try:
        request = ColourSearch(id=0, hue=0.0, spec=spec, filters=Filters(tags=["e2e-colour"]))
        frames = list(conn.stream(request))
        return [item.id for frame in frames for item in frame.items]  # type: ignore[attr-defined]
    finally:
        conn.close()


def test_the_server_reads_full_width_and_other_digits(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path
) -> None:
    assert _server_ids(server, tmp_path, "ｒｅｄ") == _server_ids(server, tmp_path, "red")
    assert set(_server_ids(server, tmp_path, "red")) == {shop["red350"], shop["red10"]}
    assert _server_ids(server, tmp_path, "#１ｅ９０ｆｆ") == [shop["blue"]]
    assert _server_ids(server, tmp_path, "١٢٠") == [shop["green"]]


def test_the_shell_reads_them_too(alice: Shell, shop: dict[str, int]) -> None:
    assert [r["id"] for r in found(alice, "search_by_color ｒｅｄ")] == [
        r["id"] for r in found(alice, "search_by_color red")
    ]
    assert [r["id"] for r in found(alice, "search_by_color ＃１Ｅ９０ＦＦ")] == [shop["blue"]]
    assert [r["id"] for r in found(alice, "search_by_color ١٢٠")] == [shop["green"]]
    code, _, err = alice("search_by_color 1e3")
    assert code != 0 and "1e3 is not a hue in degrees" in err and "unknown colour" not in err, err
    code, out, err = alice("search_by_color '1²'")
    assert code != 0 and "unknown colour '1²'" in err, err
    assert "hue 12" not in out + err, out


def test_the_shell_reads_a_tolerance_as_a_hue(alice: Shell, shop: dict[str, int]) -> None:
    """Review (session 22): the shell read --tolerance with float()."""
    code, out, err = alice(
        "search_by_color 10 --tolerance ２０ｄｅｇ --tags e2e-colour --no-images"
    )
    assert code == 0, err
    assert "images of hue 10° (within 20°" in out, out
    wide = [r["id"] for r in found(alice, "search_by_color 10 --tolerance 20")]
    assert shop["red10"] in wide, wide
    assert [r["id"] for r in found(alice, "search_by_color 10 --tolerance ٢٠")] == wide
    code, out, err = alice("search_by_color red --tolerance 1e-400")
    assert code != 0 and "without an exponent, 0 or more" in err and "not 1e-400" in err, err
    code, out, err = alice("search_by_color red --tolerance −5")
    assert code != 0 and "0 or more (180 or more takes any hue), not −5" in err, err


def test_a_hex_in_full_width_is_titled_as_a_hex(alice: Shell, shop: dict[str, int]) -> None:
    """Review: the heading looked at the text as typed, so `＃e38e5b` was titled "images of hue
    22.5°" while the search kept the hex's lightness and saturation limits."""
    for typed in ("＃e38e5b", "#E38E5B", "＃Ｅ３８Ｅ５Ｂ"):
        code, out, err = alice(f"search_by_color '{typed}' --tags e2e-colour")
        assert code == 0, err
        assert "images of #e38e5b" in out and "hue" not in out, out


# --- a server from before the full-width forms were read --------------------------------------

#: Run at start-up of the server below (PYTHONPATH): it reads the COLOR as sent, ASCII only, as
#: servers before session 22 read names and hex colours (`ｒｅｄ`, `＃FF0000`: unknown colours).
OLDER_PARSE = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import util.colour_spec
util.colour_spec._normalised = str.strip
"""


@pytest.fixture(scope="module")
def older_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    site = tmp_path_factory.mktemp("older-parse")
    (site / "sitecustomize.py").write_text(OLDER_PARSE)
    process = ServerProcess(
        tmp_path_factory.mktemp("older-server"), env={"PYTHONPATH": str(site)}
    ).start()
    create_users(process, tmp_path_factory.mktemp("older-accounts"), ["alice"], PASSWORD)
    yield process
    process.stop()


def test_the_older_parse_refuses_full_width(older_server: ServerProcess, tmp_path: Path) -> None:
    """The stand-in above does refuse what the shell sent as typed (else the test below proves
    nothing)."""
    conn = older_server.user_connection(tmp_path, "alice", PASSWORD)
    try:
        with pytest.raises(Exception, match="unknown colour"):
            list(conn.stream(ColourSearch(id=0, hue=0.0, spec="ｒｅｄ", filters=Filters())))
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("typed", "heading"),
    [("ｒｅｄ", "images of red"), ("＃FF0000", "images of #ff0000"), ("٣٠", "images of hue 30°")],
)
def test_the_shell_sends_the_colour_as_it_read_it(
    older_server: ServerProcess, tmp_path: Path, typed: str, heading: str
) -> None:
    """Review: the shell sent the COLOR as typed, and a server that reads only ASCII answered
    `ｒｅｄ` with "unknown colour" after the shell had accepted it."""
    code, out, err = Shell(older_server, "alice", tmp_path)(f"search_by_color '{typed}'")
    assert code == 0, err
    assert f"Nothing found for {heading}" in out, out
