"""Client-supplied file names, reduced to harmless text for display and search.

The server never builds a path from a name (blobs are named by keyed content hash), so the only
risks left are in showing the name: terminal escape sequences, bidi overrides that make
``gpj.exe`` look like ``exe.jpg``, invisible characters, and names that are empty or huge.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

MAX_NAME_BYTES: Final = 255  # the common file-system limit, so a name always fits back on disk
FALLBACK_NAME: Final = "unnamed"
_REPLACEMENT: Final = "\ufffd"
# Control (Cc), format (Cf: bidi overrides, zero-width), surrogate, private-use, unassigned and
# line/paragraph separators: none of them print as themselves in a terminal.
_UNPRINTABLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SEPARATORS: Final = re.compile(r"[/\\]")
_MAX_KEPT_SUFFIX: Final = 16


def display_name(raw: str) -> str:
    """Turn any client-supplied file name into safe, printable, bounded metadata.

    Keeps only the last path component (``/`` and ``\\`` both count, since clients run on any
    system), replaces unprintable characters with U+FFFD so tampering stays visible, turns
    exotic spaces into plain ones, and caps the UTF-8 length while keeping the extension.
    The result is never empty, ``.`` or ``..``.
    """
    name = unicodedata.normalize("NFC", raw)
    parts = [p for p in _SEPARATORS.split(name) if p.strip()]
    name = parts[-1] if parts else ""
    name = "".join(_clean_char(ch) for ch in name).strip()
    name = _cap(name)
    if name in ("", ".", ".."):
        return FALLBACK_NAME
    return name


def save_name(raw: str) -> str:
    """The name under which a downloaded original is written into a folder the user chose.

    `display_name`, without leading dots: the name comes from another user, and a hidden file
    (`.bashrc`, `.profile`) is one a shell or a tool may read or run.
    """
    name = display_name(raw).lstrip(". ")
    return name if name else FALLBACK_NAME


def _clean_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category in _UNPRINTABLE_CATEGORIES:
        return _REPLACEMENT
    if category == "Zs":
        return " "
    return ch


def _cap(name: str) -> str:
    """Trim to MAX_NAME_BYTES of UTF-8, cutting the stem so the extension survives."""
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem or len(suffix) > _MAX_KEPT_SUFFIX:
        stem, suffix = name, ""
    else:
        suffix = "." + suffix
    budget = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    kept = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    # Do not leave a dangling combining mark whose base character was cut away.
    while kept and unicodedata.combining(kept[-1]):
        kept = kept[:-1]
    return unicodedata.normalize("NFC", kept.rstrip() + suffix)
