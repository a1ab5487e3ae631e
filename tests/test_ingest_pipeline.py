"""The upload pipeline's analyser contract (`service.ingest`), on real Services: a real SQLite
file and blob store in a temporary directory, no server and no model.

An analyser starts in the worker thread that decoded the upload and is finished on the event
loop; one that fails at either end must cost only its own result, never the upload. An upload
whose insert fails removes the blobs it wrote, but never one another row or upload needs.
"""

from __future__ import annotations

import asyncio
import colorsys
import io
import logging
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from repository import images as repo
from service.app import open_services
from service.context import ServerConfig, Services
from service.ingest import Analyser, Prepared, Upload, blobs_in_flight, ingest
from tests.rows import add_users

MODEL = "mean-rgb"


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(out, "JPEG", quality=95)
    return out.getvalue()


async def _always(services: Services) -> bool:
    return True


def _mean_rgb(services: Services, prepared: Prepared) -> Future[np.ndarray]:
    """A real (if tiny) analysis, handed to the pool the way the embedding goes to its batcher,
    with the pixels taken now (they are dropped when the decoding worker is done)."""
    assert prepared.decoded is not None
    pixels = np.asarray(prepared.decoded.image, dtype=np.float32)
    return services.executor.submit(lambda: pixels.mean(axis=(0, 1)))


def _keep(services: Services, prepared: Prepared, vector: np.ndarray) -> None:
    prepared.embedding = (MODEL, vector.astype(np.float32).tobytes())


def _start_raises(services: Services, prepared: Prepared) -> Future[Any]:
    raise RuntimeError("analyser broke while starting")


def _future_fails(services: Services, prepared: Prepared) -> Future[Any]:
    failed: Future[Any] = Future()
    failed.set_exception(RuntimeError("analyser broke in its batcher"))
    return failed


MEAN = Analyser(ready=_always, start=_mean_rgb, finish=_keep)


@pytest.fixture
def services(tmp_path: os.PathLike[str]) -> Iterator[Services]:
    services = open_services(ServerConfig(data_dir=tmp_path))
    add_users(services.db.conn, "seller", "buyer")
    yield services
    for pool in (services.executor, services.quick_executor, services.io_executor):
        if pool is not None:
            pool.shutdown(wait=True)
    services.db.close()
    os.close(services.extras.pop("data_dir_lock"))


def _upload(services: Services, data: bytes, owner_id: int = 1) -> tuple[int, bool]:
    return asyncio.run(ingest(services, Upload(owner_id=owner_id, data=data, filename="a.jpg")))


def _stored_vector(services: Services, image_id: int) -> np.ndarray | None:
    row = services.db.conn.execute(
        "SELECT vector FROM embeddings WHERE image_id = ? AND model = ?", (image_id, MODEL)
    ).fetchone()
    return None if row is None else np.frombuffer(row[0], dtype=np.float32)


def test_an_analysers_result_is_committed_with_the_row(services: Services) -> None:
    services.analysers[:] = [MEAN]
    image_id, created = _upload(services, _jpeg((200, 40, 30)))
    assert created
    vector = _stored_vector(services, image_id)
    assert vector is not None
    np.testing.assert_allclose(vector, [200, 40, 30], atol=3)
    record = repo.image_by_id(services.db.conn, image_id)
    assert record is not None
    # the blobs the row names were written by the I/O lane, durable before the commit
    assert services.blobs.exists(record.blob) and services.blobs.exists(record.thumb_blob)
    hue = colorsys.rgb_to_hls(200 / 255, 40 / 255, 30 / 255)[0] * 360
    assert record.palette and abs(record.palette[0].hue - hue) < 3


@pytest.mark.parametrize(
    "broken",
    [
        Analyser(ready=_always, start=_start_raises, finish=_keep),
        Analyser(ready=_always, start=_future_fails, finish=_keep),
    ],
    ids=["start raises", "future fails"],
)
def test_a_failing_analyser_costs_only_its_own_result(
    services: Services, broken: Analyser, caplog: pytest.LogCaptureFixture
) -> None:
    services.analysers[:] = [broken, MEAN]
    with caplog.at_level(logging.ERROR, logger="vitrine.ingest"):
        image_id, created = _upload(services, _jpeg((30, 60, 210)))
    assert created
    assert "upload analyser" in caplog.text and "analyser broke" in caplog.text
    vector = _stored_vector(services, image_id)  # the healthy analyser still ran
    assert vector is not None
    np.testing.assert_allclose(vector, [30, 60, 210], atol=3)


def test_an_analyser_that_is_not_ready_is_skipped(services: Services) -> None:
    async def never(services: Services) -> bool:
        return False

    services.analysers[:] = [Analyser(ready=never, start=_start_raises, finish=_keep)]
    image_id, created = _upload(services, _jpeg((20, 160, 40)))
    assert created and _stored_vector(services, image_id) is None
    assert repo.image_by_id(services.db.conn, image_id) is not None


def test_an_upload_waiting_for_its_analysers_holds_no_pixels(services: Services) -> None:
    """A 5 KB PNG of 40 Mpx decodes to 120 MB; when every upload in flight kept its pixels
    until its embedding came back, 64 pipelined ones held 5.7 GB (2 connections of 32;
    measured in docs/security.md). The facts the row needs stay."""
    seen: list[tuple[object, object, str, int]] = []

    def check(services: Services, prepared: Prepared, vector: np.ndarray) -> None:
        seen.append((prepared.decoded, prepared.thumbnail, prepared.format, prepared.width))
        _keep(services, prepared, vector)

    services.analysers[:] = [Analyser(ready=_always, start=_mean_rgb, finish=check)]
    image_id, created = _upload(services, _jpeg((200, 40, 30)))
    assert created and seen == [(None, None, "JPEG", 320)]
    record = repo.image_by_id(services.db.conn, image_id)
    assert record is not None and (record.format, record.width, record.height) == ("JPEG", 320, 240)


# --- an insert that fails -------------------------------------------------------------------------


def _inserts_fail_for_user_2(services: Services) -> None:
    """Every insert of user 2's images fails inside SQLite, after the blobs are written, as an
    insert on a full disk does ("database or disk is full")."""
    services.db.conn.execute(
        "CREATE TRIGGER full_disk BEFORE INSERT ON images WHEN NEW.owner_id = 2 "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )


def _blob_names(services: Services) -> set[str]:
    return set(services.blobs.iter_names())


def _png(colour: tuple[int, int, int], note: str = "") -> bytes:
    """Same pixels, other bytes when `note` differs: another original, the same thumbnail."""
    info = PngImagePlugin.PngInfo()
    if note:
        info.add_text("Comment", note)
    out = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def test_a_failed_insert_removes_the_blobs_it_wrote(services: Services) -> None:
    """They stayed until the next restart: on a full disk 1354 of them, space not given back."""
    _upload(services, _jpeg((10, 20, 30)))
    before = _blob_names(services)
    _inserts_fail_for_user_2(services)
    with pytest.raises(sqlite3.DatabaseError, match="database or disk is full"):
        _upload(services, _jpeg((200, 100, 50)), owner_id=2)
    assert _blob_names(services) == before
    assert not list(services.blobs.root.rglob("*.tmp"))


def test_a_failed_insert_keeps_a_blob_another_row_names(services: Services) -> None:
    """Two originals of the same pixels share one thumbnail: the failed upload removes its
    original, never the thumbnail that the stored image shows."""
    kept_id, _ = _upload(services, _png((40, 140, 90)))
    kept = repo.image_by_id(services.db.conn, kept_id)
    assert kept is not None
    _inserts_fail_for_user_2(services)
    failing = _png((40, 140, 90), note="another original")
    with pytest.raises(sqlite3.DatabaseError):
        _upload(services, failing, owner_id=2)
    assert _blob_names(services) == {kept.blob, kept.thumb_blob}
    assert services.blobs.name_for(failing) != kept.blob
    services.blobs.get(kept.thumb_blob)


def test_a_failed_insert_keeps_a_blob_an_upload_in_flight_holds(services: Services) -> None:
    """Another upload of the same bytes may have found the blob written (its write a no-op)
    and be about to commit a row naming it: the failed one must leave it."""
    data = _jpeg((90, 30, 170))
    original = services.blobs.name_for(data)
    in_flight = blobs_in_flight(services)
    in_flight.hold([original])  # the other upload, between its write and its insert
    _inserts_fail_for_user_2(services)
    with pytest.raises(sqlite3.DatabaseError):
        _upload(services, data, owner_id=2)
    assert _blob_names(services) == {original}  # its thumbnail, held by no one, is gone

    # That upload fails too: now no one needs it.
    removed = in_flight.release_and_remove(services.db.conn, services.blobs, [original])
    assert removed == [original] and _blob_names(services) == set()
