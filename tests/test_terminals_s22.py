"""client.py at odd terminals and without some of its streams, against a real server.

A daemon-style launch closes stdin, stdout or stderr (`<&-`): each must then read as /dev/null,
never a traceback. A TERM=dumb terminal (Emacs' shell, IDE consoles) shows escape sequences as
text and is any width: listings must be laid out for its width and carry no escapes, so the hex
codes name the colours there, as in any output that is not coloured. And an argument error
written to a file is one line, for `grep Error:`.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pexpect
import pytest
from rich.console import Console

from protocol.catalog import Colour, ImageSummary
from shell.listing import graphics_mode, listing_table
from shell.pictures import OVERRIDE_ENV
from shell.text import dumb_terminal
from tests.servers import (
    ROOT,
    ServerProcess,
    client_argv,
    create_users,
    json_lines,
    run_client,
)
from tests.servers import LoggedInShell as Shell
from tests.test_colour_search_e2e import card, upload

PASSWORD = "correct horse battery"
TAG = "s22-term"
LONG_TITLE = "A rather long green straw hat for sunny summer days at the beach"
HEX = re.compile(r"██ #[0-9a-f]{6} \d+%")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("s22-terminals")).start()
    create_users(process, tmp_path_factory.mktemp("s22-accounts"), ("alice", "seller2"), PASSWORD)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def shop(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Two hats of one seller: a long title and many tags, so a table wants more than 80
    columns, and a red one for search_by_color."""
    folder = tmp_path_factory.mktemp("s22-cards")
    seller = Shell(server, "seller2", tmp_path_factory.mktemp("s22-seller"))
    long_tags = f"--tags {TAG},hat,green,straw,summer,beach"
    return {
        "green": upload(
            seller,
            card(120, folder / "g.png"),
            long_tags,
            f"--title '{LONG_TITLE}'",
            "--price 10",
            "--quantity 3",
        ),
        "red": upload(
            seller,
            card(350, folder / "r.png", lightness=0.42),
            f"--tags {TAG},hat,red",
            "--title 'Red hat'",
            "--price 10",
            "--quantity 3",
        ),
    }


def closed(server: ServerProcess, home: Path, stream: str, *commands: str) -> tuple[int, str, str]:
    """client.py run with one of its standard streams closed (`<&-`, `>&-`, `2>&-`), the
    others captured: (status, stdout, stderr)."""
    argv = client_argv(server, home, *commands)
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD}
    done = subprocess.run(
        ["/bin/sh", "-c", f'exec "$@" {stream}', "sh", *argv],  # sh closes it, then runs
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout or "", done.stderr or ""


# --- 1. a closed stdin, stdout or stderr ---------------------------------------------------------


@pytest.mark.parametrize("stream", ["<&-", ">&-", "2>&-"])
def test_a_closed_standard_stream_reads_as_dev_null(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path, stream: str
) -> None:
    """QA: `<&-` ended in `AttributeError: 'NoneType' object has no attribute 'isatty'` at
    start, `>&-` failed the login with it, `2>&-` did nothing, all with status 1."""
    status, out, err = closed(server, tmp_path, stream, "login alice", "tags --json")
    assert "Traceback" not in out + err and "AttributeError" not in out + err, out + err
    assert status == 0, out + err
    if stream != ">&-":
        assert {"tag": TAG, "count": 2} in json_lines(out), out
        # and nothing else: a note meant for a closed stderr does not land among the data
        assert all(line.startswith("{") for line in out.splitlines()), out
    if stream != "2>&-":
        assert "Logged in as alice" in err, err
    # /dev/null took the closed descriptor: no file opened later (the history, known_servers)
    # got the output meant for it
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TAG not in path.read_text(errors="replace"), path


def test_no_commands_and_stdin_closed_is_an_empty_script(
    server: ServerProcess, tmp_path: Path
) -> None:
    status, out, err = closed(server, tmp_path, "<&-")
    assert "Traceback" not in out + err, out + err
    assert status == 0, out + err
    assert "Connected to Vitrine" in err, err


@pytest.mark.parametrize(
    "stream", ["2<", "1<", "0>>"], ids=["stderr-read-only", "stdout-read-only", "stdin-write-only"]
)
def test_a_standard_stream_open_the_wrong_way_reads_as_dev_null(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path, stream: str
) -> None:
    """Review: a bash wrapper run with `2>&-` reads its script through fd 2, so the client's
    stderr was open, read-only: `write(2, ...) = -1 EBADF`, then a fatal error, status 1 and
    nothing on stdout. Only a closed descriptor was replaced."""
    script = tmp_path / "c.sh"
    script.write_text("#!/bin/sh\n")
    before = script.read_text()
    status, out, err = closed(
        server, tmp_path / "home", f"{stream}{script}", "login alice", "tags --json", "whoami"
    )
    assert status == 0, out + err
    assert "Traceback" not in out + err and "Fatal" not in out + err, out + err
    if stream != "1<":
        assert {"tag": TAG, "count": 2} in json_lines(out), out
    if stream != "2<":
        assert "Logged in as alice" in err, err
    assert script.read_text() == before


def test_a_closed_standard_stream_given_back_is_inheritable(tmp_path: Path) -> None:
    """/dev/null opened into a closed fd 0 is close-on-exec (os.open's default), unlike the
    dup2'd one of fd 1 and 2: a program the shell starts would find its stdin closed again."""
    check = (
        "import os\n"
        "from shell.cli import reopen_closed_std_streams\n"
        "reopen_closed_std_streams()\n"
        "print([os.get_inheritable(fd) for fd in (0, 1, 2)],\n"
        "      os.path.samefile('/proc/self/fd/0', os.devnull))\n"
    )
    done = subprocess.run(
        ["/bin/sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-c", check],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[True,", "True,", "True]", "True"], done.stdout


# --- 2 and 3. TERM=dumb at a terminal wider than 80 columns ---------------------------------------


def spawn_dumb(
    server: ServerProcess, home: Path, *commands: str, columns: int, env: dict[str, str]
) -> pexpect.spawn:
    """client.py at a pty `columns` wide whose TERM is dumb."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    environ.pop("VITRINE_GRAPHICS", None)
    environ.update({"TERM": "dumb", **env})
    argv = client_argv(server, home, *commands)
    return pexpect.spawn(
        argv[0], argv[1:], cwd=str(ROOT), env=environ, encoding="utf-8", timeout=60,
        dimensions=(40, columns),
    )  # fmt: skip


def until_eof(child: pexpect.spawn) -> str:
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return child.before


@pytest.mark.parametrize(
    ("columns", "env"), [(120, {}), (80, {"COLUMNS": "200"})], ids=["pty-120", "COLUMNS-200"]
)
def test_a_dumb_terminal_gets_the_whole_table_without_escapes(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path, columns: int, env: dict[str, str]
) -> None:
    """QA: the table was squeezed into rich's 80 columns for a dumb terminal (id and qty
    columns empty, `pr` for price, 10 for 10.00) and came with bold, colour and cursor escapes.
    """
    child = spawn_dumb(
        server, tmp_path, "login alice", f"browse_by_tags {TAG} --batch 2", "quit",
        columns=columns, env={"VITRINE_PASSWORD": PASSWORD, **env},
    )  # fmt: skip
    said = until_eof(child)
    assert "\x1b" not in said, repr(said)
    lines = said.splitlines()
    (header,) = [line for line in lines if " id " in line and "price" in line]
    assert "qty" in header and "colours" in header, said
    rows = [line for line in lines if "10.00" in line]
    assert len(rows) == 2, said
    for row, image_id in zip(rows, (shop["red"], shop["green"]), strict=False):
        assert re.search(rf"[│┃ ]\s*{image_id} [│┃ ]", row), said  # the id, in its column
        assert re.search(r"[│ ]\s+3 [│ ]", row), row  # the quantity, whole
        assert HEX.search(row), row  # no colour there: the hex names it
    assert max(len(line) for line in lines) > 80, said  # laid out for the wider terminal


@pytest.mark.parametrize(
    "term", ["dumb", "DUMB", "unknown", " dumb", "dumb ", "dumb\n", "xterm", "", "dumber"]
)
def test_dumb_terminal_reads_term_as_rich_and_prompt_toolkit_do(term: str) -> None:
    """Review: TERM was stripped here and not by them, so `TERM=' dumb'` turned cmd2's styles
    off while rich still sized for 80 columns and prompt_toolkit drew with escapes."""
    from prompt_toolkit.utils import is_dumb_terminal

    rich = Console(force_terminal=True, _environ={"TERM": term}).is_dumb_terminal
    assert rich == is_dumb_terminal(term)
    assert dumb_terminal({"TERM": term}) == rich


def test_a_dumb_terminal_session_and_password_prompt_carry_no_escapes(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path
) -> None:
    """Every session began with ESC[?12l ESC[?25h, and the password prompt was drawn with
    cursor movements, all shown as text by a dumb terminal."""
    child = spawn_dumb(server, tmp_path, columns=120, env={})
    try:
        child.expect("> ")
        said = child.before + child.after
        child.sendline("login alice")
        child.expect("Password:")
        said += child.before + child.after
        child.sendline(PASSWORD)
        child.expect("Logged in as alice")
        child.expect("> ")
        said += child.before + child.after
        child.sendline("quit")
    finally:
        said += until_eof(child)
    assert "\x1b" not in said, repr(said)
    assert PASSWORD not in said, repr(said)  # still not echoed


# --- 4. the hex codes whenever they fit, always when the swatch has no colour --------------------


def test_a_narrow_listing_that_is_not_coloured_names_its_colours(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path
) -> None:
    """QA: `COLUMNS=46 ... search_by_color red --batch 2 --no-images` printed `colours  ██ 62% ◂`
    with 20 cells to spare, and, not coloured, nothing named the colour at all."""
    done = run_client(
        server, "login alice", f"search_by_color red --tags {TAG} --batch 2 --no-images",
        config_dir=tmp_path, password=PASSWORD, extra_env={"COLUMNS": "46"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert HEX.search(done.stdout), done.stdout


@pytest.mark.parametrize("columns", [36, 40, 50, 57, 70])
def test_update_image_names_its_colours_when_not_coloured(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path, columns: int
) -> None:
    """update_image shows the changed image in the listing's table, by the listing's rules: a
    narrow table that is not coloured keeps the hex (it printed through cmd2's console, laid
    out as if the swatch were coloured)."""
    done = run_client(
        server, "login seller2", f"update_image {shop['red']} --price 10",
        config_dir=tmp_path, password=PASSWORD, extra_env={"COLUMNS": str(columns)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert HEX.search(done.stdout), done.stdout


def test_a_coloured_listing_keeps_the_hex_while_it_fits(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path
) -> None:
    """At 57 columns, with no picture, the hex codes fit beside a title of 12 cells; they went
    first, to keep the 16 cells a title is given only beside a big picture."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    environ.update({"TERM": "xterm-256color", "VITRINE_PASSWORD": PASSWORD})
    argv = client_argv(
        server, tmp_path, "login alice", f"search_by_color red --tags {TAG} --no-images", "quit"
    )
    child = pexpect.spawn(
        argv[0], argv[1:], cwd=str(ROOT), env=environ, encoding="utf-8", timeout=60,
        dimensions=(40, 57),
    )  # fmt: skip
    said = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", until_eof(child))
    row = next(line for line in said.splitlines() if "10.00" in line)
    assert HEX.search(row), said
    assert "\x1b[38;2;" in child.before, repr(child.before)  # coloured: the swatch shows it too


def _summary(image_id: int, title: str) -> ImageSummary:
    red = Colour(r=190, g=45, b=62, hue=353.0, saturation=0.6, lightness=0.46, share=0.62)
    return ImageSummary(
        id=image_id, title=title, description="", filename="a.jpg", tags=["hat", "red"],
        price_cents=1000, quantity=3, owner="seller2", visibility="public", created_at=0.0,
        width=8, height=8, palette=[red], score=0.5, match=red,
    )  # fmt: skip


@pytest.mark.parametrize("width", range(36, 130, 3))
def test_uncoloured_tables_and_records_always_have_the_hex(width: int) -> None:
    items = [_summary(1, "Red hat"), _summary(22, LONG_TITLE)]
    console = Console(width=width, record=True, color_system=None)
    console.print(listing_table(items, "none", width, coloured=False), soft_wrap=False)
    text = console.export_text()
    assert len(HEX.findall(text)) == 2, text


# --- 5. argument errors written to a file --------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ("update_image {red} --quantity 2147483647",
         "Error: argument --quantity: 2147483647 is more than the largest quantity, 1000000000."),
        ("update_image {red} --price 12.345", "Error: argument --price: "),
        (f"browse_by_tags {TAG} --batch 0",
         "Error: argument --batch: a batch holds 1 to 500 images, not 0"),
    ],
)  # fmt: skip
def test_an_argument_error_not_at_a_terminal_is_one_line(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path, command: str, error: str
) -> None:
    """QA: written at 80 columns to a file, `Error: ... largest quantity, ` then `1000000000.`
    on a line of its own, and an empty line after every such error."""
    done = run_client(
        server, "login seller2", command.format(**shop), config_dir=tmp_path, password=PASSWORD
    )
    assert done.returncode == 1, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert line.startswith(error), done.stderr
    assert line.endswith((".", "0")), done.stderr  # the whole sentence, not its first part
    assert "" not in done.stderr.splitlines(), repr(done.stderr)
    assert not any(text.endswith(" ") for text in done.stderr.splitlines()), repr(done.stderr)


def test_an_argument_error_at_a_terminal_is_folded_to_its_width(
    server: ServerProcess, shop: dict[str, int], tmp_path: Path
) -> None:
    """Unfolded only when not at a terminal: a person at a 60-column terminal still gets the
    error folded at 60, with no line wider, and the whole of it."""
    child = spawn_dumb(
        server, tmp_path, "login seller2", f"update_image {shop['red']} --quantity 2147483647",
        columns=60, env={"VITRINE_PASSWORD": PASSWORD},
    )  # fmt: skip
    try:
        child.expect(r"seller2@[\d.:]+> ")  # the script stopped at the error: at the prompt
        said = child.before
        child.sendline("quit")
    finally:
        until_eof(child)
    lines = said.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("Error:"))
    error = " ".join(line.strip() for line in lines[start : start + 3])
    assert "2147483647 is more than the largest quantity, 1000000000." in error, said
    assert not lines[start].endswith("1000000000."), said  # folded: on a line of its own
    assert max(len(line) for line in lines) <= 60, said


def test_a_closed_stdout_means_no_pictures_not_a_failed_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review (session 22): `graphics_mode` asked `stdout.isatty()` itself, which raises
    ValueError on a closed stream; it now asks `shell.text.is_terminal`, as the rest does."""
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    closed = io.StringIO()
    closed.close()
    assert graphics_mode(SimpleNamespace(stdout=closed)) == "none"  # type: ignore[arg-type]
