"""Uploads whose client left are finished (Services.finish_regardless), up to a bound.

The end-to-end counterpart, a client that pipelines uploads and disconnects, is in
test_crash_safety.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from service.context import Services


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
