"""add_image stopped by something other than Ctrl-C still says what became of every file.

QA: SIGTERM (what `timeout` in cron sends) during `add_image DIR --json --window 2` ended the
client with 204 JSON lines and no summary while the server had stored 209 files; and
`add_image DIR --json | head -1` went on sending 132 files after `head` had gone. The real
client.py runs against a real server; what the server stored is learnt by sending the folder
again (stored files come back as present).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shell.interrupts import HeldInterrupts
from tests.servers import ROOT, ServerProcess, client_argv, create_users, run_client

PASSWORD = "correct horse battery"
FILES = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("upload-signals")).start()
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


def client(server: ServerProcess, config: Path, *commands: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        client_argv(server, config, "login alice", *commands),
        cwd=ROOT,
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def stored_of(server: ServerProcess, config: Path, folder: Path) -> set[str]:
    """The files of `folder` the server holds: sent again, they come back as present (and the
    others are stored now, which no test here looks at afterwards)."""
    again = run_client(
        server, "login alice", f"add_image {folder} --json", config_dir=config, password=PASSWORD
    )
    lines = [json.loads(line) for line in again.stdout.splitlines()]
    assert len(lines) == FILES, again.stderr
    return {line["path"] for line in lines if line["outcome"] == "present"}


def outcomes(lines: list[dict[str, Any]]) -> dict[str, set[str]]:
    by: dict[str, set[str]] = {}
    for line in lines:
        by.setdefault(line["outcome"], set()).add(line["path"])
    return by


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_upload_accounts_for_every_file(
    server: ServerProcess, tmp_path: Path, signum: signal.Signals
) -> None:
    folder = noise_folder(tmp_path / "photos", FILES, seed=int(signum))
    config = tmp_path / "config"
    process = client(server, config, f"add_image {folder} --json --window 2")
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # uploads are under way: the first answer is in
    assert first, process.communicate()
    os.kill(process.pid, signum)
    rest, err = process.communicate(timeout=60)
    # Ended by the signal itself, after the summary: a shell reports 128 + signum.
    assert process.returncode == -signum, (process.returncode, err)
    assert "Traceback" not in err, err
    lines = [json.loads(line) for line in (first + rest).splitlines()]  # each one valid JSON
    paths = [line["path"] for line in lines]
    assert sorted(paths) == sorted(str(path) for path in folder.iterdir())  # each file once
    by = outcomes(lines)
    assert set(by) <= {"new", "unanswered", "not_sent"}, by.keys()
    assert by.get("not_sent"), "the signal came after the last file was sent"
    summary = next(line for line in err.splitlines() if f"{FILES} files:" in line)
    assert summary.startswith(f"Stopped by {signum.name}. {FILES} files: "), err
    assert f"{len(by.get('new', ()))} new" in summary, summary
    assert f"{len(by.get('not_sent', ()))} not sent" in summary, summary
    stored = stored_of(server, config, folder)
    assert by.get("new", set()) <= stored
    assert stored <= by.get("new", set()) | by.get("unanswered", set())
    assert not stored & by["not_sent"]


def test_a_reader_gone_stops_the_sending_and_the_run_is_accounted_on_stderr(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`| head -1`: the test reads one line and closes the pipe."""
    folder = noise_folder(tmp_path / "photos", FILES, seed=99)
    config = tmp_path / "config"
    process = client(server, config, f"add_image {folder} --json --window 4", "tags --json")
    assert process.stdout is not None and process.stderr is not None
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.append(process.stderr.read()))  # type: ignore[union-attr]
    drain.start()
    first = json.loads(process.stdout.readline())
    assert first["outcome"] == "new", first
    process.stdout.close()
    process.wait(timeout=60)
    drain.join(10)
    err = errors[0]
    assert process.returncode == 141, (process.returncode, err)
    assert "Traceback" not in err, err
    summary = next(line for line in err.splitlines() if f"{FILES} files:" in line)
    assert summary.startswith("Stopped: whoever read the output has closed it."), summary
    stored = stored_of(server, config, folder)
    # The files on the wire when the reader went are answered; no new file is sent after.
    assert f"{len(stored)} new, 0 already present, 0 rejected, 0 unanswered" in summary, summary
    assert f"{FILES - len(stored)} not sent" in summary, summary
    assert len(stored) < FILES // 3, summary


def test_stopping_turns_sigterm_into_one_interrupt_and_remembers_it() -> None:
    """In the test's own process: the handler in place before is back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    held = HeldInterrupts()
    with pytest.raises(KeyboardInterrupt), held.stopping():
        signal.raise_signal(signal.SIGTERM)
    assert held.terminated == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    with held.stopping():  # once stopped, a later one is only remembered
        signal.raise_signal(signal.SIGHUP)
        with held.whole():
            pass
    assert held.terminated == signal.SIGTERM
