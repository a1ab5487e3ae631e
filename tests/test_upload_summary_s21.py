"""add_image's summary and per-file lines, show_image --save into a missing folder, and the
device-token file written by two shells at once.

QA: after Ctrl-C the summary's rate divided every file, the thousand never sent too, by the
time ("1106 not sent (... 720.4 files/s)" while ~55 files/s were answered; `| head -1` said
126530.8 files/s). Re-running an upload, as the shell advises after Ctrl-C, printed one
`present ... (already stored)` line per stored file (589 of them) although new files are
counted, not listed, above LIST_EACH_UP_TO. `--save missing/` said "is not a directory".
Review: DeviceTokenStore.put rewrote the file it read without a lock, so two shells logging in
at once could each drop the other's token. The real client.py runs against a real server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shell.app import CommandFailed
from shell.image_commands import LIST_EACH_UP_TO, ImageCommands
from shell.session import DEVICE_TOKENS_FILE, DeviceTokenStore
from tests.servers import ROOT, ServerProcess, client_argv, create_users, run_client

PASSWORD = "correct horse battery"
SUMMARY = re.compile(
    r"(\d+) files: (\d+) new, (\d+) already present, (\d+) rejected"
    r"(?:, (\d+) unanswered, (\d+) not sent)? \(([\d.]+) MB in ([\d.]+) s: ([\d.]+) files/s"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("upload-summary")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("root", "alice"), PASSWORD)
    yield process
    process.stop()


def noise_folder(folder: Path, count: int, seed: int) -> Path:
    """`count` small distinct images (noise: no two alike to the server)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{index:03d}.png", format="PNG")
    return folder


def alice(server: ServerProcess, config: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    done = run_client(server, "login alice", *commands, config_dir=config, password=PASSWORD)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


# --- 1: the rate counts the files the server answered --------------------------------------------


def test_an_interrupted_run_rates_only_the_files_the_server_answered(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) once 40 files are answered, with 600 to send: most are never sent."""
    files = 600
    folder = noise_folder(tmp_path / "big", files, seed=21)
    command = f"add_image {folder} --json --window 2"
    process = subprocess.Popen(
        client_argv(server, tmp_path / "config", "login alice", command),
        cwd=ROOT,
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        restore_signals=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    first = [process.stdout.readline() for _ in range(40)]
    assert all(first), process.communicate()
    process.send_signal(signal.SIGINT)
    # read through the same buffered files: communicate() would pass over what they hold
    rest, err = process.stdout.read(), process.stderr.read()
    assert process.wait(timeout=60) != 0, err
    lines = [json.loads(line) for line in (*first, *rest.splitlines())]
    answered = sum(1 for line in lines if line["outcome"] in ("new", "present", "rejected"))
    not_sent = sum(1 for line in lines if line["outcome"] == "not_sent")
    assert len(lines) == files and not_sent > files // 2, err  # QA's case: most never left
    found = SUMMARY.search(err)
    assert found is not None, err
    assert int(found.group(1)) == files and int(found.group(6)) == not_sent, found.group(0)
    seconds, rate = float(found.group(8)), float(found.group(9))
    assert seconds >= 0.1, found.group(0)  # 40 answers at least; printed to 0.1 s
    # The printed time is rounded: the real one lies within 0.05 s of it.
    assert answered / (seconds + 0.05) - 0.05 <= rate <= answered / (seconds - 0.05) + 0.05, (
        answered,
        found.group(0),
    )
    assert "files/s answered" in found.string, err  # not every file was: the line says which


def test_a_run_answered_in_full_keeps_its_plain_rate(server: ServerProcess, tmp_path: Path) -> None:
    folder = noise_folder(tmp_path / "few", 5, seed=2101)
    done = alice(server, tmp_path / "config", f"add_image {folder}")
    assert done.returncode == 0, done.stderr
    found = SUMMARY.search(done.stdout)
    assert found is not None, done.stdout
    assert "files/s answered" not in done.stdout, done.stdout


# --- 2: files already stored are counted, not listed, above LIST_EACH_UP_TO ----------------------


def test_a_rerun_counts_the_files_already_stored_and_still_lists_refusals(
    server: ServerProcess, tmp_path: Path
) -> None:
    files = LIST_EACH_UP_TO + 10
    folder = noise_folder(tmp_path / "photos", files, seed=2102)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    config = tmp_path / "config"
    first = alice(server, config, f"add_image {folder}")
    assert f"{files + 1} files: {files} new, 0 already present, 1 rejected" in first.stdout, first

    again = alice(server, config, f"add_image {folder}")
    assert f"{files + 1} files: 0 new, {files} already present, 1 rejected" in again.stdout, again
    assert "(already stored)" not in again.stdout, again.stdout  # counted, not listed
    assert "Add --verbose to list every file." in again.stdout, again.stdout
    refused = [line for line in again.stdout.splitlines() if line.startswith("rejected ")]
    assert len(refused) == 1 and "broken.jpg" in refused[0], again.stdout  # still listed

    verbose = alice(server, config, f"add_image {folder} --verbose")
    assert verbose.stdout.count("(already stored)") == files, verbose.stdout
    assert "Add --verbose" not in verbose.stdout, verbose.stdout


def test_a_few_files_already_stored_are_still_listed(server: ServerProcess, tmp_path: Path) -> None:
    folder = noise_folder(tmp_path / "few", 3, seed=2103)
    config = tmp_path / "config"
    assert alice(server, config, f"add_image {folder}").returncode == 0
    again = alice(server, config, f"add_image {folder}")
    assert again.stdout.count("(already stored)") == 3, again.stdout
    assert "Add --verbose" not in again.stdout, again.stdout


# --- 3: show_image --save into a folder that does not exist --------------------------------------


def save_target(save: str) -> Path:
    return ImageCommands._save_target(argparse.Namespace(save=save, force=False))


def test_save_into_a_missing_folder_says_it_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nodir"
    with pytest.raises(CommandFailed, match=r"nodir/ does not exist\.$"):
        save_target(f"{missing}/")
    with pytest.raises(CommandFailed, match=r"nodir does not exist\.$"):
        save_target(f"{missing}/copy.jpg")
    assert not missing.exists()


def test_save_into_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "plain"
    a_file.write_bytes(b"x")
    with pytest.raises(CommandFailed, match=r"plain/ is not a directory\.$"):
        save_target(f"{a_file}/")
    with pytest.raises(CommandFailed, match=r"plain is not a directory\.$"):
        save_target(f"{a_file}/copy.jpg")
    folder = tmp_path / "there"
    folder.mkdir()
    assert save_target(f"{folder}/") == folder


# --- 4: two shells writing device tokens at once -------------------------------------------------


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shell.session import DeviceTokenStore
    path, who, count, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not start.exists():
        time.sleep(0.001)
    store = DeviceTokenStore(path)
    for n in range(count):
        store.put(f"127.0.0.1:{7000 + n % 3} SHA256:x", f"{who}{n}", f"token_{who}_{n}")
    """
)


def test_shells_logging_in_at_once_keep_every_device_token(tmp_path: Path) -> None:
    """Four processes, 150 logins each, on three servers: every token is kept."""
    path = tmp_path / "config" / DEVICE_TOKENS_FILE
    start = tmp_path / "go"
    writers, count = ("a", "b", "c", "d"), 150
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), who, str(count), str(start)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for who in writers
    ]
    start.touch()
    for process in processes:
        assert process.wait(timeout=120) == 0
    store = DeviceTokenStore(path)
    lost = [
        f"{who}{n}"
        for who in writers
        for n in range(count)
        if store.get(f"127.0.0.1:{7000 + n % 3} SHA256:x", f"{who}{n}") != f"token_{who}_{n}"
    ]
    assert not lost, f"{len(lost)} of {len(writers) * count} tokens lost: {lost[:10]}"
