"""Every stored palette is computed again: schema step v12 (session 24).

Session 23 changed extraction twice in ways a stored palette cannot show (colour profiles are
converted to sRGB first; a product cut off by the frame beside another is no longer taken for
a second backdrop), so v12 marks every image that still has its original `colours_pending`
and deletes its colour rows, and the colour backfill computes them at the next start.

One test on a real SQLite file at version 11 (no server); one end to end: a real server on a
data directory whose palette was stored as the old rule stored it, then restarted.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repository import colour_queries as cq
from repository import images as repo
from repository.database import migrate
from repository.migrations import MIGRATIONS
from service.app import close_services, open_services
from service.colour_backfill import backfill
from service.colour_search import colour_table
from service.context import ServerConfig, Services
from service.ingest import Upload, ingest
from tests.rows import add_users, database_at, new_image, rewind_schema
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines
from tests.test_colour_search_e2e import card, shown_palette, upload
from util.colour_spec import hue_distance, hue_ranges, parse_colour

PASSWORD = "correct horse battery"
RED = repo.ColourRecord(200, 40, 30, 4.0, 0.7, 0.45, 0.6)
BLUE = repo.ColourRecord(40, 60, 200, 230.0, 0.67, 0.47, 0.3)
V12 = 12


def _colour_rows(conn: sqlite3.Connection) -> dict[int, list[tuple]]:
    by_image: dict[int, list[tuple]] = {}
    for row in conn.execute("SELECT * FROM image_colours ORDER BY image_id, rank"):
        by_image.setdefault(row[0], []).append(tuple(row)[1:])
    return by_image


def _marks(conn: sqlite3.Connection, column: str) -> dict[int, int]:
    return dict(conn.execute(f"SELECT id, {column} FROM images").fetchall())


def test_v12_marks_every_palette_of_an_image_that_has_its_original_and_keeps_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = database_at(tmp_path / "v11.db", V12 - 1)
    add_users(conn, "seller", "other")
    coloured = repo.insert_image(conn, new_image(1, palette=[RED, BLUE]))
    grey = repo.insert_image(conn, new_image(2))  # computed, and no colour in it
    waiting = repo.insert_image(conn, new_image(3, colours_pending=True))
    purged = repo.insert_image(conn, new_image(4, palette=[BLUE]))
    repo.soft_delete(conn, purged)
    assert repo.purge_deleted(conn, deleted_before=float("inf")) == 1  # no original left
    deleted = repo.insert_image(conn, new_image(5, palette=[RED]))  # dedup may offer it
    repo.soft_delete(conn, deleted)
    colours = _colour_rows(conn)
    assert set(colours) == {coloured, deleted}

    with caplog.at_level(logging.INFO, logger="repository.migrations"):
        assert migrate(conn) == len(MIGRATIONS) == V12
    assert "schema v12: 3 images' colours marked to be computed again" in caplog.text
    assert _marks(conn, "colours_outdated") == {
        coloured: 1, grey: 1, waiting: 0, purged: 0, deleted: 1
    }  # fmt: skip
    assert _marks(conn, "colours_pending") == {
        coloured: 0, grey: 0, waiting: 1, purged: 0, deleted: 0
    }  # fmt: skip
    # the colours stay: searches and listings use them until new ones replace them
    assert _colour_rows(conn) == colours
    assert repo.colours_outdated(conn, 0, 10) == [(coloured, "b1"), (grey, "b2")]
    assert repo.colours_pending(conn, 0, 10) == [(waiting, "b3")]

    # another owner's upload of the same bytes is told they are outdated, and a copy is too
    _, known = repo.dedup_lookup(conn, 2, "b1")
    assert known is not None and known.colours_outdated and not known.colours_pending
    copy = repo.insert_image(
        conn, new_image(6, owner_id=2, blob="b1", thumb_blob="t1", copy_analysis_from=coloured)
    )
    assert _marks(conn, "colours_outdated")[copy] == 1
    assert _colour_rows(conn)[copy] == colours[coloured]

    # the backfill's write: new colours in place of the old, and the mark cleared
    assert repo.replace_palettes(conn, {coloured: [BLUE], deleted: [BLUE], waiting: []}) == [
        coloured
    ]
    assert [row[1:4] for row in _colour_rows(conn)[coloured]] == [(40, 60, 200)]
    assert _marks(conn, "colours_outdated")[coloured] == 0
    assert _colour_rows(conn)[deleted] == colours[deleted]  # deleted meanwhile: left out
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


def test_a_palette_the_old_rule_stored_is_kept_then_computed_again_at_a_start_with_colours(
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
    rewind_schema(conn, V12 - 1)
    conn.close()

    # a server without colours upgrades the database and keeps showing the old colours
    server.extra_args = ["--no-colours"]
    server.restart()
    server.wait_for_log("colours: 0 images have none computed and 2 have an older rule's")
    old = shown_palette(alice, pair)
    assert len(old) == 1 and hue_distance(old[0]["hue"], 127) > 90, old
    assert shown_palette(alice, red) == red_palette
    server.stop()

    # the first start with colours computes them again
    server.extra_args = []
    server.restart()
    server.wait_for_log("colour recompute done: 2 images", timeout=90)
    assert shown_palette(alice, pair) == both
    assert shown_palette(alice, red) == red_palette
    assert pair in _greens(alice)
    server.stop()
    conn = sqlite3.connect(server.data_dir / "vitrine.db")  # and nothing is left to do again
    assert conn.execute("SELECT COUNT(*) FROM images WHERE colours_outdated = 1").fetchone() == (0,)
    conn.close()


# --- the colour backfill on outdated colours, on real Services (no server) ----------------------


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    services = open_services(ServerConfig(data_dir=tmp_path / "data", colours=True))
    add_users(services.db.conn, "seller", "other")
    yield services
    close_services(services)


def _upload_as(services: Services, data: bytes, owner_id: int = 1) -> int:
    image_id, _ = asyncio.run(ingest(services, Upload(owner_id=owner_id, data=data, filename="")))
    return image_id


def _outdate(services: Services, image_id: int, palette: list[repo.ColourRecord]) -> None:
    """What v12 leaves: the colours an older rule stored, marked outdated."""
    conn = services.db.conn
    conn.execute("DELETE FROM image_colours WHERE image_id = ?", (image_id,))
    for rank, c in enumerate(palette):
        conn.execute(
            "INSERT INTO image_colours VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (image_id, rank, c.r, c.g, c.b, c.hue, c.saturation, c.lightness, c.share),
        )
    conn.execute("UPDATE images SET colours_outdated = 1 WHERE id = ?", (image_id,))
    conn.commit()
    colour_table(services).add(conn, [image_id])


def _palette_of(services: Services, image_id: int) -> list[repo.ColourRecord]:
    record = repo.image_by_id(services.db.conn, image_id)
    assert record is not None
    return record.palette


def _reds(services: Services) -> set[int]:
    query = parse_colour("red")
    hue_query = cq.HueQuery(
        query.hue, query.tolerance, hue_ranges(query.hue, query.tolerance), 0.05, query.boxes
    )
    return {hit.image_id for hit in colour_table(services).rank(services.db.conn, 1, hue_query)}


def test_outdated_colours_are_replaced_and_an_unreadable_original_keeps_its_old_ones(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    red = _upload_as(services, card(10, tmp_path / "red.png").read_bytes())
    lost = _upload_as(services, card(220, tmp_path / "blue.png").read_bytes())
    fresh = _palette_of(services, red)
    _outdate(services, red, [BLUE])
    _outdate(services, lost, [BLUE])
    assert red not in _reds(services)
    record = repo.image_by_id(services.db.conn, lost)
    assert record is not None
    services.blobs.path_for(record.blob).unlink()

    with caplog.at_level(logging.INFO, logger="vitrine.colours"):
        assert backfill(services, threading.Event()) == 1
    assert _palette_of(services, red) == fresh
    assert _palette_of(services, lost) == [BLUE]  # kept, and still found by its colours
    assert f"image {lost}: its colours cannot be computed (it keeps its current ones)" in (
        caplog.text
    )
    assert "colour recompute done: 1 images" in caplog.text
    assert "colour backfill" not in caplog.text  # nothing was missing
    assert repo.colours_outdated(services.db.conn, 0, 10) == [(lost, record.blob)]
    assert red in _reds(services)  # search by colour sees the new colours at once


def test_another_owners_upload_of_outdated_bytes_is_extracted_not_copied(
    services: Services, tmp_path: Path
) -> None:
    data = card(10, tmp_path / "red.png").read_bytes()
    red = _upload_as(services, data)
    fresh = _palette_of(services, red)
    _outdate(services, red, [BLUE])
    copy = _upload_as(services, data, owner_id=2)
    assert _palette_of(services, copy) == fresh
    # a grey picture's answer is no colour at all, not the copied old ones
    grey_png = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), (128, 128, 128)).save(grey_png)
    grey = _upload_as(services, grey_png.read_bytes())
    _outdate(services, grey, [BLUE])
    assert _palette_of(services, _upload_as(services, grey_png.read_bytes(), owner_id=2)) == []
    waiting = [image_id for image_id, _ in repo.colours_outdated(services.db.conn, 0, 10)]
    assert waiting == [red, grey]
