"""add_image at a real terminal: Ctrl-C while results are printed, and the progress bar.

The real client.py runs at a pseudo-terminal of a set size (pexpect) against a real server.
A second Ctrl-C that landed while add_image was printing (its lines, the "waiting" notice, the
summary) used to end the command with a bare "Interrupted.", the summary and the fate of most
files unsaid. The bar drew "2400/2400 files" after Ctrl-C had left most unsent, sat dead above
`--json` lines on stdout, and wrapped onto a second line at 50 columns.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.servers import ROOT, ServerProcess, client_argv, create_users

pexpect = pytest.importorskip("pexpect")

PASSWORD = "correct horse battery"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUMMARY = re.compile(
    r"(Interrupted\. )?(\d+) files: (\d+) new, (\d+) already present, (\d+) rejected"
    r"(?:, (\d+) unanswered, (\d+) not sent)?"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("upload-interrupts")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("root", "alice"), PASSWORD)
    yield process
    process.stop()


def noise_folder(folder: Path, count: int, side: int, seed: int, fmt: str = "JPEG") -> Path:
    """`count` distinct noise images (noise, so that no two look alike to the server)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        suffix = "jpg" if fmt == "JPEG" else "png"
        Image.fromarray(pixels).save(folder / f"b{index:03d}.{suffix}", format=fmt)
    return folder


def terminal(server: ServerProcess, config: Path, columns: int = 160) -> Any:
    argv = client_argv(server, config)
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        cwd=str(ROOT),
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD, "TERM": "xterm-256color"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, columns),
    )
    child.logfile_read = io.StringIO()
    child.expect("vitrine ")
    child.sendline("login alice")
    child.expect("Logged in as alice")
    child.expect("vitrine alice@")
    return child


def run_output(child: Any, command: str) -> str:
    """What the terminal received from typing `command` to its summary's line."""
    start = len(child.logfile_read.getvalue())
    child.sendline(command)
    child.expect(r"\d+ files: [^\r\n]*\r\n")
    return str(child.logfile_read.getvalue()[start:])


def frames(output: str) -> list[str]:
    """The bar's frames as drawn: rich redraws it after a carriage return and erase-line."""
    return [ANSI.sub("", part) for part in re.split(r"\r\x1b\[2K|\r\n", output)]


def test_ctrl_c_while_results_are_printed_still_ends_with_the_summary(
    server: ServerProcess, tmp_path: Path
) -> None:
    """QA's reproduction: the terminal is not read for 1.5 s, so the shell's writes block, then
    Ctrl-C three times. Each run must end with the summary accounting for all 200 files."""
    folder = noise_folder(tmp_path / "big", 200, 600, seed=18)
    for attempt in range(3):  # the first run stores files, the next ones find them present
        child = terminal(server, tmp_path / f"config-{attempt}")
        try:
            start = len(child.logfile_read.getvalue())
            child.sendline(f"add_image {folder} --json --window 2")
            time.sleep(1.5)
            for pause in (0.02, 0.3, 0):
                child.sendintr()
                time.sleep(pause)
            child.expect([SUMMARY.pattern, pexpect.TIMEOUT], timeout=30)
            child.sendline("")
            child.expect("vitrine alice@")
            output = ANSI.sub("", child.logfile_read.getvalue()[start:])
            child.sendline("quit")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        found = SUMMARY.search(output)
        assert found is not None, output[-3000:]
        counts = [int(group or 0) for group in found.groups()[1:]]
        assert counts[0] == 200 and sum(counts[1:]) == 200, found.group(0)
        assert not re.search(r"(^|\n|\^C)Interrupted\.\r?\n", output), output[-3000:]


def test_json_at_a_terminal_leaves_stdout_to_whole_json_lines(
    server: ServerProcess, tmp_path: Path
) -> None:
    """No bar drawn among the lines: it used to stay above them for good, and at 50 columns
    the first object was glued to its second line."""
    folder = noise_folder(tmp_path / "json", 40, 32, seed=50)
    child = terminal(server, tmp_path / "config", columns=50)
    try:
        output = run_output(child, f"add_image {folder} --json --window 1")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    text = ANSI.sub("", output)
    assert "━" not in text and "uploading" not in text, text
    body = text[text.index('{"path"') :].split("\r\n")  # after the command as typed
    lines = [line for line in body if line.strip()]
    assert lines[-1].startswith("40 files: 40 new"), text
    assert len(lines) == 41 and all(json.loads(line)["path"] for line in lines[:-1]), text


def test_json_into_a_file_draws_the_bar_on_stderr_and_the_file_holds_json(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`client.py "login alice" "add_image big/ --json" > out.jsonl` at a terminal: the file
    gets the JSON lines and nothing else, the terminal (stderr) the bar."""
    folder = noise_folder(tmp_path / "to-file", 30, 32, seed=60)
    out = tmp_path / "out.jsonl"
    command = shlex.join(
        client_argv(
            server, tmp_path / "config", "login alice", f"add_image {folder} --json --window 1"
        )
    )
    child = pexpect.spawn(
        "bash",
        ["-c", f"{command} > {shlex.quote(str(out))}"],
        cwd=str(ROOT),
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD, "TERM": "xterm-256color"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 80),
    )
    seen = io.StringIO()
    child.logfile_read = seen
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and {row["outcome"] for row in rows} == {"new"}, out.read_text()
    terminal_text = ANSI.sub("", seen.getvalue())
    assert "/30 files" in terminal_text and "30 files: 30 new" in terminal_text, terminal_text


@pytest.mark.parametrize("columns", [50, 30])
def test_the_bar_stays_on_one_line_when_the_terminal_is_narrow(
    server: ServerProcess, tmp_path: Path, columns: int
) -> None:
    folder = noise_folder(tmp_path / "narrow", 30, 200, seed=70 + columns)
    child = terminal(server, tmp_path / "config", columns=columns)
    try:
        output = run_output(child, f"add_image {folder} --window 1")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    drawn = [frame for frame in frames(output) if "/30 files" in frame]
    assert drawn, output
    for frame in drawn:
        assert len(frame) <= columns and "…" not in frame, (frame, output)
    # the file count and the bytes are what a narrow line keeps
    assert any(re.search(r"\d+/30 files \d", frame) for frame in drawn), drawn


def test_after_ctrl_c_the_bar_never_counts_unsent_files_as_done(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The last frame read "60/60 files" although most files were never sent."""
    folder = noise_folder(tmp_path / "slow", 60, 1000, seed=90, fmt="PNG")
    child = terminal(server, tmp_path / "config")
    try:
        start = len(child.logfile_read.getvalue())
        child.sendline(f"add_image {folder} --window 1")
        child.expect(r"[1-9]\d*/60 files")  # under way
        child.sendintr()
        child.expect(SUMMARY.pattern)
        output = child.logfile_read.getvalue()[start:]
        child.expect("vitrine alice@")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    found = SUMMARY.search(ANSI.sub("", output))
    assert found is not None and found.group(1), output
    not_sent = int(found.group(7) or 0)
    assert not_sent > 0, found.group(0)
    done = [int(n) for n in re.findall(r"(\d+)/60 files", ANSI.sub("", output))]
    assert max(done) <= 60 - not_sent, (done, found.group(0))
