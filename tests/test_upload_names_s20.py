"""File names that are not UTF-8, through the real client and server.

Each undecodable byte used to become U+FFFD wherever the name went: `x\\xff.png` and
`x\\xfe.png` were both reported as `x\ufffd.png`, with different ids, and stored under that
one name. Now the shell shows them as the command line does (`x\\xff.png`) and the server
keeps them as `x%FF.png`.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from protocol.catalog import GetImage, ImageDetails
from tests.servers import ServerProcess, client_argv, json_lines

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("s20-names-server")).start()
    process.user_connection(tmp_path_factory.mktemp("s20-names-admin"), "admin", PASSWORD).close()
    yield process
    process.stop()


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _odd_folder(top: Path) -> Path:
    """`amb/` with two images whose names differ only in one byte that is not UTF-8, and a
    text file so named, which the walk leaves alone."""
    folder = top / "amb"
    folder.mkdir()
    (folder / os.fsdecode(b"x\xff.png")).write_bytes(_png((200, 30, 30)))
    (folder / os.fsdecode(b"x\xfe.png")).write_bytes(_png((30, 30, 200)))
    (folder / os.fsdecode(b"notes\xff.txt")).write_text("not a picture")
    return folder


def _client(shop: ServerProcess, top: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    """client.py run from `top`, so the paths it reports are the relative ones it was given."""
    shop.user_connection(top / "client", "seller", PASSWORD).close()
    done = subprocess.run(
        client_argv(shop, top / "client", "login seller", *commands),
        cwd=top,
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def _stored(shop: ServerProcess, top: Path, image_id: int) -> tuple[str, str]:
    connection = shop.user_connection(top / "client", "seller", PASSWORD)
    try:
        image = connection.call(GetImage(id=0, image_id=image_id), ImageDetails).image
    finally:
        connection.close()
    return image.filename, image.title


def test_json_lines_tell_the_files_apart_and_the_stored_names_differ(
    shop: ServerProcess, tmp_path: Path
) -> None:
    _odd_folder(tmp_path)
    done = _client(shop, tmp_path, "add_image amb --json")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line["path"]: line for line in json_lines(done.stdout)}
    assert set(lines) == {"amb/x\\xff.png", "amb/x\\xfe.png", "amb/notes\\xff.txt"}, lines
    assert lines["amb/notes\\xff.txt"]["outcome"] == "ignored"
    ff, fe = lines["amb/x\\xff.png"], lines["amb/x\\xfe.png"]
    assert ff["outcome"] == fe["outcome"] == "new"
    assert ff["id"] != fe["id"]
    # each id is the file its line names: the server keeps the byte too, as %XX
    assert _stored(shop, tmp_path, ff["id"]) == ("x%FF.png", "x%FF")
    assert _stored(shop, tmp_path, fe["id"]) == ("x%FE.png", "x%FE")


def test_human_lines_tell_the_files_apart(shop: ServerProcess, tmp_path: Path) -> None:
    _odd_folder(tmp_path)
    first = _client(shop, tmp_path, "add_image amb --json")
    ids = {line["path"]: line["id"] for line in json_lines(first.stdout) if "id" in line}
    again = _client(shop, tmp_path, "add_image amb --verbose")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "\ufffd" not in again.stdout
    lines = again.stdout.splitlines()
    for path in ("amb/x\\xff.png", "amb/x\\xfe.png"):
        assert f"present   #{ids[path]}  {path} (already stored)" in lines, again.stdout
    assert "(notes\\xff.txt)" in again.stdout  # the summary names the file it left alone
