"""Palettes stored before session 20's merge limit (`models.colours.CHROMA_KEEP`) are computed
again: schema step v10 marks the images whose stored palette holds a grey "colour" that only
the old merge made (a hue sweep averaged all the way round), drops those rows, and the colour
backfill computes them at the next start. Other palettes are left alone.

One test on a real SQLite file at version 9 (no server); one end to end: a real server on a
data directory whose rainbow was stored with the old grey, then restarted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import astuple, replace
from pathlib import Path

import pytest

from repository import colour_queries as cq
from repository import images as repo
from repository.colour_table import ColourTable
from repository.database import migrate
from repository.migrations import MIGRATIONS
from tests.rows import add_users, database_at, new_image, rewind_schema
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines
from tests.test_colour_search_e2e import card, shown_palette, upload
from tests.test_palette_gradients_s20 import sweep
from util.colour_spec import hue_ranges, parse_colour

PASSWORD = "correct horse battery"
#: What the old merge stored for QA's rainbow.png (docs/colour-measurements.md, "Hue sweeps").
OLD_GREY = repo.ColourRecord(124, 127, 124, 120.0, 0.012, 0.4941, 1.0)
RED = repo.ColourRecord(200, 40, 30, 4.0, 0.7, 0.45, 0.6)
#: The lowest chroma of any colour on the 500 clothing photos: a navy (C 0.082), kept.
NAVY = repo.ColourRecord(48, 52, 69, 228.57, 0.1795, 0.2294, 0.22)
#: A faint green at the rule's floor (C 0.06): what the current rule can still produce.
FAINT_GREEN = repo.ColourRecord(170, 185, 172, 128.0, 0.1, 0.7, 0.3)


def _palette_rows(conn: sqlite3.Connection, image_id: int) -> list[tuple]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT r, g, b, hue, saturation, lightness, share FROM image_colours "
            "WHERE image_id = ? ORDER BY rank",
            (image_id,),
        )
    ]


def _green_at_99(conn: sqlite3.Connection) -> list[int]:
    query = parse_colour("green")
    table = ColourTable()
    table.build(conn)
    hue_query = cq.HueQuery(
        query.hue, query.tolerance, hue_ranges(query.hue, query.tolerance), 0.99, query.boxes
    )
    return [hit.image_id for hit in table.rank(conn, 1, hue_query)]


def test_v10_marks_only_palettes_with_a_merged_grey(tmp_path: Path) -> None:
    conn = database_at(tmp_path / "v9.db", 9)
    add_users(conn, "seller", "other")
    rainbow = repo.insert_image(conn, new_image(1, palette=[OLD_GREY]))
    mixed = repo.insert_image(conn, new_image(2, palette=[RED, replace(OLD_GREY, share=0.3)]))
    normal = repo.insert_image(conn, new_image(3, palette=[RED, NAVY, FAINT_GREEN]))
    gone = repo.insert_image(conn, new_image(4, palette=[OLD_GREY]))
    repo.soft_delete(conn, gone)
    assert _green_at_99(conn) == [rainbow]  # what QA saw
    normal_rows = _palette_rows(conn, normal)

    assert migrate(conn) == len(MIGRATIONS)
    pending = dict(conn.execute("SELECT id, colours_pending FROM images").fetchall())
    assert pending == {rainbow: 1, mixed: 1, normal: 0, gone: 1}
    assert _palette_rows(conn, rainbow) == _palette_rows(conn, mixed) == []
    assert _palette_rows(conn, gone) == []
    assert _palette_rows(conn, normal) == normal_rows
    # the backfill computes the live ones; the grey is findable by no search meanwhile
    assert repo.colours_pending(conn, 0, 10) == [(rainbow, "b1"), (mixed, "b2")]
    assert _green_at_99(conn) == []
    # another owner's upload of the same bytes is offered no row to copy the grey from
    _, known = repo.dedup_lookup(conn, 2, "b1")
    assert known is not None and known.colours_pending
    assert migrate(conn) == len(MIGRATIONS)  # and again: nothing left to do
    assert repo.database_problems(conn) == []
    conn.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data").start()
    yield process
    process.stop()


def _green_ids(shell: Shell) -> set[int]:
    code, out, err = shell("search_by_color green --min-share 0.99 --json")
    assert code == 0, err
    return {int(r["id"]) for r in json_lines(out)}


def test_a_rainbow_stored_grey_gets_its_colours_at_the_next_start(
    server: ServerProcess, tmp_path: Path
) -> None:
    create_users(server, tmp_path / "accounts", ("alice", "bob"), PASSWORD)
    alice = Shell(server, "alice", tmp_path / "alice")
    bob = Shell(server, "bob", tmp_path / "bob")
    rainbow_png = tmp_path / "rainbow.png"
    sweep(0, 360).save(rainbow_png)
    rainbow = upload(alice, rainbow_png)
    red = upload(alice, card(10, tmp_path / "red.png"))
    vivid, red_palette = shown_palette(alice, rainbow), shown_palette(alice, red)
    assert len(vivid) > 1 and red_palette
    server.stop()

    # what a server from before the merge limit stored: one grey "green" covering the picture
    conn = sqlite3.connect(server.data_dir / "vitrine.db", isolation_level=None)
    conn.execute("DELETE FROM image_colours WHERE image_id = ?", (rainbow,))
    grey_row = (rainbow, 0, *astuple(OLD_GREY))
    conn.execute("INSERT INTO image_colours VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", grey_row)
    rewind_schema(conn, 9)
    conn.close()

    server.restart()
    server.wait_for_log("colour backfill done: 1 images", timeout=90)
    assert shown_palette(alice, rainbow) == vivid
    assert shown_palette(alice, red) == red_palette
    assert rainbow not in _green_ids(alice)
    # bob's upload of the same bytes gets those colours, not the grey
    assert shown_palette(bob, upload(bob, rainbow_png)) == vivid
