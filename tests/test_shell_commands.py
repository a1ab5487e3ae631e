"""The shell's commands against a stand-in session that records what would go to the server.

End-to-end tests show what a person sees; these check what is *sent*, which the output cannot
show: a refused `--save` must cost no download of the original. Help texts are checked from
the parsers themselves.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cmd2
import pytest

from protocol.base import Request
from protocol.catalog import GetImage, ImageDetails, ImageSummary
from shell.app import VitrineShell, parser
from shell.browse_commands import BrowseCommands
from shell.image_commands import ImageCommands
from tests.stand_in_session import RecordingSession

ORIGINAL = b"\xff\xd8original bytes"


class ImageSession(RecordingSession):
    """GetImage answered from memory."""

    def call(self, request: Request, expect: Any = None) -> Any:
        self.sent.append(request)
        assert isinstance(request, GetImage)
        image = ImageSummary(
            id=request.image_id, title="t", description="", filename="photo.jpg", tags=[],
            price_cents=0, quantity=0, owner="alice", visibility="public", created_at=0.0,
            width=1, height=1,
        )  # fmt: skip
        original = ORIGINAL if request.with_original else None
        return ImageDetails(id=request.id, image=image, original=original, format="JPEG")


def _shell(tmp_path: Path) -> tuple[VitrineShell, ImageSession, io.StringIO]:
    session = ImageSession()
    out = io.StringIO()
    shell = VitrineShell(
        session,  # type: ignore[arg-type]
        data_dir=tmp_path / "data",
        config_dir=tmp_path / "config",
        command_sets=[ImageCommands(), BrowseCommands()],
        stdin=io.StringIO(),
        stdout=out,
    )
    return shell, session, out


def test_save_into_a_directory_refuses_an_existing_file_before_downloading(
    tmp_path: Path,
) -> None:
    shell, session, out = _shell(tmp_path)
    folder = tmp_path / "into"
    folder.mkdir()
    shell.onecmd_plus_hooks(f"show_image 9 --save {folder} --no-images")
    assert (folder / "photo.jpg").read_bytes() == ORIGINAL
    assert f"Saved the original of #9 to {folder / 'photo.jpg'}." in out.getvalue()
    assert shell.exit_code == 0

    session.sent.clear()
    shell.onecmd_plus_hooks(f"show_image 9 --save {folder} --no-images")
    assert shell.exit_code == 1
    assert [request.with_original for request in session.sent] == [False]  # type: ignore[attr-defined]


def test_save_to_a_file_that_exists_asks_the_server_nothing(tmp_path: Path) -> None:
    shell, session, _ = _shell(tmp_path)
    target = tmp_path / "kept.jpg"
    target.write_bytes(b"kept")
    shell.onecmd_plus_hooks(f"show_image 9 --save {target} --no-images")
    assert shell.exit_code == 1 and session.sent == [] and target.read_bytes() == b"kept"


def test_help_texts_say_what_the_shell_does() -> None:
    more = " ".join(BrowseCommands.more_parser.format_help().split())
    assert "the listing's own --batch" in more and "default 10, then 10" not in more
    search = " ".join(BrowseCommands.search_parser.format_help().split())
    assert "file names" in search
    show = " ".join(ImageCommands.show_parser.format_help().split())
    assert "--no-images leave the picture out" in show


class _Broken(cmd2.CommandSet):
    """A command with a bug in it: what every command could turn out to have."""

    def do_broken(self, _: cmd2.Statement) -> None:
        raise OverflowError("int too large to convert")


def test_a_command_that_fails_unexpectedly_still_fails_the_script(tmp_path: Path) -> None:
    session = ImageSession()
    shell = VitrineShell(
        session,  # type: ignore[arg-type]
        data_dir=tmp_path / "data",
        config_dir=tmp_path / "config",
        command_sets=[_Broken()],
        stdin=io.StringIO(),
        stdout=io.StringIO(),
    )
    assert shell.exit_code == 0
    shell.onecmd_plus_hooks("broken")
    assert shell.exit_code == 1  # cmd2 reported it; a script must still see it in the status


@pytest.mark.parametrize("word", ["-inf", "-Infinity", "-nan", "-1e3", "-.5", "-12", "-1.5"])
def test_a_word_that_reads_as_a_negative_number_is_a_value(word: str) -> None:
    # argparse alone takes -inf, -1e3 or -.5 for an unknown option, and the command then says a
    # value is missing instead of why this one is refused
    made = parser("a command")
    made.add_argument("value")
    made.add_argument("--limit")
    assert made.parse_args([word]).value == word
    assert made.parse_args(["--limit", word, "x"]).limit == word


def test_an_unknown_option_is_still_an_option() -> None:
    made = parser("a command")
    made.add_argument("value", nargs="?")
    with pytest.raises(SystemExit):
        made.parse_args(["-information"])


def test_help_groups_the_kept_built_ins_under_shell_and_names_unknown_topics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell, _, out = _shell(tmp_path)
    shell.onecmd_plus_hooks("help")
    listing = out.getvalue()
    assert "Cmd2" not in listing
    shell_section = listing[listing.index("Shell\n") :]
    for command in ("help", "history", "quit", "run_script", "set"):
        assert command in shell_section.split("\n\n")[0], listing
    shell.onecmd_plus_hooks("help nosuch")
    said = out.getvalue() + capsys.readouterr().err
    assert "nosuch is not a Vitrine command; type help to see the commands." in said


@pytest.mark.parametrize(
    ("line", "fails"),
    [
        ("help", False),
        ("help show_image", False),
        ("history", False),
        ("set", False),
        ("help nosuch", True),
        ("set nosuch 1", True),
        ("run_script {missing}", True),
        ("run_script {folder}", True),
        ("run_script {script}", False),
    ],
)
def test_built_ins_that_fail_fail_the_script(tmp_path: Path, line: str, fails: bool) -> None:
    """cmd2's built-ins only print their failures: a script used to exit 0 after them."""
    shell, _, _ = _shell(tmp_path)
    script = tmp_path / "script.txt"
    script.write_text("help\n")
    line = line.format(missing=tmp_path / "none.txt", folder=tmp_path, script=script)
    shell.onecmd_plus_hooks(line)
    assert shell.exit_code == (1 if fails else 0), line
