"""`more` after a Ctrl-C and after a reconnect: no batch skipped, none numbered wrongly.

The server moves a listing's cursor when it answers a batch, whether or not the shell is still
waiting: a `more` interrupted with Ctrl-C used to leave the shell's cursor behind, so the next
`more` asked again and the server answered the batch after the lost one, numbered as if nothing
was lost. Cursors also belong to the connection: after a reconnect the listing is gone, and
the shell says so rather than relaying the server's guesses. The real client.py runs at a
pseudo-terminal against a real server, stopped with SIGSTOP to hold its answer back.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.catalog import ColourSearch, ImageSearch, TextSearch
from shell.listing import LatestListing, RenderOptions, _cut, _narrowing
from tests.servers import ServerProcess, unread_by_server
from tests.test_cart_e2e import PASSWORD, Buyer, terminal
from tests.test_images_server import jpeg, unique, upload_many

pexpect = pytest.importorskip("pexpect")


@pytest.fixture(scope="module")
def listing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("listing-interrupts")).start()
    yield process
    process.stop()


def stocked(server: ServerProcess, home: Path, count: int) -> tuple[str, list[int]]:
    """`count` public images under a fresh tag, whose title is also searchable; their ids
    newest first, the order of a listing."""
    tag = unique("bulk")
    seller = server.user_connection(home, unique("seller"), PASSWORD)
    try:
        datas = [jpeg(7000 + n) for n in range(count)]
        stored = upload_many(seller, datas, tags=[tag], title=f"zebra{tag}", price_cents=100)
    finally:
        seller.close()
    return tag, sorted((item.image_id for item in stored), reverse=True)


def send_while_stopped(child: Any, server: ServerProcess, line: str) -> None:
    """Type `line` with the server stopped; return once its request waits, unread, in the
    server's receive queue."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    assert unread_by_server(child, server) == 0
    child.sendline(line)
    deadline = time.monotonic() + 30
    while unread_by_server(child, server) == 0:
        assert time.monotonic() < deadline, "the request was never sent"
        time.sleep(0.05)


def interrupt(child: Any, server: ServerProcess) -> str:
    """Ctrl-C while the request waits, then let the server go on; what the shell said."""
    assert server.process is not None
    try:
        child.sendintr()
        child.expect("Interrupted.")
        said = child.before
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    child.expect("vitrine ")
    return said


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def ids_in(text: str, ids: list[int]) -> list[int]:
    """Which of `ids` the table shows, in its order: the first cell of a row."""
    shown = []
    for line in ANSI.sub("", text).splitlines():
        words = line.strip(" \r│┃").split()
        if words and words[0].isdigit() and int(words[0]) in ids:
            shown.append(int(words[0]))
    return shown


def test_more_after_an_interrupted_more_shows_the_batch_that_was_interrupted(
    listing_server: ServerProcess, tmp_path: Path
) -> None:
    """QA: 400 399 398, Ctrl-C on `more`, then `more` showed 394 393 392 as "results 4-6"."""
    tag, ids = stocked(listing_server, tmp_path, 12)
    buyer = Buyer(listing_server, tmp_path)
    with terminal(buyer) as child:
        child.sendline(f"browse_by_tags {tag} --batch 3 --no-images")
        child.expect(r"Showing results 1-3 of")
        assert ids_in(child.before, ids) == ids[:3]
        send_while_stopped(child, listing_server, "more --no-images")
        said = interrupt(child, listing_server)
        assert "still on its way: `more` shows it" in said, said
        child.sendline("more --no-images")
        child.expect(r"Showing results (\S+) of")
        assert child.match.group(1) == "4-6", child.before
        assert ids_in(child.before, ids) == ids[3:6], child.before
        child.sendline("more --no-images")
        child.expect(r"Showing results (\S+) of")
        assert child.match.group(1) == "7-9"
        assert ids_in(child.before, ids) == ids[6:9], child.before


def test_a_search_interrupted_before_its_first_batch_shows_that_batch_at_more(
    listing_server: ServerProcess, tmp_path: Path
) -> None:
    """Not the listing before it, nor "no listing yet": the first batch, numbered 1-3."""
    tag, ids = stocked(listing_server, tmp_path, 6)
    buyer = Buyer(listing_server, tmp_path)
    with terminal(buyer) as child:
        child.sendline("browse_by_tags nosuchtagatall --no-images")
        child.expect("Nothing found for")
        send_while_stopped(child, listing_server, f"search zebra{tag}* --batch 3 --no-images")
        interrupt(child, listing_server)
        child.sendline("more --no-images")
        child.expect(r"Showing results (\S+) of the search")
        assert child.match.group(1) == "1-3", child.before
        first = ids_in(child.before, ids)
        assert len(first) == 3, child.before
        child.sendline("more --no-images")
        child.expect(r"End of the search")
        rest = ids_in(child.before, ids)
        assert sorted(first + rest) == sorted(ids), child.before  # equal ranks: any order


def test_more_after_a_reconnect_says_the_listing_went_with_the_connection(
    server: ServerProcess, tmp_path: Path
) -> None:
    """QA: the server's "it ended, it was one of the oldest, or the server restarted" named
    three things that had not happened; the shell knows it reconnected."""
    tag, _ = stocked(server, tmp_path, 5)
    buyer = Buyer(server, tmp_path)
    with terminal(buyer) as child:
        child.sendline(f"browse_by_tags {tag} --batch 2 --no-images")
        child.expect(r"Showing results 1-2 of")
        child.expect("vitrine ")
        server.stop()
        server.restart()
        child.sendline("more --no-images")
        child.expect("was lost with the connection it was listed on")
        child.expect("vitrine ")
        said = child.before
        assert "run it again" in said
        assert "no longer open" not in said
        # and it stays lost: a second `more` says the same, it does not ask the server
        child.sendline("more --no-images")
        child.expect("was lost with the connection it was listed on")


def test_a_connection_kept_alive_still_continues(
    listing_server: ServerProcess, tmp_path: Path
) -> None:
    """The reconnect check must not stop an ordinary `more`."""
    tag, ids = stocked(listing_server, tmp_path, 4)
    buyer = Buyer(listing_server, tmp_path)
    with terminal(buyer) as child:
        child.sendline(f"browse_by_tags {tag} --batch 2 --no-images")
        child.expect(r"Showing results 1-2 of")
        child.sendline("more --no-images")
        child.expect("End of images")
        assert ids_in(child.before, ids) == ids[2:]


@pytest.mark.parametrize(
    ("request_", "fits", "unfit"),
    [
        (TextSearch(id=0, text="hat"), "more words", "--tags"),
        (TextSearch(id=0, text="hat"), "more words", "price"),
        (ImageSearch(id=0, image_id=1), "--tags, --min-price, --max-price", "words"),
        (ColourSearch(id=0, hue=10.0), "--tolerance", "words"),
    ],
)
def test_the_advice_after_the_cap_fits_the_search(request_: Any, fits: str, unfit: str) -> None:
    """QA: "narrow it (--tags, a price range, more words)" after every ranked search, but
    `search` takes no --tags nor prices, and a search by image or colour has no words."""
    latest = LatestListing("x", None, RenderOptions(), 10, kept=500, narrow=_narrowing(request_))
    assert fits in _cut(latest) and unfit not in _cut(latest)
