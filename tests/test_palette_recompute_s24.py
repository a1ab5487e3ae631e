"""Every stored palette is computed again: schema step v12 (session 24).

Session 23 changed extraction twice in ways a stored palette cannot show (colour profiles are
converted to sRGB first; a product cut off by the frame beside another is no longer taken for
a second backdrop), so v12 marks every image that still has its original `colours_pending`
and deletes its colour rows, and the colour backfill computes them at the next start.

One test on a real SQLite file at version 11 (no server); one end to end: a real server on a
data directory whose palette was stored as the old rule stored it, then restarted.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repository import images as repo
from repository.database import migrate
from repository.migrations import MIGRATIONS
from tests.rows import add_users, new_image
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines
from tests.test_colour_search_e2e import card, shown_palette, upload
from util.colour_spec import hue_distance

PASSWORD = "correct horse battery"
RED = repo.ColourRecord(200, 40, 30, 4.0, 0.7, 0.45, 0.6)
BLUE = repo.ColourRecord(40, 60, 200, 230.0, 0.67, 0.47, 0.3)
V12 = 12


def _version_11(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    assert migrate(conn, through=V12 - 1) == V12 - 1
    return conn


def _colour_rows(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute("SELECT DISTINCT image_id FROM image_colours")}


def test_v12_marks_every_palette_of_an_image_that_has_its_original(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _version_11(tmp_path / "v11.db")
    add_users(conn, "seller")
    coloured = repo.insert_image(conn, new_image(1, palette=[RED, BLUE]))
    grey = repo.insert_image(conn, new_image(2))  # computed, and no colour in it
    waiting = repo.insert_image(conn, new_image(3, colours_pending=True))
    purged = repo.insert_image(conn, new_image(4, palette=[BLUE]))
    repo.soft_delete(conn, purged)
    assert repo.purge_deleted(conn, deleted_before=float("inf")) == 1  # no original left
    deleted = repo.insert_image(conn, new_image(5, palette=[RED]))  # dedup may offer it
    repo.soft_delete(conn, deleted)
    assert _colour_rows(conn) == {coloured, deleted}

    with caplog.at_level(logging.INFO, logger="repository.migrations"):
        assert migrate(conn) == len(MIGRATIONS) == V12
    assert "schema v12: 3 images' colours removed" in caplog.text  # coloured, grey, deleted
    pending = dict(conn.execute("SELECT id, colours_pending FROM images").fetchall())
    assert pending == {coloured: 1, grey: 1, waiting: 1, deleted: 1, purged: 0}
    assert _colour_rows(conn) == set()
    # the backfill computes the live ones from their originals
    assert repo.colours_pending(conn, 0, 10) == [(coloured, "b1"), (grey, "b2"), (waiting, "b3")]
    # another owner's upload of the same bytes is offered no palette to copy
    _, known = repo.dedup_lookup(conn, 2, "b1")
    assert known is not None and known.colours_pending
    assert migrate(conn) == V12  # and again: nothing left to do
    assert repo.database_problems(conn) == []
    conn.close()


def _cut_off_pair(path: Path) -> Path:
    """Two garments on white, the first (green) running off the left, top and bottom edges:
    the rule before session 23 suppressed it as a second backdrop and stored only the purple."""
    a = np.full((192, 256, 3), 245.0)
    a[:, :92] = (40.0, 170.0, 60.0)
    a[:, 102:194] = (150.0, 40.0, 170.0)
    a = a * np.linspace(0.8, 1.1, 192)[:, None, None]
    Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data").start()
    yield process
    process.stop()


def _greens(shell: Shell) -> set[int]:
    code, out, err = shell("search_by_color green --json")
    assert code == 0, err
    return {int(r["id"]) for r in json_lines(out)}


def test_a_palette_the_old_rule_stored_is_computed_again_at_the_next_start(
    server: ServerProcess, tmp_path: Path
) -> None:
    create_users(server, tmp_path / "accounts", ("alice",), PASSWORD)
    alice = Shell(server, "alice", tmp_path / "alice")
    pair = upload(alice, _cut_off_pair(tmp_path / "pair.png"))
    red = upload(alice, card(10, tmp_path / "red.png"))
    both, red_palette = shown_palette(alice, pair), shown_palette(alice, red)
    assert any(hue_distance(c["hue"], 127) <= 15 for c in both), both
    assert pair in _greens(alice)
    server.stop()

    # what a server from before session 23 stored: the cut-off green suppressed, purple alone
    conn = sqlite3.connect(server.data_dir / "vitrine.db", isolation_level=None)
    conn.execute("DELETE FROM image_colours WHERE image_id = ? AND abs(hue - 127) < 20", (pair,))
    conn.execute("UPDATE image_colours SET share = 0.36 WHERE image_id = ?", (pair,))
    conn.execute("PRAGMA user_version=11")
    conn.close()

    server.restart()
    server.wait_for_log("colour backfill done: 2 images", timeout=90)
    assert shown_palette(alice, pair) == both
    assert shown_palette(alice, red) == red_palette
    assert pair in _greens(alice)
