"""The upload pipeline's analyser contract (`service.ingest`), on real Services: a real SQLite
file and blob store in a temporary directory, no server and no model.

An analyser starts in the worker thread that decoded the upload and is finished on the event
loop; one that fails at either end must cost only its own result, never the upload.
"""

from __future__ import annotations

import asyncio
import colorsys
import io
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from PIL import Image

from repository import images as repo
from service.app import open_services
from service.context import ServerConfig, Services
from service.ingest import Analyser, Prepared, Upload, ingest
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
    add_users(services.db.conn, "seller")
    yield services
    for pool in (services.executor, services.quick_executor, services.io_executor):
        if pool is not None:
            pool.shutdown(wait=True)
    services.db.close()
    os.close(services.extras.pop("data_dir_lock"))


def _upload(services: Services, data: bytes) -> tuple[int, bool]:
    return asyncio.run(ingest(services, Upload(owner_id=1, data=data, filename="a.jpg")))


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
