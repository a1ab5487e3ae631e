"""Images end to end: two users (and an admin) drive the real client.py against the real server.

Every test talks to the server only through the shell, the way a person or a script would, and
reads what the shell prints: --json lines where a script would, the table or messages where a
person would. Tags are unique per test so tests sharing the server do not see each other's
images in tag listings.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import ROOT, ServerProcess, create_users, run_client

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for this module, whose first account (the admin) is `root`."""
    process = ServerProcess(tmp_path_factory.mktemp("images-server")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("root", "alice", "bob"), PASSWORD)
    yield process
    process.stop()


class Shell:
    """client.py runs as one user; each call is one process with the commands as arguments."""

    def __init__(self, server: ServerProcess, name: str, config_dir: Path) -> None:
        self.server, self.name, self.config_dir = server, name, config_dir

    def __call__(self, *commands: str, env: dict[str, str] | None = None) -> Result:
        done = run_client(
            self.server,
            f"login {self.name}",
            *commands,
            config_dir=self.config_dir,
            password=PASSWORD,
            extra_env={"COLUMNS": "160", **(env or {})},
        )
        assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
        return Result(done.returncode, done.stdout, done.stderr)


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def alice(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "alice", tmp_path / "alice")


@pytest.fixture
def bob(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "bob", tmp_path / "bob")


@pytest.fixture
def root(server: ServerProcess, tmp_path: Path) -> Shell:
    return Shell(server, "root", tmp_path / "root")


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 36)) -> Path:
    """A small photo-like JPEG whose bytes differ with `seed` (so the server stores each)."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((seed % size[0], 0), (255 - seed % 256, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)
    return path


def _folder(root: Path, count: int, offset: int) -> Path:
    for index in range(count):
        sub = "deep/er" if index % 3 == 0 else ""
        _jpeg(root / sub / f"photo-{index:02d}.jpg", offset + index)
    return root


def _upload_one(shell: Shell, path: Path, *flags: str) -> int:
    done = shell(f'add_image "{path}" --json ' + " ".join(flags))
    assert done.code == 0, done
    (line,) = done.json_lines()
    assert line["outcome"] == "new", done
    return int(line["id"])  # type: ignore[call-overload]


# --- upload and browse ---------------------------------------------------------------------------


def test_add_image_json_gives_scripts_a_line_and_a_stable_code_for_every_path(
    alice: Shell, tmp_path: Path
) -> None:
    """Rejections used to carry their code inside the sentence, and a missing path only
    reached stderr: a script could not tell what happened to each path it gave."""
    good = _jpeg(tmp_path / "good.jpg", 960)
    whole = _jpeg(tmp_path / "whole.jpg", 961, (200, 200)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # the server finds this out
    (tmp_path / "notes.jpg").write_text("not a photo at all")  # the shell finds this out
    missing = tmp_path / "no-such.jpg"
    paths = " ".join(str(p) for p in (good, tmp_path / "cut.jpg", tmp_path / "notes.jpg", missing))
    done = alice(f"add_image {paths} --json")
    assert done.code != 0, done
    lines = {Path(str(line["path"])).name: line for line in done.json_lines()}
    assert lines["good.jpg"]["outcome"] == "new"
    assert (lines["cut.jpg"]["outcome"], lines["cut.jpg"]["code"]) == ("rejected", "truncated")
    assert str(lines["cut.jpg"]["reason"]).startswith("The JPEG file is truncated"), lines
    assert lines["notes.jpg"]["outcome"] == "rejected" and lines["notes.jpg"]["code"]
    assert lines["no-such.jpg"] == {
        "path": str(missing),
        "outcome": "skipped",
        "reason": "no such file or directory",
        "code": "not_found",
    }
    assert "Not everything was uploaded: 2 files rejected and 1 path skipped" in done.err


def test_upload_a_folder_then_browse_it_in_batches(alice: Shell, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "shop", 25, offset=1000)
    (folder / "notes.jpg").write_text("not a photo at all")
    (folder / ".DS_Store").write_bytes(b"\0" * 10)
    (folder / "readme.txt").write_text("sizes run small")  # not an image by name: left alone
    done = alice(f"add_image {folder} --tags shirt-e2e,Blue --price 12.50 --quantity 3")
    assert done.code != 0, done  # notes.jpg was rejected...
    assert re.search(r"26 files: 25 new, 0 already present, 1 rejected", done.out), done
    assert "Left alone 1 file in the folders whose names are not images (readme.txt)" in done.out
    assert "notes.jpg" in done.out and "not an image" in done.out
    # stdout and stderr are captured apart: the summary on stderr points at the other stream.
    assert "Not everything was uploaded: 1 file rejected; see stdout." in done.err

    listed = alice("browse_by_tags shirt-e2e --json", "more --json", "more --json", "more")
    assert listed.code == 0, listed
    rows = listed.json_lines()
    assert len(rows) == 25
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == 25
    assert ids == sorted(ids, reverse=True)  # newest first, across batches
    assert "Showing results 1-20" in listed.err and "results 21-25" not in listed.err
    assert "End of images tagged shirt-e2e: 25 images in all." in listed.err
    # `more` keeps the listing's --json
    assert "Already at the end of images tagged shirt-e2e: 25 images shown." in listed.err
    for row in rows:
        assert row["price"] == "12.50" and row["quantity"] == 3
        assert row["owner"] == "alice" and row["visibility"] == "public"
        assert set(row["tags"]) == {"shirt-e2e", "blue"}  # tags are normalised by the server
        assert str(row["title"]).startswith("photo-")

    again = alice(f"add_image {folder / 'deep'} {folder / 'photo-01.jpg'}")
    assert again.code == 0, again
    assert re.search(r"10 files: 0 new, 10 already present, 0 rejected", again.out), again
    assert again.out.count("(already stored)") == 10

    sized = alice("browse_by_tags shirt-e2e blue --batch 7 --json", "more --json", "more --json")
    assert [len(sized.json_lines())] == [21]
    assert "Showing results 8-14" in sized.err and "type more for up to 7 more" in sized.err


def test_any_versus_all_tags_and_browse_everything(
    alice: Shell, bob: Shell, tmp_path: Path
) -> None:
    hat = _upload_one(alice, _jpeg(tmp_path / "hat.jpg", 1), "--tags anyall-hat,anyall-red")
    cap = _upload_one(bob, _jpeg(tmp_path / "cap.jpg", 2), "--tags anyall-hat")
    scarf = _upload_one(bob, _jpeg(tmp_path / "scarf.jpg", 3), "--tags anyall-red")
    both = alice("browse_by_tags anyall-hat anyall-red --json")
    assert [row["id"] for row in both.json_lines()] == [hat]
    either = alice("browse_by_tags anyall-hat anyall-red --any --json")
    assert {row["id"] for row in either.json_lines()} == {hat, cap, scarf}
    everything = bob("browse_by_tags --batch 500 --json")
    assert {hat, cap, scarf} <= {row["id"] for row in everything.json_lines()}


def test_table_for_people_and_contact_sheet(alice: Shell, tmp_path: Path) -> None:
    for index in range(3):
        _upload_one(alice, _jpeg(tmp_path / f"sheet-{index}.jpg", 40 + index), "--tags sheet-e2e")
    sheet = tmp_path / "out" / "sheet.png"
    sheet.parent.mkdir()
    done = alice(f"browse_by_tags sheet-e2e --sheet {sheet}")
    assert done.code == 0, done
    assert "sheet-2" in done.out and "alice" in done.out and "0.00" in done.out
    assert f"Wrote a contact sheet of 3 images to {sheet}" in done.out
    with Image.open(sheet) as picture:
        assert picture.format == "PNG"
        assert picture.width > 3 * 100  # three tiles side by side
    assert "▀" not in done.out  # output is a pipe: no pictures unless forced
    as_jpeg = tmp_path / "out" / "sheet.JPG"  # a .jpg used to get PNG bytes
    assert alice(f"browse_by_tags sheet-e2e --sheet {as_jpeg}").code == 0
    with Image.open(as_jpeg) as picture:
        assert picture.format == "JPEG"
    refused = alice(f"browse_by_tags sheet-e2e --sheet {tmp_path / 'out' / 'sheet.gif'}")
    assert refused.code != 0 and "written as .png, .jpg, .jpeg" in refused.err, refused
    empty = alice(f"browse_by_tags no-such-tag-e2e --sheet {tmp_path / 'out' / 'none.png'}")
    assert "No contact sheet written" in empty.out + empty.err, empty
    assert not (tmp_path / "out" / "none.png").exists()


def test_pictures_are_drawn_when_forced_and_not_in_json(alice: Shell, tmp_path: Path) -> None:
    image = _upload_one(alice, _jpeg(tmp_path / "drawn.jpg", 77, (64, 64)), "--tags drawn-e2e")
    blocks = {"VITRINE_GRAPHICS": "blocks"}
    shown = alice(f"show_image {image}", env=blocks)
    assert "▀" in shown.out or "▄" in shown.out, shown
    assert any(line.startswith("id ") for line in shown.out.splitlines()), shown
    drawn = alice("browse_by_tags drawn-e2e", env=blocks)
    assert "▀" in drawn.out or "▄" in drawn.out, drawn
    plain = alice("browse_by_tags drawn-e2e --no-images", env=blocks)
    assert "▀" not in plain.out and "drawn" in plain.out
    scripted = alice("browse_by_tags drawn-e2e --json", env=blocks)
    assert "▀" not in scripted.out and len(scripted.json_lines()) == 1


def test_search_by_text(alice: Shell, tmp_path: Path) -> None:
    image = _upload_one(
        alice,
        _jpeg(tmp_path / "x.jpg", 501),
        '--title "Linen summer dress" --description "Light, breathable xyzzyfabric"',
    )
    assert [r["id"] for r in alice("search linen summer --json").json_lines()] == [image]
    assert [r["id"] for r in alice("search xyzzyfabric --json").json_lines()] == [image]
    none = alice("search nothingmatchesthis")
    assert none.code == 0 and "Nothing found for the search" in none.out


def test_quoted_words_are_a_phrase(alice: Shell, tmp_path: Path) -> None:
    together = _upload_one(alice, _jpeg(tmp_path / "p1.jpg", 511), '--title "Zqxstraw zqxhat"')
    apart = _upload_one(alice, _jpeg(tmp_path / "p2.jpg", 512), '--title "Zqxhat of zqxstraw"')
    both = alice("search zqxstraw zqxhat --json").json_lines()
    assert sorted(r["id"] for r in both) == sorted([together, apart])
    phrase = alice('search "zqxstraw zqxhat" --json').json_lines()
    assert [r["id"] for r in phrase] == [together]
    assert alice("search '\"zqxhat zqxstraw\"' --json").json_lines() == []  # quotes passed through


# --- update and delete, and who may -------------------------------------------------------------


def test_update_by_owner_and_refusals(alice: Shell, bob: Shell, tmp_path: Path) -> None:
    image = _upload_one(alice, _jpeg(tmp_path / "u.jpg", 600), "--tags upd-e2e,old --price 5")
    changed = alice(
        f"update_image {image} --price 7.25 --quantity 9 --title Renamed "
        "--add-tags new --remove-tags old"
    )
    assert changed.code == 0, changed
    assert f"Updated #{image}." in changed.err and "Renamed" in changed.out
    (row,) = alice(f"show_image {image} --json").json_lines()
    assert (row["price"], row["quantity"], row["title"]) == ("7.25", 9, "Renamed")
    assert set(row["tags"]) == {"upd-e2e", "new"}  # type: ignore[arg-type]

    refused = bob(f"update_image {image} --price 1")
    assert refused.code != 0 and "FORBIDDEN" in refused.err, refused
    not_deleted = bob(f"delete_image {image}")
    assert not_deleted.code != 0 and "FORBIDDEN" in not_deleted.err, not_deleted
    assert alice(f"show_image {image} --json").json_lines()[0]["price"] == "7.25"

    for bad, words in [
        ("--price -1", "cannot be negative"),
        ("--price abc", "not a price"),
        ("--price 1.999", "more than two decimals"),
        ("--price 1000000000", "largest price"),
        ("--quantity +x", "not a change of stock"),
        ("--quantity 2.5", "whole number"),
        ("--quantity -10", "has 9 in stock now; taking 10 would leave less than none"),
    ]:
        done = alice(f"update_image {image} {bad}")
        assert done.code != 0 and words in done.err, (bad, done)
    nothing = alice(f"update_image {image}")
    assert nothing.code != 0 and "Nothing to change" in nothing.err


def test_update_moves_the_stock_with_a_sign(alice: Shell, tmp_path: Path) -> None:
    """A restock typed as +N keeps the count the server has, not one the seller last saw."""
    image = _upload_one(alice, _jpeg(tmp_path / "s.jpg", 650), "--quantity 4")
    assert alice(f"update_image {image} --quantity +5").code == 0
    assert alice(f"show_image {image} --json").json_lines()[0]["quantity"] == 9
    (row,) = alice(f"update_image {image} --quantity -3 --json").json_lines()
    assert row["quantity"] == 6
    refused = alice(f"update_image {image} --quantity -7")
    assert refused.code != 0 and "CONFLICT" in refused.err, refused
    assert "has 6 in stock now; taking 7" in refused.err and "Nothing was changed" in refused.err
    assert alice(f"update_image {image} --quantity 2").code == 0
    assert alice(f"show_image {image} --json").json_lines()[0]["quantity"] == 2


def test_delete_hides_everywhere_and_admin_may(
    alice: Shell, bob: Shell, root: Shell, tmp_path: Path
) -> None:
    mine = _upload_one(alice, _jpeg(tmp_path / "d1.jpg", 700), "--tags del-e2e")
    theirs = _upload_one(bob, _jpeg(tmp_path / "d2.jpg", 701), "--tags del-e2e")
    done = alice(f"delete_image {mine} {theirs}")
    assert done.code != 0, done
    assert f"Deleted #{mine}." in done.err
    assert f"#{theirs} not deleted (FORBIDDEN): Image {theirs} belongs to bob" in done.err
    assert [r["id"] for r in bob("browse_by_tags del-e2e --json").json_lines()] == [theirs]
    gone = alice(f"show_image {mine}")
    assert gone.code != 0 and "NOT_FOUND" in gone.err

    by_admin = root(f"update_image {theirs} --title FromAdmin", f"delete_image {theirs}")
    assert by_admin.code == 0, by_admin
    assert bob("browse_by_tags del-e2e --json").json_lines() == []
    tags = {r["tag"]: r["count"] for r in bob("tags --json").json_lines()}
    assert "del-e2e" not in tags or tags["del-e2e"] == 0


# --- privacy -------------------------------------------------------------------------------------


def test_private_images_are_invisible_to_others(alice: Shell, bob: Shell, tmp_path: Path) -> None:
    secret = _upload_one(
        alice,
        _jpeg(tmp_path / "s.jpg", 800),
        '--tags secret-e2e --private --title "Hidden gem zqxsecret"',
    )
    mine = alice("browse_by_tags secret-e2e --json", "tags --json")
    assert [(r["id"], r["visibility"]) for r in mine.json_lines() if "id" in r] == [
        (secret, "private")
    ]
    assert {"tag": "secret-e2e", "count": 1} in mine.json_lines()

    seen = bob(
        "browse_by_tags secret-e2e --json",
        "search zqxsecret --json",
        "browse_by_tags --batch 500 --json",
        "tags --json",
    )
    assert seen.code == 0, seen
    lines = seen.json_lines()
    assert all(r.get("id") != secret for r in lines)
    assert all(r.get("tag") != "secret-e2e" for r in lines)
    hidden = bob(f"show_image {secret}")
    assert hidden.code != 0 and "NOT_FOUND" in hidden.err
    meddling = bob(f"update_image {secret} --price 1", f"delete_image {secret}")
    assert meddling.code != 0 and "FORBIDDEN" not in meddling.err  # not even its existence

    assert alice(f"update_image {secret} --public").code == 0
    assert [r["id"] for r in bob("search zqxsecret --json").json_lines()] == [secret]


# --- show_image ----------------------------------------------------------------------------------


def test_show_image_saves_the_original_bytes(alice: Shell, tmp_path: Path) -> None:
    original = _jpeg(tmp_path / "orig" / "keep me.jpg", 900, (120, 80))
    image = _upload_one(alice, original, "--tags show-e2e")
    shown = alice(f"show_image {image}")
    assert shown.code == 0, shown
    assert "keep me" in shown.out and "120 x 80" in shown.out

    target = tmp_path / "saved.jpg"
    saved = alice(f"show_image {image} --save {target}")
    assert saved.code == 0, saved
    assert target.read_bytes() == original.read_bytes()
    refused = alice(f"show_image {image} --save {target}")
    assert refused.code != 0 and "--force" in refused.err
    target.write_bytes(b"changed")
    forced = alice(f"show_image {image} --save {target} --force")
    assert forced.code == 0 and target.read_bytes() == original.read_bytes()

    into = tmp_path / "into"
    into.mkdir()
    assert alice(f"show_image {image} --save {into}").code == 0
    assert (into / "keep me.jpg").read_bytes() == original.read_bytes()


# --- hostile and odd input -----------------------------------------------------------------------


def test_bad_files_each_get_a_reason_and_odd_names_are_harmless(
    alice: Shell, tmp_path: Path
) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    good = _jpeg(folder / os.fsdecode(b"esc-\x1b[31m-red\n-\xff.jpg"), 950)
    _jpeg(folder / "../odd/dots..jpg", 951)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "vector.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    (folder / "scan.tif").write_bytes(buffer.getvalue())
    whole = _jpeg(tmp_path / "whole.jpg", 952, (200, 200)).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])

    done = alice(f"add_image {folder} --tags odd-e2e --verbose")
    assert done.code != 0, done
    assert "\x1b" not in done.out + done.err
    assert re.search(r"6 files: 2 new, 0 already present, 4 rejected", done.out), done
    reasons = {
        name: line
        for line in done.out.splitlines()
        for name in ("empty", "vector", "scan")
        if name in line
    }
    assert "empty" in reasons["empty"] and "SVG" in reasons["vector"] and "TIFF" in reasons["scan"]
    truncated = [line for line in done.out.splitlines() if "truncated.jpg" in line]
    assert truncated and truncated[0].startswith("rejected"), done.out

    listed = alice("browse_by_tags odd-e2e --json", "browse_by_tags odd-e2e")
    assert "\x1b" not in listed.out
    titles = sorted(str(r["title"]) for r in listed.json_lines())
    assert titles[0] == "dots." and titles[1].startswith("esc-")
    assert good.exists()


def test_paths_that_name_nothing_are_reported(alice: Shell, tmp_path: Path) -> None:
    done = alice(f"add_image {tmp_path / 'missing.jpg'} {tmp_path / 'none-*.png'}")
    assert done.code != 0
    assert "no such file or directory" in done.err and "matches no file" in done.err
    assert "No files to upload." in done.err


def test_listing_commands_need_a_login(server: ServerProcess, tmp_path: Path) -> None:
    done = run_client(server, "browse_by_tags", "add_image x.jpg", config_dir=tmp_path)
    assert done.returncode != 0
    assert "needs a logged-in user" in done.stderr


def test_more_without_a_listing(alice: Shell) -> None:
    done = alice("more")
    assert done.code != 0 and "no listing to continue" in done.err


# --- at a terminal -------------------------------------------------------------------------------


def test_terminal_session_draws_pictures_and_completes(
    server: ServerProcess, tmp_path: Path
) -> None:
    pexpect = pytest.importorskip("pexpect")
    folder = tmp_path / "tty"
    _jpeg(folder / "tty-one.jpg", 990, (64, 64))
    config = tmp_path / "tty-client"
    env = {
        **os.environ,
        "VITRINE_PASSWORD": PASSWORD,
        "VITRINE_GRAPHICS": "blocks",
        "TERM": "xterm-256color",
        "COLUMNS": "160",
        "LINES": "50",
    }
    child = pexpect.spawn(
        sys.executable,
        [
            str(ROOT / "client.py"),
            "--server",
            server.address,
            "--config-dir",
            str(config),
            "--fingerprint",
            server.fingerprint,
        ],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
    )
    try:
        child.expect("vitrine ")
        child.sendline("login alice")
        child.expect("Logged in as alice")
        child.sendline(f"add_image {folder} --tags ttyonly-e2e")
        child.expect("1 new")
        child.sendline("browse_by_tags ttyonly-e2e")
        child.expect("End of images tagged ttyonly-e2e")
        assert "▀" in child.before or "▄" in child.before
        child.send("browse_by_tags ttyo\t")
        child.expect("ttyonly-e2e")
        child.sendline("")
        child.expect("End of images tagged ttyonly-e2e")
        child.send("search_by_color mage\t")  # colour names complete; hues and hex still parse
        child.expect("magenta")
        child.sendline(" --tags ttyonly-e2e")
        child.expect(r"(Nothing found for|End of) images of magenta \(tagged ttyonly-e2e\)")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_ctrl_c_during_an_upload_accounts_for_every_file(
    server: ServerProcess, alice: Shell, tmp_path: Path
) -> None:
    """Ctrl-C used to print "Interrupted." alone, while the file on the wire was stored
    anyway: every file must be reported, and what is stored must be what was reported."""
    pexpect = pytest.importorskip("pexpect")
    folder = tmp_path / "big"
    folder.mkdir()
    noise = np.random.default_rng(5).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    for index in range(60):
        noise[0, 0] = (index, 0, 0)  # each file its own content, so each is stored
        Image.fromarray(noise).save(folder / f"big-{index:02d}.png", compress_level=0)
    child = pexpect.spawn(
        sys.executable,
        [str(ROOT / "client.py"), "--server", server.address, "--config-dir",
         str(tmp_path / "ctrl-c"), "--fingerprint", server.fingerprint],
        cwd=str(ROOT),
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD, "TERM": "xterm-256color"},
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
    )  # fmt: skip
    seen = io.StringIO()
    child.logfile_read = seen
    try:
        child.expect("vitrine ")
        child.sendline("login alice")
        child.expect("Logged in as alice")
        child.sendline(f"add_image {folder} --tags ctrlc-e2e --window 1 --json")
        child.expect('"outcome":"new"')  # the run is under way
        child.sendintr()
        child.expect(r"Interrupted\. 60 files: (\d+) new, 0 already present, 0 rejected, "
                     r"(\d+) unanswered, (\d+) not sent")  # fmt: skip
        new, unanswered, not_sent = (int(group) for group in child.match.groups())
        child.expect("vitrine alice@")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    output = seen.getvalue()
    assert not_sent > 0 and new + unanswered + not_sent == 60, output
    reported: dict[str, str] = {}  # file name -> outcome, one JSON line per file
    for line in re.findall(r'\{"path".*?\}(?=\r?\n)', output):
        row = json.loads(line)
        assert Path(str(row["path"])).stem not in reported, output
        reported[Path(str(row["path"])).stem] = str(row["outcome"])
    assert len(reported) == 60, output
    listed = alice("browse_by_tags ctrlc-e2e --json", "more --json", "more --json").json_lines()
    stored = {str(row["title"]) for row in listed}
    said_new = {name for name, outcome in reported.items() if outcome == "new"}
    maybe = {name for name, outcome in reported.items() if outcome == "unanswered"}
    assert said_new <= stored <= said_new | maybe, (stored, reported)
    assert len(said_new) == new and len(maybe) == unanswered


# --- writing files: --save and --sheet -----------------------------------------------------------


def test_save_to_a_missing_directory_is_refused_and_the_file_written_is_named(
    alice: Shell, tmp_path: Path
) -> None:
    original = _jpeg(tmp_path / "orig" / "named.jpg", 901, (60, 40))
    image = _upload_one(alice, original, "--tags save-e2e")
    missing = tmp_path / "nodir"
    refused = alice(f"show_image {image} --save {missing}/")
    assert refused.code != 0, refused
    assert f"{missing}/ does not exist." in refused.err, refused
    assert not missing.exists()  # not even as a file called "nodir"

    into = tmp_path / "into"
    into.mkdir()
    saved = alice(f"show_image {image} --save {into}/ --no-images")
    assert saved.code == 0, saved
    assert f"Saved the original of #{image} to {into / 'named.jpg'}." in saved.out, saved
    assert (into / "named.jpg").read_bytes() == original.read_bytes()
    again = alice(f"show_image {image} --save {into}")
    assert again.code != 0, again
    assert f"{into / 'named.jpg'} exists already; add --force to overwrite it." in again.err
    assert "named.jpg" in alice(f"show_image {image} --save {into} --force").out


def test_a_sheet_never_overwrites_a_file_without_force(alice: Shell, tmp_path: Path) -> None:
    _upload_one(alice, _jpeg(tmp_path / "sheet-one.jpg", 902), "--tags sheet-force-e2e")
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"precious")
    refused = alice(f"browse_by_tags sheet-force-e2e --sheet {sheet}")
    assert refused.code != 0, refused
    assert f"{sheet} exists already; add --force to overwrite it." in refused.err, refused
    assert "sheet-one" not in refused.out  # refused before anything was listed
    assert sheet.read_bytes() == b"precious"
    assert alice(f"browse_by_tags sheet-force-e2e --sheet {tmp_path}/none/").code != 0
    forced = alice(f"browse_by_tags sheet-force-e2e --sheet {sheet} --force")
    assert forced.code == 0, forced
    assert sheet.read_bytes().startswith(b"\x89PNG")


# --- scripts -------------------------------------------------------------------------------------


def _piped(server: ServerProcess, config_dir: Path, text: str) -> subprocess.CompletedProcess[str]:
    """client.py reading its commands from a pipe, as `printf ... | client.py` does."""
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "client.py"),
            "--server",
            server.address,
            "--config-dir",
            str(config_dir),
            "--fingerprint",
            server.fingerprint,
        ],
        cwd=ROOT,
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD, "COLUMNS": "160"},
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unclosed_quote_fails_the_script(server: ServerProcess, tmp_path: Path) -> None:
    done = run_client(
        server, "login alice", 'search "oops', "quit", config_dir=tmp_path, password=PASSWORD
    )
    assert done.returncode != 0, done
    assert "No closing quotation" in done.stderr
    piped = _piped(server, tmp_path, 'login alice\nsearch "oops\n')
    assert piped.returncode != 0, piped
    assert "No closing quotation" in piped.stderr


def test_piped_input_leaves_stdout_to_the_commands(server: ServerProcess, tmp_path: Path) -> None:
    done = _piped(server, tmp_path, "login alice\ntags --json\n")
    assert done.returncode == 0, done
    assert "Connected to Vitrine" in done.stderr and "Connected" not in done.stdout
    assert "Logged in as alice." in done.stderr
    lines = done.stdout.splitlines()
    assert lines, done
    for line in lines:  # no banner, no confirmation, no trailing blank line: all of it is for jq
        assert isinstance(json.loads(line), dict), line


def test_more_after_another_user_logs_in_has_nothing_to_continue(
    alice: Shell, tmp_path: Path
) -> None:
    for seed in (903, 904):
        _upload_one(alice, _jpeg(tmp_path / f"switch-{seed}.jpg", seed), "--tags switch-e2e")
    done = alice("browse_by_tags switch-e2e --batch 1 --json", "logout", "login bob", "more")
    assert done.code != 0, done
    assert "There is no listing to continue yet" in done.err, done
    assert "expired" not in done.err


def test_search_words_starting_with_a_dash(alice: Shell, tmp_path: Path) -> None:
    image = _upload_one(alice, _jpeg(tmp_path / "dash.jpg", 905), "--title 'zqxstraw -hat'")
    done = alice("search zqxstraw -hat")
    assert done.code != 0, done
    assert "ignored explicit argument" not in done.err, done
    assert "search has no option -hat; to search for that word, put" in done.err, done
    assert "search -- zqxstraw -hat" in done.err.replace("\n", " "), done
    found = alice("search --json -- zqxstraw -hat")
    assert found.code == 0, found
    assert image in [row["id"] for row in found.json_lines()]


def test_a_batch_of_one_says_which_one(alice: Shell, tmp_path: Path) -> None:
    for seed in (906, 907, 908):
        _upload_one(alice, _jpeg(tmp_path / f"one-{seed}.jpg", seed), "--tags one-e2e")
    done = alice("browse_by_tags one-e2e --batch 1 --json", "more --json", "more --batch 2 --json")
    assert done.code == 0, done
    assert "Showing result 1 of images tagged one-e2e" in done.err, done
    assert "Showing result 2 of images tagged one-e2e" in done.err, done
    assert "-1 of" not in done.err and "-2 of" not in done.err


def test_json_upload_summary_has_no_hint_about_verbose(alice: Shell, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "many", 21, offset=1100)
    done = alice(f"add_image {folder} --json --tags many-e2e")
    assert done.code == 0, done
    assert len(done.json_lines()) == 21  # JSON lists every file already...
    assert "21 new" in done.err and "--verbose" not in done.err  # ...so no hint to ask for it
