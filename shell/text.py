"""Text the shell shows people: made safe to print, and counted in words that read right.

Every command set and the contact sheet share these, so a title chosen by another user is made
printable the same way wherever it appears.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from typing import Any

# Control, format, surrogate, private-use and unassigned characters, and the line and paragraph
# separators: anything that could move the cursor, hide text or reorder it.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: Format characters that only join or part their neighbours: the zero-width non-joiner that
#: Persian and Indic words need, and the joiner inside emoji sequences (👩‍💻). They move,
#: hide and reorder nothing, unlike the bidi controls of the same category.
_JOINERS = frozenset({"\u200c", "\u200d"})


def printable(text: str, replacement: str = "\ufffd") -> str:
    """Titles, tags and names come from other users: no escape sequence reaches the terminal.

    Tabs and line breaks become spaces so a row stays a row. Anything else unprintable becomes
    `replacement`: the visible U+FFFD in a terminal, so a reader sees that something was there;
    a picture passes "" because its font may have no glyph for it.
    """
    return "".join(
        " "
        if ch in "\t\n\r"
        else (
            replacement if unicodedata.category(ch) in _UNPRINTABLE and ch not in _JOINERS else ch
        )
        for ch in text
    )


def escape_undecodable(text: str) -> str:
    """Bytes that were not UTF-8 (kept by Python as lone surrogates: file names, argv, stdin read
    with surrogateescape) as `\\x..` each: printable, and two different bytes never look alike,
    as one U+FFFD for both did. The shell marks them so wherever it shows them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plural(count: int, noun: str) -> str:
    """Sentences the shell prints count things; "1 tags" reads like a bug."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def sentence(clause: str) -> str:
    """A clause kept once, in lower case, to end another sentence ("Then run ..."),
    begun as a sentence of its own. Not str.capitalize, which lower-cases the rest."""
    return clause[:1].upper() + clause[1:]


#: TERM values of a terminal that shows text and nothing else: rich and prompt_toolkit both
#: read these two so, and the shell must agree with them, or it lays out for a width, or sends
#: escapes, that they do not.
DUMB_TERMS = frozenset({"dumb", "unknown"})


def dumb_terminal(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether TERM names a terminal without cursor movement or colours (Emacs' shell, many IDE
    consoles), where any escape sequence shows up as text."""
    return environ.get("TERM", "").lower() in DUMB_TERMS  # not stripped: neither do they


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is a terminal; False for a stream that is missing or closed, so that
    a check of where output goes never fails a command."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False
