"""Search by colour while colours are still being computed, and on a `--no-colours` server.

Images stored under `--no-colours` have no colours until the next start with colours computes
them in the background (`service.colour_backfill`). A search meanwhile used to answer "7
images in all", then 24, then 30 for the same catalogue, each time as if complete; on a
`--no-colours` server it answered "Nothing found" for 400 images without colours. Now the first
batch says how many images the search could not rank yet (`Batch.unindexed`), the shell prints
it once, and a `--no-colours` server answers UNAVAILABLE.

The backfill is held on one image by turning that image's original blob into a named pipe: the
server's read of it waits until the test writes the sealed bytes back, so "during the backfill"
is a state the test controls, not a race it hopes to win. Real server, real client, no model
(so no embedding backfill reads the originals too).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from repository import colour_table
from repository import images as repo
from repository.database import Database
from repository.filters import SearchFilters
from tests.rows import add_users, new_image
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines
from tests.test_colour_search_e2e import card, upload

PASSWORD = "correct horse battery"
MISSING_WEIGHTS = "/nonexistent/vitrine-test/no-such.weights.h5"
TAG = "pending-colour"


def _hold_blob(data_dir: Path, image_id: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """Make the original of `image_id` a named pipe, so whoever reads it waits. Returns
    (release: the reader gets the real bytes, restore: the regular file is back)."""
    with sqlite3.connect(data_dir / "vitrine.db") as conn:
        (name,) = conn.execute("SELECT blob FROM images WHERE id = ?", (image_id,)).fetchone()
    conn.close()
    path = data_dir / "blobs" / name[:2] / name
    sealed = path.read_bytes()
    path.unlink()
    os.mkfifo(path, 0o600)
    released = threading.Event()

    def release() -> None:
        if released.is_set():
            return
        released.set()

        def write() -> None:
            with open(path, "wb") as pipe:  # waits for the server to open it
                pipe.write(sealed)

        threading.Thread(target=write, daemon=True).start()

    def restore() -> None:
        path.unlink()
        path.write_bytes(sealed)

    return release, restore


def _note(err: str) -> list[str]:
    return [line for line in err.splitlines() if "still being indexed" in line]


def test_a_search_during_the_colour_backfill_says_what_it_could_not_rank(tmp_path: Path) -> None:
    home, data_dir, cards = tmp_path / "home", tmp_path / "data", tmp_path / "cards"
    cards.mkdir()
    env = {"VITRINE_WEIGHTS": MISSING_WEIGHTS}
    process = ServerProcess(data_dir, ["--no-colours"], env=env).start()
    release: Callable[[], None] | None = None
    try:
        create_users(process, home, ("erin", "finn"), PASSWORD)
        erin = Shell(process, "erin", home / "erin", PASSWORD)
        finn = Shell(process, "finn", home / "finn", PASSWORD)
        waiting = [
            upload(erin, card(hue, cards / f"w{hue}.png"), f"--tags {TAG}") for hue in (355, 0, 5)
        ]
        upload(erin, card(10, cards / "other.png"), "--tags elsewhere")
        upload(finn, card(2, cards / "private.png"), f"--tags {TAG}", "--private")

        # A server that computes no colours says so, rather than "Nothing found".
        code, out, err = erin("search_by_color red --json")
        assert code != 0, out
        assert "UNAVAILABLE" in err and "started with --no-colours" in err, err
        assert "Nothing found" not in out + err
        process.stop()

        release, restore = _hold_blob(data_dir, waiting[0])  # the backfill's first image
        process.extra_args = []
        process.restart()
        fresh = upload(erin, card(358, cards / "fresh.png"), f"--tags {TAG}")  # computed now

        # Only the fresh image is ranked; the three waiting ones erin may see with the tag are
        # counted, said once on stderr, and stdout stays JSON through `more`.
        code, out, err = erin(
            f"search_by_color red --tags {TAG} --json --batch 1", "more --json", "more --json"
        )
        assert code == 0, err
        assert all(line.startswith("{") for line in out.splitlines()), out
        assert [row["id"] for row in json_lines(out)] == [fresh], out
        assert _note(err) == [
            "3 images are still being indexed for search by colour and not in these results: "
            "try again when the server's colour backfill is done."
        ], err

        # Without the tag filter, erin's fourth; finn sees his private one as well.
        code, out, err = erin("search_by_color red --no-images")
        assert code == 0, err
        assert len(_note(err)) == 1 and _note(err)[0].startswith("4 images are"), err
        code, out, err = finn("search_by_color 200 --no-images")
        assert code == 0, err
        assert len(_note(err)) == 1 and _note(err)[0].startswith("5 images are"), err

        release()
        process.wait_for_log("colour backfill done: 5 images", timeout=60)
        restore()
        code, out, err = erin(f"search_by_color red --tags {TAG} --json")
        assert code == 0, err
        assert {row["id"] for row in json_lines(out)} == {*waiting, fresh}, out
        assert _note(err) == [], err

        # Once the backfill is done a search counts nothing, not even an image the database
        # says is waiting: the count would cost every search a query for nothing.
        with sqlite3.connect(data_dir / "vitrine.db") as conn:
            conn.execute("UPDATE images SET colours_pending = 1 WHERE id = ?", (fresh,))
        conn.close()
        code, out, err = erin(f"search_by_color red --tags {TAG} --json")
        assert code == 0, err
        assert _note(err) == [], err
    finally:
        if release is not None:
            release()  # a failed assertion must not leave the server's backfill waiting
        process.stop()


def test_the_count_leaves_out_what_the_viewer_cannot_see_or_the_filters_refuse(
    tmp_path: Path,
) -> None:
    """`count_uncomputed` on a real SQLite file: deleted, private, computed, filtered out and
    skipped (undecodable) images are not counted as coming."""
    db = Database(tmp_path / "vitrine.db")
    conn = db.conn
    add_users(conn, "a", "b")
    ids = {}
    for key, owner, private, price in (
        ("waits", 1, False, 100),
        ("cheap", 1, False, 10),
        ("undecodable", 1, False, 100),
        ("theirs_private", 2, True, 100),
        ("mine_private", 1, True, 100),
        ("deleted", 1, False, 100),
        ("computed", 1, False, 100),
    ):
        new = new_image(
            len(ids),
            owner_id=owner,
            private=private,
            price_cents=price,
            colours_pending=key != "computed",
        )
        ids[key] = repo.insert_image(conn, new)
    conn.execute("UPDATE images SET deleted_at = 1 WHERE id = ?", (ids["deleted"],))
    conn.commit()

    everything = SearchFilters()
    assert colour_table.count_uncomputed(conn, 1, everything) == 4
    assert colour_table.count_uncomputed(conn, 2, everything) == 4  # theirs, not a's private
    assert colour_table.count_uncomputed(conn, 1, everything, {ids["undecodable"]}) == 3
    assert colour_table.count_uncomputed(conn, 1, SearchFilters(min_price_cents=50)) == 3
    assert colour_table.count_uncomputed(conn, 1, SearchFilters(impossible=True)) == 0
    db.close()
