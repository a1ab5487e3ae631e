"""Uploads whose client left are finished (Services.finish_regardless), up to a bound.

The end-to-end counterpart, a client that pipelines uploads and disconnects, is in
test_crash_safety.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

from protocol.catalog import UploadImage
from service.context import Services
from tests.servers import ServerProcess
from tests.test_images_server import jpeg


def test_work_whose_client_left_is_finished_up_to_a_bound() -> None:
    """Services.finish_regardless: an upload cancelled with its request goes on to its end,
    but no more than `max_unfinished` at once (a client that uploads, leaves and comes back
    must not pile up work); beyond that, cancelling the request cancels the work as before."""
    holder = SimpleNamespace(unfinished=set(), max_unfinished=1)
    finished: list[str] = []

    async def upload(name: str) -> None:
        await asyncio.sleep(0.05)
        finished.append(name)

    async def scenario() -> None:
        kept = asyncio.ensure_future(Services.finish_regardless(holder, upload("kept")))  # type: ignore[arg-type]
        over = asyncio.ensure_future(Services.finish_regardless(holder, upload("over")))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert len(holder.unfinished) == 1
        kept.cancel()
        over.cancel()
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert finished == ["kept"] and holder.unfinished == set()


def test_a_stopping_server_says_what_became_of_uploads_whose_clients_left(
    tmp_path: Path,
) -> None:
    """Their requests are logged "disconnected" when the stop cancels the connections, so the
    log must say they were stored after all (QA read 32 such lines and thought them lost)."""
    server = ServerProcess(tmp_path / "data").start()
    try:
        conn = server.user_connection(tmp_path / "client", "seller")
        for seed in range(40):
            conn.submit(UploadImage(id=0, data=jpeg(seed, (1600, 1200)), filename="p.jpg"))
        server.wait_for_log("request=UploadImage", timeout=60)
    finally:
        server.stop()
    log = server.log()
    started = re.search(r"finishing (\d+) uploads whose clients left", log)
    assert started, log
    assert f"uploads whose clients left: {started[1]} stored, 0 refused or failed" in log, log
