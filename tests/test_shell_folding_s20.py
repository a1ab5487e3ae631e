"""The shell reads titles and tags as the server will keep them (NFC, folded tags)."""

from __future__ import annotations

import time
import unicodedata

import cmd2

from protocol.catalog import TagCount
from shell.image_commands import bounded_text
from shell.listing import complete_tag_list, memory


def test_a_title_is_measured_and_sent_composed() -> None:
    """300 code points that compose to 150 characters are a title of 150, as the server counts
    it: the shell refused them, and sending them raw would overflow the wire's limit."""
    decomposed = unicodedata.normalize("NFD", "é" * 150)
    assert len(decomposed) == 300
    assert bounded_text("title")(decomposed) == "é" * 150


def test_tag_completion_folds_what_was_typed_as_browsing_does() -> None:
    app = cmd2.Cmd()
    mem = memory(app)
    mem.tags, mem.tags_at = (
        [TagCount(name="sale", count=3), TagCount(name="strasse", count=1)],
        (time.monotonic()),
    )
    offered = [c.text for c in complete_tag_list(app, "ＳＡ", "", 0, 0).items]
    assert offered == ["sale"]
    offered = [c.text for c in complete_tag_list(app, "sale,Straß", "", 0, 0).items]
    assert offered == ["sale,strasse"]


def test_tag_completion_offers_tags_kept_in_their_plain_spelling() -> None:
    """straß folds to strass, but straße½ does not fold as a whole (½ would become 1⁄2) and is
    stored as typed: completion offers it as well as strasse."""
    app = cmd2.Cmd()
    mem = memory(app)
    mem.tags, mem.tags_at = (
        [
            TagCount(name="strasse", count=3),
            TagCount(name="straße½", count=1),
            TagCount(name="sale", count=2),
        ],
        time.monotonic(),
    )
    offered = [c.text for c in complete_tag_list(app, "Straß", "", 0, 0).items]
    assert offered == ["strasse", "straße½"]
    offered = [c.text for c in complete_tag_list(app, "sale,STRASSE", "", 0, 0).items]
    assert offered == ["sale,strasse"]
