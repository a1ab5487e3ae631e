"""Session 23's tidy-up: `server.py --check` counts as "due for purge" exactly what the next
start purges, because both read the one grace period, `ServerConfig.purge_after_s` (the check
had a copy of the number as its own default, which a change of the server's would have left
behind). The directory is built by real Services (SQLite file, blob store, ingest), no server.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from repository.images import PURGED, soft_delete
from service.app import close_services, open_services
from service.context import ServerConfig
from service.ingest import Upload, ingest
from tests.rows import add_users
from tests.test_crash_safety import run_check

DUE = "deleted images past their grace period"


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 90), (seed * 60 % 256, 90, 200)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Three images, soft-deleted 1 hour, 3 hours and one grace period plus an hour ago."""
    data_dir = tmp_path / "data"
    services = open_services(ServerConfig(data_dir=data_dir, colours=False))
    try:
        add_users(services.db.conn, "seller")
        for seed in range(3):
            upload = Upload(owner_id=1, data=_jpeg(seed), filename=f"{seed}.jpg")
            assert asyncio.run(ingest(services, upload))[1]
        now = time.time()
        ages = (3600.0, 3 * 3600.0, ServerConfig.purge_after_s + 3600.0)
        conn = services.db.conn
        for image_id, age in enumerate(ages, start=1):
            assert soft_delete(conn, image_id)
            with conn:  # back-dated: the grace period is a month
                conn.execute("UPDATE images SET deleted_at = ? WHERE id = ?", (now - age, image_id))
    finally:
        close_services(services)
    return data_dir


def test_check_counts_as_due_what_the_next_start_purges(data_dir: Path) -> None:
    done = run_check(data_dir)
    assert "Result: consistent" in done.stdout, done.stdout + done.stderr
    assert f"{DUE}: 1 (the next start purges)" in done.stdout

    services = open_services(ServerConfig(data_dir=data_dir, colours=False))
    try:
        purged = services.db.conn.execute(
            "SELECT COUNT(*) FROM images WHERE blob = ?", (PURGED,)
        ).fetchone()[0]
    finally:
        close_services(services)
    assert purged == 1
    assert DUE not in run_check(data_dir).stdout
