"""Search by image while the embedding backfill runs says how many images it could not rank
yet (`Batch.unindexed`), so that "143 in all", then 207, then 399 of the same images is no
longer an answer that looks complete. A real server, first without weights, then restarted
with them while the test searches in a loop.
"""

from __future__ import annotations

import time
from pathlib import Path

from protocol.catalog import Batch, DeleteImage, Filters, ImageSearch, ListingOptions
from shell.connection import ServerConnection
from tests.servers import ServerProcess
from tests.test_images_server import upload, upload_many
from tests.test_similarity_server import MISSING_WEIGHTS, READY_TIMEOUT_S, photo, weights

#: Enough images that the backfill (64 per step) is still running when the model is ready.
IMAGES = 160


def search_by_id(
    conn: ServerConnection, image_id: int, tags: list[str] | None = None
) -> tuple[set[int], int]:
    """The ids of the whole first batch (it holds every result here) and its `unindexed`."""
    options = ListingOptions(limit=500, thumbnails=False)
    request = ImageSearch(
        id=0, image_id=image_id, options=options, filters=Filters(tags=tags or [])
    )
    frames = list(conn.stream(request))
    assert all(isinstance(f, Batch) for f in frames)
    assert frames[-1].cursor is None
    counts = {f.unindexed for f in frames}
    assert len(counts) == 1, counts  # every frame of the first batch carries the same count
    return {item.id for f in frames for item in f.items}, counts.pop()


def test_a_search_during_the_backfill_counts_what_it_could_not_rank(tmp_path: Path) -> None:
    real = weights()
    process = ServerProcess(tmp_path / "srv", env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}).start()
    try:
        alice = process.user_connection(tmp_path / "a", "alice")
        bob = process.user_connection(tmp_path / "b", "bob")
        datas = [photo(5000 + n, (160, 128)) for n in range(IMAGES)]
        ids = [u.image_id for u in upload_many(alice, datas[:-10])]
        ids += [upload(alice, d, tags=["red"]).image_id for d in datas[-10:]]
        mine_private = upload(alice, photo(4001), private=True).image_id
        hidden = upload(bob, photo(4002), private=True).image_id  # alice cannot see it
        gone = upload(alice, photo(4003)).image_id
        alice.call(DeleteImage(id=0, image_id=gone))
        alice.close()
        bob.close()
    finally:
        process.stop()
    visible = set(ids) | {mine_private}
    assert hidden not in visible
    query = ids[0]
    red = set(ids[-10:])

    process.env = {"VITRINE_WEIGHTS": real}
    process.restart()
    try:
        alice = process.user_connection(tmp_path / "a", "alice")
        during: list[int] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "backfill done" not in process.log():
            assert time.monotonic() < deadline, process.log()
            try:
                found, unindexed = search_by_id(alice, query)
            except Exception as exc:  # the model is still loading
                assert "still loading" in str(exc), exc
                time.sleep(0.05)
                continue
            # What it ranked and what it could not rank are every image alice may see, but
            # the one searched by; never the hidden or deleted ones.
            assert found <= visible - {query}
            assert len(found) + unindexed == len(visible) - 1, (len(found), unindexed)
            during.append(unindexed)
            found, unindexed = search_by_id(alice, query, tags=["red"])
            assert found <= red and len(found) + unindexed == len(red), (found, unindexed)
        assert during and during[0] > 0, during  # the first answers came mid-backfill
        assert "backfill done: 162 images embedded" in process.log()

        found, unindexed = search_by_id(alice, query)
        assert unindexed == 0 and found == visible - {query}
        found, unindexed = search_by_id(alice, ids[-1], tags=["red"])
        assert unindexed == 0 and found == red - {ids[-1]}
        alice.close()
    finally:
        process.stop()
