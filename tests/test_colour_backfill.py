"""Colours computed later for images stored under `--no-colours` (`service.colour_backfill`),
on real Services: a real SQLite file and blob store in a temporary directory, no server.

And the schema step behind it: a database from before the `colours_pending` flag cannot tell
"never computed" from "has no colour", so every colourless row is marked once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from repository import images as repo
from repository.database import migrate
from repository.migrations import MIGRATIONS
from service.app import close_services, open_services
from service.colour_backfill import backfill
from service.colour_search import colour_table
from service.context import ServerConfig, Services
from service.ingest import Upload, ingest
from tests.rows import add_users, database_at, new_image

RED, GREEN, GREY = (200, 40, 30), (40, 170, 60), (128, 128, 128)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    """A card of `colour` on white, so a palette has something to leave out."""
    img = Image.new("RGB", (320, 240), (250, 250, 250))
    img.paste(Image.new("RGB", (200, 160), colour), (60, 40))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95)
    return out.getvalue()


def _open(data_dir: Path, colours: bool) -> Services:
    services = open_services(ServerConfig(data_dir=data_dir, colours=colours))
    add_users(services.db.conn, "seller", "other")
    return services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Services of a `--no-colours` server; a test turns colours on to play the next start."""
    services = _open(tmp_path / "data", colours=False)
    yield services
    close_services(services)


def _upload(services: Services, data: bytes, owner_id: int = 1) -> int:
    image_id, _ = asyncio.run(ingest(services, Upload(owner_id=owner_id, data=data, filename="")))
    return image_id


def _palette(services: Services, image_id: int) -> list[repo.ColourRecord]:
    record = repo.image_by_id(services.db.conn, image_id)
    assert record is not None
    return record.palette


def test_backfilled_colours_equal_those_an_upload_with_colours_stores(
    services: Services, tmp_path: Path
) -> None:
    red, grey = _upload(services, _jpeg(RED)), _upload(services, _jpeg(GREY))
    assert repo.count_colours_pending(services.db.conn) == 2
    assert _palette(services, red) == []

    services.config.colours = True
    assert backfill(services, threading.Event()) == 2

    fresh = _open(tmp_path / "fresh", colours=True)
    try:
        expected = _palette(fresh, _upload(fresh, _jpeg(RED)))
    finally:
        close_services(fresh)
    assert expected and _palette(services, red) == expected
    assert _palette(services, grey) == []  # computed, and none found
    assert repo.count_colours_pending(services.db.conn) == 0
    assert backfill(services, threading.Event()) == 0  # nothing is computed twice
    # search by colour sees them at once, without a rebuild of its table
    assert len(colour_table(services)) == len(expected)


def test_an_unreadable_original_is_logged_and_left_waiting(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    lost, kept = _upload(services, _jpeg(RED)), _upload(services, _jpeg(GREEN))
    record = repo.image_by_id(services.db.conn, lost)
    assert record is not None
    services.blobs.path_for(record.blob).unlink()

    services.config.colours = True
    with caplog.at_level(logging.WARNING, logger="vitrine.colours"):
        assert backfill(services, threading.Event()) == 1
    assert f"image {lost}: its colours cannot be computed" in caplog.text
    assert _palette(services, kept) and _palette(services, lost) == []
    assert repo.colours_pending(services.db.conn, 0, 10) == [(lost, record.blob)]


def test_a_deleted_image_is_not_computed_nor_stored(services: Services) -> None:
    gone = _upload(services, _jpeg(RED))
    assert repo.soft_delete(services.db.conn, gone)
    services.config.colours = True
    assert backfill(services, threading.Event()) == 0
    # nor when the delete lands between the computing and the commit
    assert repo.store_palettes(services.db.conn, {gone: []}) == []


def test_a_stop_ends_the_backfill_with_the_rest_still_waiting(services: Services) -> None:
    _upload(services, _jpeg(RED))
    stopping = threading.Event()
    stopping.set()
    services.config.colours = True
    assert backfill(services, stopping) == 0
    assert repo.count_colours_pending(services.db.conn) == 1


def test_another_owners_upload_of_waiting_bytes_is_extracted_or_waits_too(
    services: Services,
) -> None:
    green, red = _upload(services, _jpeg(GREEN)), _upload(services, _jpeg(RED))
    red_copy = _upload(services, _jpeg(RED), owner_id=2)  # still --no-colours: it waits too
    assert _palette(services, red_copy) == []
    services.config.colours = True
    green_copy = _upload(services, _jpeg(GREEN), owner_id=2)  # extracted, not copied from none
    assert _palette(services, green_copy) and _palette(services, green) == []
    waiting = [image_id for image_id, _ in repo.colours_pending(services.db.conn, 0, 10)]
    assert waiting == [green, red, red_copy]
    assert backfill(services, threading.Event()) == 3
    assert _palette(services, green) == _palette(services, green_copy)
    assert _palette(services, red) == _palette(services, red_copy) != []


def test_the_schema_step_marks_only_rows_without_colours(tmp_path: Path) -> None:
    conn = database_at(tmp_path / "v2.db", 2)
    add_users(conn, "seller")
    for k in (1, 2, 3):
        conn.execute(
            "INSERT INTO images (owner_id, blob, thumb_blob, format, width, height, byte_size, "
            "created_at, updated_at, deleted_at) VALUES (1, ?, ?, 'JPEG', 1, 1, 1, 0, 0, ?)",
            (f"b{k}", f"t{k}", 5.0 if k == 3 else None),
        )
    conn.execute(
        "INSERT INTO image_colours VALUES (1, 0, 200, 40, 30, 4.0, 0.7, 0.45, 0.6)"
    )  # image 1 has colours; 2 has none (grey, or --no-colours); 3 is deleted

    assert migrate(conn) == len(MIGRATIONS)
    pending = dict(conn.execute("SELECT id, colours_pending FROM images").fetchall())
    assert pending == {1: 0, 2: 1, 3: 1}
    assert repo.colours_pending(conn, 0, 10) == [(2, "b2")]  # live ones only
    # and a new row is not waiting unless it says so
    assert repo.insert_image(conn, new_image(4)) and repo.count_colours_pending(conn) == 1
    conn.close()
