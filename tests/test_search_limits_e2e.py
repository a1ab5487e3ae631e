"""Ranked searches keep their best 500 results; when more matched, the shell says so instead
of "500 images in all" (found by the session-16 QA round: 556 matches, 56 out of reach, and a
listing that called itself complete). The real client against the real server.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from repository.images import MAX_SEARCH_RESULTS
from service.image_search import MAX_RESULTS
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines
from tests.test_images_server import upload_many

PASSWORD = "correct horse battery"
MATCHES = MAX_SEARCH_RESULTS + 2


def red_card(seed: int) -> bytes:
    """A red card on white, each a little different, so no two uploads share content."""
    img = Image.new("RGB", (48, 48), (250, 250, 250))
    img.paste(Image.new("RGB", (30, 30), (200, 30 + seed % 20, 30 + seed // 20 % 20)), (9, 9))
    img.putpixel((0, 0), (seed % 256, seed // 256, 0))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Shell, list[int]]]:
    server = ServerProcess(tmp_path_factory.mktemp("limits")).start()
    home = tmp_path_factory.mktemp("limits-home")
    create_users(server, home, ("seller", "buyer"), PASSWORD)
    conn = server.user_connection(home, "seller", PASSWORD)
    uploaded = upload_many(
        conn, [red_card(k) for k in range(MATCHES)], title="Lot of caps", tags=["caps"]
    )
    upload_many(conn, [red_card(MATCHES)], title="Single hat")
    conn.close()
    assert all(u.created for u in uploaded)
    yield Shell(server, "buyer", home), [u.image_id for u in uploaded]
    server.stop()


@pytest.mark.parametrize(
    "command",
    ["search lot", "search_by_color red", "search_by_image --id {first}"],
    ids=["text", "colour", "image"],
)
def test_a_search_cut_at_its_best_results_says_more_matched(
    shop: tuple[Shell, list[int]], command: str
) -> None:
    buyer, ids = shop
    assert MAX_RESULTS == MAX_SEARCH_RESULTS  # one limit to state in the message
    first = command.format(first=ids[0]) + " --json --batch 400"
    code, out, err = buyer(first, "more --json --batch 400")
    assert code == 0, err
    rows = json_lines(out)
    assert len(rows) == MAX_SEARCH_RESULTS and len({r["id"] for r in rows}) == len(rows)
    assert f": {MAX_SEARCH_RESULTS} images. More images match" in err, err
    assert "in all" not in err, err


def test_a_search_that_was_not_cut_still_says_in_all(shop: tuple[Shell, list[int]]) -> None:
    buyer, _ = shop
    code, out, err = buyer("search hat --json")
    assert code == 0, err
    assert [r["title"] for r in json_lines(out)] == ["Single hat"]
    assert "1 image in all" in err and "More images match" not in err, err
