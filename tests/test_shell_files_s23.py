"""Files QA found worded two ways or passed over, through the real client.py and server.

search_by_image named the photo when the client's own check refused it
(`dress.tiff: TIFF images are not accepted; ...`) but not when the server did (`Error
(UNSUPPORTED_IMAGE): The JPEG file is truncated ...`). Now both read `PATH: Error (CODE):
reason`; an error that is not about the file (no model, logged out) is not said of it.

A folder upload passed over `.mpo` photos (Pillow files them under a format of its own) and
`.jxl` files (to be tried, so their refusal says why), and said only that the folder held "no
image files".
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from shell.upload import image_suffixes, looks_like_an_image
from tests.servers import LoggedInShell, ServerProcess, create_users, json_lines, run_client
from tests.test_similarity_server import MISSING_WEIGHTS, READY_TIMEOUT_S, photo, weights

PASSWORD = "correct horse battery"
#: The model server's byte limit: small, so a file over it costs nothing to make.
BYTE_LIMIT = 200_000


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose model is loaded: only then does it decode a search's photo."""
    process = ServerProcess(
        tmp_path_factory.mktemp("files-model"),
        extra_args=["--max-image-bytes", str(BYTE_LIMIT)],
        env={"VITRINE_WEIGHTS": weights()},
    ).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("alice",), PASSWORD)
    process.wait_for_log("vector index", READY_TIMEOUT_S)  # model and index load in the background
    yield process
    process.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server without a model: uploads work, search by image answers UNAVAILABLE."""
    process = ServerProcess(
        tmp_path_factory.mktemp("files-plain"), env={"VITRINE_WEIGHTS": MISSING_WEIGHTS}
    ).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("bob",), PASSWORD)
    yield process
    process.stop()


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 40, 60) if mode == "RGB" else 1).save(buffer, format="PNG")
    return buffer.getvalue()


def _mpo() -> bytes:
    """A multi-picture JPEG, as a phone or a 3D camera saves it: two pictures, one file."""
    left = Image.open(io.BytesIO(photo(5)))
    right = Image.open(io.BytesIO(photo(6)))
    buffer = io.BytesIO()
    left.save(buffer, format="MPO", save_all=True, append_images=[right])
    return buffer.getvalue()


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# --- search_by_image: refusals of the photo ------------------------------------------------------


def test_a_photo_the_server_refuses_is_named_with_the_code(
    model_server: ServerProcess, tmp_path: Path
) -> None:
    alice = LoggedInShell(model_server, "alice", tmp_path / "alice")
    jpeg, png = photo(3), _png((320, 256))
    cases = [
        (_write(tmp_path, "cut.jpg", jpeg[: len(jpeg) * 6 // 10]), "UNSUPPORTED_IMAGE",
         "The JPEG file is truncated"),
        (_write(tmp_path, "cut.png", png[: len(png) * 6 // 10]), "UNSUPPORTED_IMAGE",
         "The PNG file is truncated"),
        (_write(tmp_path, "wide.png", _png((30001, 10))), "UNSUPPORTED_IMAGE", "30001x10"),
        (_write(tmp_path, "huge.png", _png((7000, 6000), "1")), "TOO_LARGE",
         "40,000,000-pixel limit"),
    ]  # fmt: skip
    for path, code, reason in cases:
        for flags in ("", " --json"):
            status, out, err = alice(f'search_by_image "{path}"{flags}')
            assert status == 1, (path, err)
            assert out == "", out  # --json: nothing on stdout for a refusal, as before
            (line,) = [line for line in err.splitlines() if "Error" in line]
            assert line.startswith(f"{path}: Error ({code}): "), line
            assert reason in line, line
            assert "  truncated" not in err, err  # the reason code is no second line


def test_a_photo_the_client_refuses_reads_the_same(
    model_server: ServerProcess, tmp_path: Path
) -> None:
    alice = LoggedInShell(model_server, "alice", tmp_path / "alice")
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    cases = [
        (_write(tmp_path, "dress.tiff", tiff.getvalue()), "UNSUPPORTED_IMAGE",
         "TIFF images are not accepted"),
        (_write(tmp_path, "empty.jpg", b""), "UNSUPPORTED_IMAGE", "The file is empty"),
        (_write(tmp_path, "big.jpg", photo(4)[:4] + bytes(BYTE_LIMIT)), "TOO_LARGE",
         "The file is 200,004 bytes, over the 200,000-byte limit"),
    ]  # fmt: skip
    for path, code, reason in cases:
        status, out, err = alice(f'search_by_image "{path}" --json')
        assert status == 1 and out == "", (out, err)
        assert f"{path}: Error ({code}): {reason}" in err, err
    # not a refusal of a picture: worded as before
    status, _, err = alice(f'search_by_image "{tmp_path / "nowhere.jpg"}"')
    assert status == 1 and f"{tmp_path / 'nowhere.jpg'}: no such file." in err, err


def test_errors_not_about_the_file_do_not_name_it(
    plain_server: ServerProcess, tmp_path: Path
) -> None:
    query = _write(tmp_path, "q.jpg", photo(7))
    bob = LoggedInShell(plain_server, "bob", tmp_path / "bob")
    status, _, err = bob(f'search_by_image "{query}"')
    assert status == 1 and "Error (UNAVAILABLE): " in err, err
    assert str(query) not in err, err
    logged_out = run_client(
        plain_server, f'search_by_image "{query}"', config_dir=tmp_path / "nobody"
    )
    assert logged_out.returncode == 1, logged_out
    assert "log in" in logged_out.stderr and str(query) not in logged_out.stderr, logged_out


# --- add_image: a folder's .mpo and .jxl ---------------------------------------------------------


def test_a_walk_takes_mpo_and_jxl_names() -> None:
    assert {".mpo", ".jxl"} <= image_suffixes()
    assert looks_like_an_image("PHONE.MPO") and looks_like_an_image("photo.jxl")
    assert not looks_like_an_image("IMG_0001.NEF")  # a camera's raw file is still left alone


def test_a_folder_uploads_its_mpo_and_tries_its_jxl(
    plain_server: ServerProcess, tmp_path: Path
) -> None:
    folder = tmp_path / "img5"
    mpo = _write(folder, "phone.mpo", _mpo())
    jxl = _write(folder, "photo.jxl", b"\xff\x0a" + bytes(64))  # a bare JPEG XL codestream
    raw = _write(folder, "IMG_0001.NEF", b"II*\x00" + bytes(64))
    bob = LoggedInShell(plain_server, "bob", tmp_path / "bob")
    status, out, err = bob(f'add_image "{folder}" --json')
    assert status == 1, err  # the .jxl is refused
    by_path = {line["path"]: line for line in json_lines(out)}
    assert by_path[str(mpo)]["outcome"] == "new", by_path
    assert by_path[str(jxl)]["outcome"] == "rejected", by_path
    assert "JXL images are not accepted" in by_path[str(jxl)]["reason"], by_path
    assert by_path[str(raw)] == {
        "path": str(raw),
        "outcome": "ignored",
        "reason": "not an image file name",
        "code": "not_an_image_name",
    }
    stored = by_path[str(mpo)]["id"]
    status, out, err = bob(f"show_image {stored} --json")
    assert status == 0, err
    (shown,) = json_lines(out)
    assert shown["format"] == "JPEG" and (shown["width"], shown["height"]) == (320, 256), shown
    # what a person reads: the .jxl named with its reason, not "the directory holds no image files"
    status, out, err = bob(f'add_image "{folder}"')
    assert f"rejected  {jxl}: JXL images are not accepted" in out, out
    assert f"present   #{stored}" in out, out
    assert "holds no image files" not in out + err, err
