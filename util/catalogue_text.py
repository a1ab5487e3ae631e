"""The rules for the text sellers type: tags, titles and descriptions.

The server enforces them (`service.images`); the shell checks the same rules before it sends
anything, so that a bulk upload with a bad `--tags` is one usage error, not 400 files each
refused by the server in turn.
"""

from __future__ import annotations

import re
import unicodedata

from protocol.limits import MAX_TAG_CHARS

#: Python's \w leaves out combining marks (categories Mn, Mc, Me), yet Devanagari and Thai
#: vowel signs, Hebrew points and the dot that `İ`.lower() adds are parts of words; so a mark
#: is accepted anywhere but first (see `_fits_tag_rule`).
TAG_RULE = re.compile(r"[^\W_][\w.&+'-]*")
COMBINING_MARKS = frozenset({"Mn", "Mc", "Me"})
TAG_RULE_TEXT = (
    "letters (with their accents, vowel signs and other combining marks), digits and "
    ". & + ' - _ (spaces become '-'), starting with a letter or digit, "
    f"at most {MAX_TAG_CHARS} characters"
)


class TextRefused(ValueError):
    """A tag, title or description that breaks the rules; the message says which and why."""


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch) in COMBINING_MARKS


def _fits_tag_rule(tag: str) -> bool:
    """TAG_RULE with each combining mark after the first character standing in for a letter."""
    return bool(TAG_RULE.fullmatch(tag[0] + "".join("a" if _is_mark(c) else c for c in tag[1:])))


def normalise_tag(raw: str) -> str:
    """One spelling per tag: NFC, trimmed, lowercase, inner whitespace runs turned into '-'.

    So `Summer Dress`, ` summer  dress ` and `SUMMER-DRESS` are the same tag. Anything else
    odd (commas, slashes, quotes, control characters, an empty name) is refused rather than
    silently rewritten, because a tag is something people type again to find things.
    """
    tag = "-".join(unicodedata.normalize("NFC", raw).strip().lower().split())
    if not tag:
        raise TextRefused("A tag cannot be empty.")
    if _is_mark(tag[0]):
        raise TextRefused(
            f"Invalid tag {raw!r:.80}: it starts with the combining mark U+{ord(tag[0]):04X}, "
            f"which belongs after a letter; tags use {TAG_RULE_TEXT}."
        )
    if len(tag) > MAX_TAG_CHARS or not _fits_tag_rule(tag):
        raise TextRefused(f"Invalid tag {raw!r:.80}: tags use {TAG_RULE_TEXT}.")
    return tag


def normalise_tags(raw: list[str]) -> list[str]:
    """Normalised and without repeats, in the order given."""
    return list(dict.fromkeys(normalise_tag(t) for t in raw))


def clean_text(text: str, what: str) -> str:
    """Titles and descriptions are shown in terminals: control characters are refused outright
    (tabs and line breaks excepted); the text is composed (NFC) and trimmed."""
    text = unicodedata.normalize("NFC", text).strip()
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        raise TextRefused(f"The {what} contains control characters; remove them.")
    return text


def _greek(ch: str) -> bool:
    return "\u0370" <= ch <= "\u03ff" or "\u1f00" <= ch <= "\u1fff"


def fold_for_search(text: str) -> str:
    """The spelling the text index holds and a text search looks for: both sides folded alike,
    so that what a person types finds what a seller typed, however either was written.

    NFKC turns compatibility forms into plain ones (full-width `ＦＵＬＬ` into `FULL`, the
    ligature `ﬁ` into `fi`, `Ⅻ` into `XII`, `²` into `2`); casefold then does what lowercasing
    cannot (`ß` becomes `ss`, a final `ς` becomes `σ`). Greek accents and breathings are
    dropped as well (`ΣΊΣΥΦΟΣ` is found by `σισυφος`), because the index's tokenizer removes
    Latin accents only. Other marks are left to the tokenizer: Cyrillic `й` stays a letter of
    its own, as do Japanese voiced kana.

    The index keeps what this function gave when each row was written, and queries use what it
    gives now: a change to it (or a Python with another Unicode version, which moves NFKC and
    casefold for new characters only) needs a migration that writes every row again, as
    schema v7 did (`repository.migrations`), or old rows stop matching their new spelling.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    if not any(_greek(ch) for ch in folded):
        return folded
    kept: list[str] = []
    base = ""
    for ch in unicodedata.normalize("NFD", folded):
        if _is_mark(ch):
            if _greek(base):
                continue
        else:
            base = ch
        kept.append(ch)
    return unicodedata.normalize("NFC", "".join(kept))
