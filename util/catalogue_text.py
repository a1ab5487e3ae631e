"""The rules for the text sellers type: tags, titles and descriptions.

The server enforces them (`service.images`); the shell checks the same rules before it sends
anything, so that a bulk upload with a bad `--tags` is one usage error, not 400 files each
refused by the server in turn.
"""

from __future__ import annotations

import re
import unicodedata

from protocol.limits import MAX_DESCRIPTION_CHARS, MAX_TAG_CHARS, MAX_TITLE_CHARS

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


def _plain_spelling(raw: str) -> str:
    """The spelling every tag had until schema v9: NFC, lower(), trimmed, inner whitespace runs
    turned into '-'. NFC again after lower(), which can leave a letter and its mark apart (`J̌`
    has no composed capital, `ǰ` is composed), so that a stored tag spells itself again."""
    composed = unicodedata.normalize("NFC", unicodedata.normalize("NFC", raw).lower())
    return "-".join(composed.split())


def _folded_spelling(raw: str) -> str:
    """NFKC, lower() and `ß` made `ss`, trimmed, inner whitespace runs turned into '-'. lower()
    comes first as well, so that a capital folds as its small letter, stored until v9, does:
    NFKC makes the lunate `Ϲ` `Σ` but `ϲ` `ς`.

    Not casefold, which search uses (`fold_for_search`): a tag is shown as its one spelling, and
    casefold turns a Greek final `ς` into `σ` (`λόγος` shown as `λόγοσ`), where lower() keeps
    it final at the end of a word. What casefold adds beyond lower() that people type is `ß`
    (and `ẞ`, which lower() makes `ß`); `ﬁ`, `ſ` and full-width letters NFKC folds already.
    NFKC once more after `ss`, which can compose with a mark that followed the `ß` (`ß́` is
    `sś`): left apart, the stored tag spelt itself differently and was never found again.
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw.lower()).lower())
    return "-".join(unicodedata.normalize("NFKC", folded.replace("ß", "ss")).split())


def _refusal(tag: str, raw: str) -> str | None:
    """Why `tag` (spelt from `raw`) is not a tag, or None if it is one."""
    if not tag:
        return "A tag cannot be empty."
    if _is_mark(tag[0]):
        return (
            f"Invalid tag {raw!r:.80}: it starts with the combining mark U+{ord(tag[0]):04X}, "
            f"which belongs after a letter; tags use {TAG_RULE_TEXT}."
        )
    if len(tag) > MAX_TAG_CHARS or not _fits_tag_rule(tag):
        return f"Invalid tag {raw!r:.80}: tags use {TAG_RULE_TEXT}."
    return None


def fold_tag(raw: str) -> str:
    """A tag's one spelling, without refusing anything: `_folded_spelling` (NFKC, lower(),
    `ß` as `ss`) when that is a valid tag, else `_plain_spelling` (NFC, lower()), the spelling
    of every tag until schema v9. Uploads, browsing, removing tags, the shell's completion and
    the v9 migration all use it, so a tag is found by what was typed for it.

    Folded, so that `ＳＡＬＥ`, `ﬁne` and `Straße` are the tags `sale`, `fine` and `strasse`:
    with NFC and lower() only, each was a tag of its own that browsing by the plain spelling
    never found, while a text search did. Accents stay (`café` is not `cafe`): browse matches a
    tag exactly, so dropping them would rename what sellers typed and merge words that differ
    (`año`, `ano`). Not folded when folding would make a valid tag invalid, so that no tag
    stored before v9 becomes one that cannot be found or removed, and no tag that was accepted
    is refused: NFKC makes `½` `1⁄2` (a fraction slash), `ŀ` `l·` and `⑴` `(1)`; Thai `ำ`
    becomes a combining mark and another letter, which cannot start a tag; and `ß` made `ss`
    can pass the length limit. Such a tag keeps its `ß` and capitals folded by lower() only.
    """
    folded = _folded_spelling(raw)
    return folded if _refusal(folded, raw) is None else _plain_spelling(raw)


def tag_spellings(raw: str) -> tuple[str, ...]:
    """Both spellings `raw` could have as (the start of) a stored tag: folded, and plain when
    that differs. Whether a tag folds depends on all of it, so the start typed may fold while
    the whole tag did not: `straß` folds to `strass`, yet `straße½` is stored as typed. The
    shell's completion offers a tag that starts with either."""
    return tuple(dict.fromkeys((fold_tag(raw), _plain_spelling(raw))))


def normalise_tag(raw: str) -> str:
    """One spelling per tag (`fold_tag`), checked against the rule.

    So `Summer Dress`, ` summer  dress `, `SUMMER-DRESS` and `ＳＵＭＭＥＲ ＤＲＥＳＳ` are the
    same tag. Anything else odd (commas, slashes, quotes, control characters, an empty name) is
    refused rather than silently rewritten, because a tag is something people type again to
    find things.
    """
    tag = fold_tag(raw)
    if (why := _refusal(tag, raw)) is not None:
        raise TextRefused(why)
    return tag


def normalise_tags(raw: list[str]) -> list[str]:
    """Normalised and without repeats, in the order given."""
    return list(dict.fromkeys(normalise_tag(t) for t in raw))


#: The longest title and description, counted as stored: after NFC, which lengthens some text
#: (U+FB2C is three characters composed), so the wire's own count of what was typed is not
#: enough.
TEXT_LIMITS = {"title": MAX_TITLE_CHARS, "description": MAX_DESCRIPTION_CHARS}


def clean_text(text: str, what: str) -> str:
    """Titles and descriptions are shown in terminals: control characters are refused outright
    (tabs and line breaks excepted); the text is composed (NFC) and trimmed, and must then fit
    `TEXT_LIMITS` for `what`."""
    text = unicodedata.normalize("NFC", text).strip()
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        raise TextRefused(f"The {what} contains control characters; remove them.")
    limit = TEXT_LIMITS.get(what)
    if limit is not None and len(text) > limit:
        raise TextRefused(
            f"The {what} is {len(text)} characters long once composed (NFC); "
            f"a {what} has at most {limit}."
        )
    return text


#: Letters and symbols that draw nothing, yet are neither format characters nor whitespace: the
#: Hangul fillers and the blank Braille pattern, well known for making names that look empty.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_blank(text: str) -> bool:
    """Nothing a reader would see: only whitespace, format characters (Cf: zero-width spaces
    and joiners, word joiners, bidi controls, U+FEFF) and `_INVISIBLE`. strip() keeps the
    format characters, so a title of U+200B alone passed as not blank and was listed as
    nothing at all."""
    return all(ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) == "Cf" for ch in text)


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
    schema v7 did (and v8 for `index_text`), or old rows stop matching their new spelling.
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


#: Scripts written without spaces between words, whose every character is a word of its own in
#: the text index (`index_text`), as (first, last) code points: the iteration marks 々 and 〻
#: (Lm), 〆 (Lo) and the ideographic zero 〇 (Nl); Hiragana with ゝ ゞ; Katakana with the
#: prolonged sound mark ー (Lm) and ヽ ヾ; the Katakana phonetic extensions; CJK Unified
#: Ideographs Extension A and the main block; the Compatibility Ideographs; the Kana blocks of
#: the Supplementary Multilingual Plane; and planes 2 and 3, which hold only ideographs
#: (Extensions B to I and the Compatibility Supplement). The modifier letters (Lm) are letters
#: to the index's tokenizer and to `str.isalnum`, so they are searched for like the kana they
#: follow. Half-width katakana are full-width after NFKC. Hangul is left out: Korean puts
#: spaces between words. Thai is left out too: its vowel signs are combining marks, which the
#: unicode61 tokenizer treats as separators, so a word is cut at each of them whatever is done
#: here; it would need a dictionary to split it properly.
UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x3005, 0x3007),
    (0x303B, 0x303B),
    (0x3041, 0x30FF),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x1AFF0, 0x1B16F),
    (0x20000, 0x3FFFF),
)


def is_unspaced(ch: str) -> bool:
    """A character of `UNSPACED_RANGES`, other than the combining voiced sound marks among them
    (U+3099, U+309A, which belong to the kana before them): a word of its own in the index."""
    code = ord(ch)
    return (
        code >= 0x3005
        and any(first <= code <= last for first, last in UNSPACED_RANGES)
        and not _is_mark(ch)
    )


def split_unspaced(text: str) -> str:
    """`text` with a space either side of every `is_unspaced` character (and of the combining
    marks right after it, which stay with it), so that the index's tokenizer makes each one a
    token of its own: "红色连衣裙" becomes "红 色 连 衣 裙" and "tシャツ" "t シ ャ ツ". Text
    without such characters comes back unchanged."""
    if not any(is_unspaced(ch) for ch in text):
        return text
    out: list[str] = []
    after_unspaced = False
    for ch in text:
        if after_unspaced and _is_mark(ch):
            out.append(ch)
        elif is_unspaced(ch):
            out.append(f" {ch}")
            after_unspaced = True
        else:
            if after_unspaced:
                out.append(" ")
            out.append(ch)
            after_unspaced = False
    if after_unspaced:
        out.append(" ")
    return "".join(out)


def index_text(text: str) -> str:
    """What the text index holds for a title, description, tag list or file name, and the
    spelling a search is matched against: `fold_for_search`, then `split_unspaced`.

    Chinese and Japanese put no spaces between words and the unicode61 tokenizer has no
    dictionary, so left alone a whole run of ideographs and kana would be one token, found only
    whole or by its start ("红色连衣裙" not by 连衣裙). Each such character is a token instead,
    and a search turns a run of them into a phrase of those characters (`service.listings.
    fts_query`): 连衣裙 then finds the three together, in order, anywhere in the text, as
    search engines without a dictionary do for these languages. A change here needs a
    migration that writes every row again, as for `fold_for_search` (schema v8 did for this).
    """
    return split_unspaced(fold_for_search(text))
