"""search_by_image end to end: the real client.py against the real server and model.

What a person sees (a table with a score column, the "more" hint), what a script reads
(--json lines with `score`, exit statuses), paging with --batch and more, filters, privacy, and
the sentence shown when the server has no weights. Needs VITRINE_WEIGHTS (skipped without).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.catalog import ImageSearch, ListingOptions
from protocol.errors import ErrorCode, VitrineError
from shell.connection import ServerConnection
from tests.servers import LoggedInShell as Shell
from tests.servers import ServerProcess, create_users, json_lines, run_client
from tests.test_images_server import upload_many
from tests.test_similarity_server import MISSING_WEIGHTS, READY_TIMEOUT_S, photo, weights

PASSWORD = "correct horse battery"
#: Images stored before the model was there: enough that the backfill is still at them when
#: the first search by image runs.
BACKFILLED = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("similar-e2e"), env={"VITRINE_WEIGHTS": weights()}
    ).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("alice", "bob"), PASSWORD)
    process.wait_for_log("vector index", READY_TIMEOUT_S)  # model and index load in the background
    yield process
    process.stop()


@pytest.fixture
def alice(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "alice", tmp_path / "alice")


@pytest.fixture
def bob(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "bob", tmp_path / "bob")


def _photos(folder: Path, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"p{seed}.jpg"
        path.write_bytes(photo(seed))
        paths.append(path)
    return paths


def _upload(shell: Shell, folder: Path, *flags: str) -> dict[str, int]:
    code, out, err = shell(f'add_image "{folder}" --json ' + " ".join(flags))
    assert code == 0, err
    return {Path(r["path"]).name: int(r["id"]) for r in json_lines(out)}


def test_search_by_file_table_json_batches_and_more(alice: Shell, tmp_path: Path) -> None:
    paths = _photos(tmp_path / "shop", range(5000, 5012))
    ids = _upload(alice, tmp_path / "shop", "--tags e2e-sim-a", "--price 3.50", "--quantity 2")
    query = paths[4]
    code, out, err = alice(f'search_by_image "{query}" --tags e2e-sim-a --no-images')
    assert code == 0, err
    assert "score" in out and "1.000" in out
    assert "Showing results 1-12" not in out and "End of images like" in out
    code, out, err = alice(
        f'search_by_image "{query}" --tags e2e-sim-a --json --batch 5',
        "more --json",
        "more --json",
    )
    assert code == 0, err
    lines = json_lines(out)
    assert [len(lines)] == [12]
    assert lines[0]["id"] == ids[query.name] and lines[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert sorted(r["id"] for r in lines) == sorted(ids.values())
    scores = [r["score"] for r in lines]
    assert scores == sorted(scores, reverse=True)
    assert all(r["price"] == "3.50" for r in lines)
    assert "type more for up to 5 more" in err


def test_search_by_id_and_filters(alice: Shell, bob: Shell, tmp_path: Path) -> None:
    shop = _upload_many(alice, tmp_path)
    some = shop["cheap"][0]
    code, out, err = bob(f"search_by_image --id {some} --tags e2e-sim-b --json --batch 50")
    assert code == 0, err
    found = {r["id"] for r in json_lines(out)}
    assert some not in found
    assert found == set(shop["cheap"] + shop["dear"]) - {some}  # not the private ones
    code, out, err = bob(
        f"search_by_image --id {some} --tags e2e-sim-b --min-price 10 --max-price 20 "
        "--in-stock --json --batch 50"
    )
    assert code == 0, err
    assert {r["id"] for r in json_lines(out)} == set(shop["dear"])
    code, out, err = alice(f"search_by_image --id {some} --tags e2e-sim-b --json --batch 50")
    assert {r["id"] for r in json_lines(out)} == set(shop["all"]) - {some}
    private = shop["private"][0]
    code, out, err = bob(f"search_by_image --id {private}")
    assert code != 0 and "NOT_FOUND" in err


def _upload_many(alice: Shell, tmp_path: Path) -> dict[str, list[int]]:
    cheap = _upload(
        alice,
        _photos_dir(tmp_path / "cheap", range(6000, 6004)),
        "--tags e2e-sim-b",
        "--price 1",
        "--quantity 1",
    )
    dear = _upload(
        alice,
        _photos_dir(tmp_path / "dear", range(6100, 6103)),
        "--tags e2e-sim-b",
        "--price 15",
        "--quantity 4",
    )
    private = _upload(
        alice, _photos_dir(tmp_path / "private", range(6200, 6202)), "--tags e2e-sim-b", "--private"
    )
    values = {
        "cheap": list(cheap.values()),
        "dear": list(dear.values()),
        "private": list(private.values()),
    }
    values["all"] = values["cheap"] + values["dear"] + values["private"]
    return values


def _photos_dir(folder: Path, seeds: range) -> Path:
    _photos(folder, seeds)
    return folder


def test_mistakes_are_refused_before_anything_is_sent(alice: Shell, tmp_path: Path) -> None:
    code, _, err = alice("search_by_image")
    assert code != 0 and "either a PATH" in err
    code, _, err = alice(f'search_by_image "{tmp_path / "nowhere.jpg"}"')
    assert code != 0 and "nowhere.jpg: no such file." in err, err
    code, _, err = alice(f'search_by_image "{tmp_path}"')
    assert code != 0 and "is not a file" in err, err
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    code, _, err = alice(f'search_by_image "{notes}"')
    assert code != 0 and "not an image" in err
    code, _, err = alice(f'search_by_image "{notes}" --min-price 5 --max-price 1')
    assert code != 0 and "above --max-price" in err
    (whole_path,) = _photos(tmp_path / "whole", range(3, 4))
    whole = whole_path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) // 2])  # only the server's decoder finds this out
    code, _, err = alice(f'search_by_image "{cut}"')
    # the sentence, once: the stable code `truncated` is for scripts, not a second line
    assert code != 0 and "Error (UNSUPPORTED_IMAGE): The JPEG file is truncated" in err, err
    assert "  truncated" not in err, err


def test_without_weights_the_shell_says_how_to_provide_them(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "srv", env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}).start()
    try:
        (path,) = _photos(tmp_path / "q", range(1, 2))
        home = tmp_path / "home"
        done = run_client(
            process,
            "create_user frank",
            "login frank",
            f'add_image "{path}"',
            f'search_by_image "{path}"',
            config_dir=home,
            password=PASSWORD,
        )
        assert done.returncode != 0
        assert "1 new" in done.stdout  # uploads work without a model
        assert "UNAVAILABLE" in done.stderr and "VITRINE_WEIGHTS=" in done.stderr
    finally:
        process.stop()


def _unindexed_now(conn: ServerConnection, data: bytes) -> int | None:
    """The first batch's `unindexed` of a search with `data`, or None while the model loads."""
    try:
        frames = list(conn.stream(ImageSearch(id=0, data=data, options=ListingOptions(limit=1))))
    except VitrineError as exc:
        if exc.code is ErrorCode.UNAVAILABLE:
            return None
        raise
    return frames[0].unindexed  # type: ignore[attr-defined]


def test_a_search_during_the_backfill_says_what_it_could_not_rank(tmp_path: Path) -> None:
    """Images stored before the model was there are ranked only once the backfill reached
    them: until then the shell says, once and on stderr (stdout stays JSON), how many a search
    by image left out, instead of a result list that silently misses them."""
    real = weights()
    process = ServerProcess(
        tmp_path / "srv", ["--no-colours"], env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}
    ).start()
    home = tmp_path / "home"
    try:
        conn = process.user_connection(home, "dana", PASSWORD)
        upload_many(conn, [photo(20_000 + n) for n in range(BACKFILLED)], tags=["backfill"])
        conn.close()
    finally:
        process.stop()
    (query,) = _photos(tmp_path / "q", range(20_000, 20_001))
    process.env = {"VITRINE_WEIGHTS": real}
    process.restart()
    try:
        conn = process.user_connection(home, "dana", PASSWORD)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (missing := _unindexed_now(conn, query.read_bytes())) is None:
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
        conn.close()
        assert missing, "no unindexed images reported by a search at the backfill's start"
        dana = Shell(process, "dana", home, PASSWORD)
        code, out, err = dana(
            f'search_by_image "{query}" --json --batch 2', "more --json", "more --json"
        )
        assert code == 0, err
        assert all(line.startswith("{") for line in out.splitlines()), out
        assert err.count("still being indexed for search by image") == 1, err
        said = re.search(r"(\d+) images? (?:is|are) still being indexed", err)
        assert said is not None and 0 < int(said.group(1)) <= BACKFILLED, err
        assert "not in these results" in err and "backfill is done" in err
    finally:
        process.stop()
