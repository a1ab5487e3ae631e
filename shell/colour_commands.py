"""search_by_color: the products whose dominant colours match a hue, a name or a hex colour.

COLOR, --tolerance and --min-share are checked here with the server's own rules
(`util.colour_spec`), so a typo costs no round trip and gets the sentence that lists what is
accepted; --tolerance is read by the rule for COLOR's hues (`parse_tolerance`). The COLOR is
also sent (`ColourSearch.spec`) so the server applies a name's or a hex colour's
lightness/saturation regions exactly as documented in docs/colours.md. It is sent as parsed
here (`ColourQuery.text`: `red` for `ｒｅｄ`, `#ff0000` for `＃FF0000`), so a server from before
the full-width forms were read takes it too: its parse is only a check. The listing
itself (batches of 20, `more` 10, --batch, --json with `score`, `match` and `palette`, the
match column, --sheet) is shell.listing's.
"""

from __future__ import annotations

import argparse
import math

import cmd2
from cmd2 import Choices, CompletionItem

from protocol.catalog import ColourSearch, ListingOptions
from protocol.limits import MAX_COLOUR_SPEC_CHARS
from shell import listing
from shell.app import BROWSE, CommandFailed, TextArgumentParser, VitrineShell
from shell.search_filters import add_filter_arguments, describe, filters_from
from shell.text import printable
from util.colour_spec import (
    DEFAULT_MIN_SHARE,
    HEX_LIGHTNESS_WINDOW,
    HEX_SATURATION_WINDOW,
    NAMES,
    ColourSpecError,
    check_min_share,
    parse_colour,
    parse_tolerance,
)


def _number(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ColourSpecError(f"{what} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise ColourSpecError(f"{what} must be a finite number, not {text!r}")
    return value


def _fraction(text: str) -> float:
    """A --min-share: `0.2` or `20%`, as shares are written in listings."""
    if text.strip().endswith("%"):
        return _number(text.strip()[:-1], "min-share") / 100.0
    return _number(text, "min-share")


def _complete_colour_names(_app: cmd2.Cmd) -> Choices:
    """The names, offered at Tab but not enforced: a hue or a hex colour is as good a COLOR."""
    return Choices(items=[CompletionItem(name) for name in NAMES])


class ColourCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = BROWSE

    colour_parser = TextArgumentParser(
        "Find the images whose dominant colours match COLOR, the clearest first (closeness to "
        "the hue weighted by how much of the picture the colour covers). COLOR is a hue in "
        "degrees (0-360), a name (red, orange, yellow, green, cyan, blue, purple, magenta, "
        "pink, brown) or a hex colour #rrggbb. A name or a hex colour also matches on "
        "lightness and saturation, so brown is not orange: a hex colour finds colours within "
        f"{HEX_LIGHTNESS_WINDOW} of its lightness and {HEX_SATURATION_WINDOW} of its "
        "saturation, and its bare hue (e.g. 210 for #1e90ff) finds any. `more` continues the "
        "listing.",
        noun="colour",
    )
    colour_parser.add_argument(
        "color",
        metavar="COLOR",
        choices_provider=_complete_colour_names,
        help="a hue, a colour name or #rrggbb",
    )
    colour_parser.add_argument(
        "--tolerance",
        metavar="DEG",
        help="how far a colour's hue may be from COLOR's, in degrees; 180 or more takes any hue "
        "(default: 15 for a hue or hex colour, the name's own band for a name)",
    )
    colour_parser.add_argument(
        "--min-share",
        metavar="P",
        help="least fraction of the picture the colour must cover, 0 to 1 or a percentage "
        f"such as 20%% (default {DEFAULT_MIN_SHARE})",
    )
    add_filter_arguments(colour_parser)
    listing.add_listing_arguments(colour_parser)

    @cmd2.with_argparser(colour_parser)
    def do_search_by_color(self, args: argparse.Namespace) -> None:
        spec = args.color.strip()
        try:
            if len(spec) > MAX_COLOUR_SPEC_CHARS:
                raise ColourSpecError(f"a colour is at most {MAX_COLOUR_SPEC_CHARS} characters")
            query = parse_colour(spec)
            # written as COLOR's hues may be (`20`, `20°`, `２０ｄｅｇ`, `٢٠`), by the same rule
            tolerance = (
                query.tolerance if args.tolerance is None else parse_tolerance(args.tolerance)
            )
            min_share = (
                DEFAULT_MIN_SHARE
                if args.min_share is None
                else check_min_share(_fraction(args.min_share), args.min_share.strip())
            )
        except ColourSpecError as exc:
            raise CommandFailed(f"search_by_color: {exc}.") from None
        filters = filters_from(args)
        # a name or a hex colour as parsed (`＃E38E5B` is #e38e5b, with its lightness limits);
        # a hue as a number of degrees: not "images of 0" for 360
        if query.name is None and not query.text.startswith("#"):
            what = f"images of hue {query.hue:g}°"
        else:
            what = f"images of {printable(query.text)}"
        extras = []
        if args.tolerance is not None:
            extras.append(f"within {tolerance + 0.0:g}°")  # + 0.0: "-0" reads as a bug
        if args.min_share is not None:
            # a percentage, as the flag may be given, unrounded: 12.5% is not 12%
            extras.append(f"covering at least {min_share * 100:g}%")
        extras += describe(filters)
        if extras:
            what += " (" + ", ".join(extras) + ")"

        def request(options: ListingOptions) -> ColourSearch:
            return ColourSearch(
                id=0,
                hue=query.hue,
                tolerance=tolerance,
                min_share=min_share,
                spec=query.text,
                filters=filters,
                options=options,
            )

        listing.start_listing(self._cmd, request, args, what=what)
