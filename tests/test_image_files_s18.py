"""Files QA found misjudged: unreadable folders and link loops passed over or misnamed by the
walk, big PNG metadata taken for damage, cut animations accepted, garbage called truncated,
and refusals the server's log did not explain.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from shell.upload import LINK_LOOP, skip_code, walk_paths
from tests.servers import LoggedInShell, ServerProcess, create_users, json_lines
from util.images import (
    CORRUPT,
    PNG_MAX_TEXT_CHUNK,
    TOO_MUCH_METADATA,
    TRUNCATED,
    ImageRejected,
    decode_image,
)

PASSWORD = "correct horse battery"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _jpeg(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _reason(data: bytes) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    return info.value.reason


def _frames(mode: str) -> list[Image.Image]:
    return [Image.effect_noise((200, 200), 60 + 20 * n).convert(mode) for n in range(3)]


def _animation(fmt: str) -> bytes:
    frames = _frames("P" if fmt == "GIF" else "RGB")
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


# --- the walk -----------------------------------------------------------------------------------


@pytest.fixture
def locked_tree(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "P"
    (root / "ok").mkdir(parents=True)
    (root / "locked").mkdir()
    (root / "ok" / "a.jpg").write_bytes(_jpeg())
    (root / "locked" / "b.jpg").write_bytes(_jpeg((0, 0, 200)))
    yield root
    (root / "locked").chmod(0o755)  # so that pytest can remove it


def _check_unreadable_is_said(root: Path) -> None:
    locked = str(root / "locked")
    unreadable = (locked, "a folder that cannot be read (permission denied)")
    for given in ([str(root)], [f"{root}/**/*.jpg"], [f"{root}/*/*.jpg"]):
        walked = walk_paths(given)
        assert [f.path.name for f in walked.files] == ["a.jpg"], given
        assert walked.problems == [unreadable], given
        assert skip_code(unreadable[1]) == "unreadable_folder"
    # named outright: said of the PATH as given, and not "the directory holds no files"
    assert walk_paths([locked]).problems == [unreadable]
    # a glob whose only folder cannot be read says so, not "matches no file"
    assert walk_paths([f"{locked}/*.jpg"]).problems == [unreadable]


@pytest.mark.skipif(AS_ROOT, reason="root reads a folder whatever its mode")
def test_a_folder_that_cannot_be_read_is_said_not_passed_over(locked_tree: Path) -> None:
    (locked_tree / "locked").chmod(0)
    _check_unreadable_is_said(locked_tree)


def test_a_folder_that_cannot_be_listed_is_said_even_as_root(
    locked_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same as above for a run as root, where chmod cannot refuse: the listing itself
    fails, as it does for anyone else on a mode-000 folder."""
    listing = os.scandir
    locked = str(locked_tree / "locked")

    def scandir(path: str = ".") -> object:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    _check_unreadable_is_said(locked_tree)


def test_a_link_loop_is_called_a_loop_not_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "loop1.jpg").symlink_to("loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to("loop1.jpg")
    (tmp_path / "gone.jpg").symlink_to("nowhere.jpg")
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    named = walk_paths([str(tmp_path / "loop1.jpg")])
    assert named.problems == [(str(tmp_path / "loop1.jpg"), LINK_LOOP)]
    walked = dict(walk_paths([str(tmp_path)]).problems)
    assert walked == {
        str(tmp_path / "gone.jpg"): "a broken link",
        str(tmp_path / "loop1.jpg"): LINK_LOOP,
        str(tmp_path / "loop2.jpg"): LINK_LOOP,
    }
    assert skip_code(LINK_LOOP) == "link_loop"


# --- decoding -----------------------------------------------------------------------------------


def _png_with_text(*texts: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for n, text in enumerate(texts):
        info.add_itxt(f"XML:com.adobe.xmp{n}", text, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (10, 120, 200)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_a_png_with_large_xmp_metadata_is_accepted() -> None:
    """1.2 MB of XMP (Photoshop keeps a document's history there) was "damaged"."""
    data = _png_with_text("x" * 1_200_000)
    assert len(data) < 20_000
    decoded = decode_image(data)
    assert (decoded.format, decoded.width, decoded.height) == ("PNG", 200, 100)


def test_metadata_over_the_limits_is_refused_for_what_it_is() -> None:
    one_chunk = _png_with_text("x" * (PNG_MAX_TEXT_CHUNK + 1))
    in_all = _png_with_text(*["x" * (PNG_MAX_TEXT_CHUNK - 1)] * 3)
    for data in (one_chunk, in_all):
        with pytest.raises(ImageRejected) as info:
            decode_image(data)
        assert info.value.reason == TOO_MUCH_METADATA
        assert "metadata" in info.value.message


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_a_cut_animation_is_truncated_not_its_first_frame(fmt: str) -> None:
    data = _animation(fmt)
    assert decode_image(data).format == fmt
    for fraction in (0.6, 0.9, 0.99):
        assert _reason(data[: int(len(data) * fraction)]) == TRUNCATED, (fmt, fraction)
    assert _reason(data[:-12]) == TRUNCATED, fmt  # no GIF trailer, no PNG IEND


def test_a_still_gif_without_its_trailer_alone_is_whole() -> None:
    """Some encoders leave the trailer out; the picture is all there, so it is taken."""
    buffer = io.BytesIO()
    _frames("P")[0].save(buffer, "GIF")
    data = buffer.getvalue()
    assert data.endswith(b";")
    assert decode_image(data[:-1]).format == "GIF"


def test_bytes_after_a_jpeg_signature_are_garbage_not_a_cut_download() -> None:
    said = []
    for seed in range(50):
        data = b"\xff\xd8\xff\xe0" + random.Random(seed).randbytes(504)
        said.append(_reason(data))
    # An APP0 segment's name must be ASCII ("JFIF"); 1 in about 60 random ones pass for one.
    assert said.count(CORRUPT) >= 47, said
    # while a real JPEG cut anywhere is still truncated
    photo = io.BytesIO()
    Image.effect_noise((300, 200), 80).convert("RGB").save(photo, "JPEG", exif=b"Exif\0\0MM")
    real = photo.getvalue()
    for cut in range(30, len(real), max(1, len(real) // 40)):
        assert _reason(real[:cut]) == TRUNCATED, cut


# --- end to end: the shell's report and the server's log ----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("s18-files")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("root", "alice"), PASSWORD)
    yield process
    process.stop()


def test_a_refused_upload_is_logged_with_its_reason_and_name(
    server: ServerProcess, tmp_path: Path
) -> None:
    cut = _animation("GIF")
    folder = tmp_path / "upload"
    folder.mkdir()
    name = "cut\nrequest=forged.gif"
    (folder / "cut.gif").write_bytes(cut[: int(len(cut) * 0.9)])
    shell = LoggedInShell(server, "alice", tmp_path / "config")
    code, out, err = shell(f"add_image {folder / 'cut.gif'} --json --title T")
    assert code != 0, out + err
    [line] = json_lines(out)
    assert (line["outcome"], line["code"]) == ("rejected", "truncated"), line
    log = server.wait_for_log("refused: reason=truncated")
    assert "upload of 'cut.gif' by user" in log, log[-2000:]
    # a name with a newline stays on its line
    (folder / "odd.gif").write_bytes(cut[:-1])
    os.rename(folder / "odd.gif", folder / name)
    code, out, err = shell(f"add_image {folder} --json --title T")
    log = server.wait_for_log("request=forged.gif' by user")
    assert "\nrequest=forged.gif" not in log


@pytest.mark.skipif(AS_ROOT, reason="root reads a folder whatever its mode")
def test_add_image_counts_an_unreadable_folder_and_fails(
    server: ServerProcess, locked_tree: Path, tmp_path: Path
) -> None:
    (locked_tree / "locked").chmod(0)
    shell = LoggedInShell(server, "alice", tmp_path / "config")
    code, out, err = shell(f"add_image {locked_tree} --json --title T")
    assert code != 0
    lines = {line["outcome"]: line for line in json_lines(out)}
    assert lines["skipped"]["code"] == "unreadable_folder"
    assert lines["skipped"]["path"].endswith("locked")
    assert "1 path skipped" in err
