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


#: The blanks that end a word, as cmd2 reads a line (shlex's whitespace): the flags argparse sees
#: and the words read back here must be cut at the same places.
BLANKS = frozenset(" \t\r\n")
QUOTES = "\"'"


def shell_words(line: str) -> list[str]:
    """The words of a line as the person typed them, quotes kept.

    A quote groups words only from the start of a word to the same quote at the end of one
    (before a blank, the end of the line, or a `*` ending the word): `'straw hat'`, `"stra"*`,
    `'women's linen'`. Anywhere else a quote is a plain character, so `women's`, `o'neill`
    and `32"` are words as they stand, and the flags after them are still flags (a quote
    opened inside them used to run to the end of the line and swallow `--json`). cmd2 makes
    two words of `"stra"*` (`stra` and `*`, and a search then loses the `*`), so the line is
    read again here. Backslashes are plain characters, as cmd2 reads them.

    Raises UnclosedQuote for a quote that starts a word and is never closed at the end of one.
    """
    words: list[str] = []
    at, end = 0, len(line)
    while at < end:
        if line[at] in BLANKS:
            at += 1
            continue
        start = at
        if line[at] in QUOTES:
            at = _group_end(line, at)
        else:
            while at < end and line[at] not in BLANKS:
                at += 1
        words.append(line[start:at])
    return words


def _group_end(line: str, start: int) -> int:
    """Where the word that a quote group starts at `start` ends (past its closing quote and a
    `*` after it)."""
    quote = line[start]
    at = start + 1
    while (at := line.find(quote, at)) != -1:
        after = at + 1 + (line[at + 1 : at + 2] == "*")
        if after == len(line) or line[after] in BLANKS:
            return after
        at += 1
    raise UnclosedQuote(line[start:].strip())


class UnclosedQuote(ValueError):
    """A quote at the start of a word that no quote at the end of a word closes; args[0] is
    the rest of the line from that quote."""


def search_text(word: str) -> tuple[str, str]:
    """(what the server gets for one word of shell_words, the word without the shell's quotes).

    Double quotes mean a phrase to the server as they group words to the shell, so they stay
    (`"straw hat"`, `"stra"*`); single quotes only group, so they go, and what they held is
    sent as it is (`'"stra"*'` is `"stra"*`), a phrase when it has blanks (`'straw hat'`). A
    word that is all one quoted word goes bare (`"hat"` is `hat`), as it always did.

    A double quote that groups nothing (`32"`, one inside a group) is sent as a blank, which
    is what it is to the server's words anyway: sent as it is, the server would pair it with
    the next one and make a phrase of the words between them. An apostrophe stays: `o'neill`
    is the phrase "o neill" to the server, as the index split "O'Neill"."""
    star = "*" if len(word) > 2 and word.endswith("*") else ""
    grouped = word[:1] in QUOTES and len(word) - len(star) >= 2 and word[-1 - len(star)] == word[0]
    if not grouped:
        return word.replace('"', " ").strip(), word
    quote, inner = word[0], word[1 : -1 - len(star)]
    if quote == "'":
        sent = f'"{inner}"' if len(inner.split()) > 1 and '"' not in inner else inner
        return sent + star, inner + star
    inner = inner.replace('"', " ")
    if not star and len(inner.split()) == 1:
        return inner.strip(), inner
    return f'"{inner}"{star}', inner + star


def typed_search_text(args: argparse.Namespace, parser: TextArgumentParser) -> str:
    """The search words of the command line as typed (flags and their values left out), so a
    quote or a trailing `*` reaches the server's query syntax intact; "" when the line cannot
    be read back that way (then the words argparse gave are used)."""
    statement = getattr(args, "cmd2_statement", None)
    if hasattr(statement, "get"):  # cmd2 before 3 wrapped it
        statement = statement.get()
    # `raw`, not `args`: cmd2 rebuilds `args` from its tokens, splitting `"stra"*` in two. The
    # raw line holds nothing past the words: a redirection or pipe is refused before any command
    # runs (VitrineShell), and `;` ends no command in this shell.
    raw = getattr(statement, "raw", "")
    try:
        words = shell_words(raw)
    except UnclosedQuote as exc:
        unclosed = printable(exc.args[0])
        quote = unclosed[0]
        raise CommandFailed(
            f"The {quote} that starts {unclosed!r} is never closed: a quote groups words from "
            f"the start of a word to a {quote} at the end of one. Inside a word a quote is a "
            "plain character (search women's finds \"Women's\"): close the group, or leave "
            "out its first quote."
        ) from None
    if not words or words[0] != getattr(statement, "command", None):
        return ""
    text: list[str] = []
    rest = iter(words[1:])
    after_dashes = False
    for word in rest:
        sent, bare = search_text(word)
        if after_dashes:
            text.append(sent)
        elif bare == "--":
            after_dashes = True
        elif bare.startswith("-") and (action := parser._option_for(bare)) is not None:
            if action.nargs != 0 and "=" not in bare:
                next(rest, None)
        else:
            text.append(sent)
    return " ".join(part for part in text if part)


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
        text = typed_search_text(args, self.search_parser) or " ".join(
            f'"{word}"' if len(word.split()) > 1 and '"' not in word else word for word in args.text
        )
        text = text.strip()
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
