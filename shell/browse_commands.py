"""Browse commands: browse_by_tags, search, more and tags.

The listing work (batches, cursors, tables, --json, --sheet) is shell.listing's; these commands
only say what to ask for, so every listing behaves alike.
"""

from __future__ import annotations

import argparse

import cmd2
from rich.table import Table
from rich.text import Text

from protocol.catalog import Browse, ListingOptions, ListTags, TagList, TextSearch
from protocol.limits import MAX_SEARCH_CHARS, MAX_TAGS
from shell import listing
from shell.app import (
    BROWSE,
    CommandFailed,
    TextArgumentParser,
    VitrineShell,
    parser,
    write_json_lines,
)
from shell.text import plural, printable
from util import catalogue_text


def browse_tags(words: list[str]) -> list[str]:
    """The tags a browse_by_tags asks for, in the server's one spelling (util.catalogue_text)
    and checked by its rule before sending: the server would otherwise answer a tag over the
    wire's 64 characters with the decoder's "Expected `str` of length <= 64 - at `$.tags[0]`".
    Blanks are dropped and repeats (`Hat hat`) kept once, so only tags that count toward the
    limit of 64 tags are counted.

    Tags here are words, while `--tags` elsewhere takes them comma-separated: a comma in a tag
    (never valid in one) is that mix-up, and the refusal says what to type instead.
    """
    words = [word for word in words if word.strip()]
    if with_comma := [word for word in words if "," in word]:
        split = [printable(part.strip()) for word in words for part in word.split(",")]
        example = " ".join(["browse_by_tags", *(part for part in split if part)])
        raise CommandFailed(
            f"Invalid tag {printable(with_comma[0].strip())!r}: a tag has no commas. "
            f"browse_by_tags takes tags separated by spaces: {example}"
        )
    try:
        tags = catalogue_text.normalise_tags(words)
    except catalogue_text.TextRefused as exc:
        raise CommandFailed(str(exc)) from None
    if len(tags) > MAX_TAGS:
        raise CommandFailed(f"browse_by_tags takes at most {MAX_TAGS} tags, not {len(tags)}.")
    return tags


class BrowseCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = BROWSE

    browse_parser = TextArgumentParser(
        "List images that carry the given tags (all of them, or any with --any), newest first. "
        "With no tags, list everything you can see. `more` continues the listing.",
        verb="browse",
        noun="tag",
        never_dashed="a tag starts with a letter or a digit",
    )
    browse_parser.add_argument(
        "tags", nargs="*", metavar="TAG", choices_provider=listing.complete_tags, help="a tag"
    )
    browse_parser.add_argument(
        "--any", action="store_true", help="one of the tags is enough (default: all of them)"
    )
    listing.add_listing_arguments(browse_parser)

    @cmd2.with_argparser(browse_parser)
    def do_browse_by_tags(self, args: argparse.Namespace) -> None:
        tags = browse_tags(args.tags)
        if not tags:
            what = "all images"
        else:
            joiner = " or " if args.any else " and "
            what = "images tagged " + joiner.join(printable(tag) for tag in tags)

        def request(options: ListingOptions) -> Browse:
            return Browse(id=0, tags=tags, match_any=args.any, options=options)

        listing.start_listing(self._cmd, request, args, what=what)

    search_parser = TextArgumentParser(
        "Full-text search over titles, descriptions, tags and file names "
        '(words, "a phrase", prefix*). `more` continues the listing.'
    )
    search_parser.add_argument("text", nargs="+", metavar="TEXT", help="what to look for")
    listing.add_listing_arguments(search_parser)

    @cmd2.with_argparser(search_parser)
    def do_search(self, args: argparse.Namespace) -> None:
        # The shell's own quotes group words into one argument ("straw hat"): that is the phrase
        # the person meant, so it goes to the server quoted (which reads it as a phrase).
        text = " ".join(
            f'"{word}"' if len(word.split()) > 1 and '"' not in word else word for word in args.text
        ).strip()
        if not text:
            raise CommandFailed("Give some words to search for.")
        if len(text) > MAX_SEARCH_CHARS:
            raise CommandFailed(f"Search text is limited to {MAX_SEARCH_CHARS} characters.")

        def request(options: ListingOptions) -> TextSearch:
            return TextSearch(id=0, text=text, options=options)

        listing.start_listing(self._cmd, request, args, what=f"the search {text!r}")

    more_parser = parser(
        "Show the next batch of the latest listing (browse, search...), the way it was shown. "
        "Flags given here change this batch; --batch also changes the following ones."
    )
    listing.add_listing_arguments(more_parser, continues=True)

    @cmd2.with_argparser(more_parser)
    def do_more(self, args: argparse.Namespace) -> None:
        listing.continue_listing(self._cmd, args)

    tags_parser = parser("List every tag with the number of images you can see that carry it.")
    tags_parser.add_argument(
        "--json", action="store_true", help="one JSON object per tag per line: tag, count"
    )

    @cmd2.with_argparser(tags_parser)
    def do_tags(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        answer = shell.session.call(ListTags(id=0), TagList)
        listing.memory(shell).remember_tags(answer.tags)
        if args.json:
            write_json_lines(shell, ({"tag": tag.name, "count": tag.count} for tag in answer.tags))
            return
        if not answer.tags:
            shell.poutput("No tags yet: add_image PATH --tags a,b creates them.")
            return
        table = Table(header_style="bold")
        table.add_column("tag")
        table.add_column("images", justify="right")
        for tag in answer.tags:
            table.add_row(Text(printable(tag.name), style="cyan"), str(tag.count))
        shell.poutput(table, soft_wrap=False)
        shell.poutput(f"{plural(len(answer.tags), 'tag')}.")
