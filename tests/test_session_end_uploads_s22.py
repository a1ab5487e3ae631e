"""add_image and delete_image when the session ends under them, and add_image's closing line
when its output goes elsewhere than stderr.

QA: shell A ran `add_image DIR --window 1` and shell B (same account) changed the password: A
sent every remaining file, printed 71 lines `rejected ...: The password was changed on another
connection; log in again.`, and kept the logged-in prompt; `delete_image 121 120` said
`not deleted (UNAUTHENTICATED)` once an id, logged in still. With `add_image DIR --json >out
2>err` and the server killed mid-run, stderr said only "Not everything was uploaded: ...; see
above." and never why. The real client.py runs against a real server.py; the password changes
on another connection, as in another shell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from protocol.catalog import ListTags, TagList
from protocol.messages import ChangePassword, Session
from shell.connection import ServerConnection
from tests.servers import ROOT, ServerProcess, client_argv, run_client
from tests.test_pinning_and_client import spawn_client
from tests.test_upload_summary_s21 import noise_folder

PASSWORD = "correct horse battery"
CHANGED = "a brand new secret"
FILES = 600
LOGGED_OUT = r"vitrine 127\.0\.0\.1:\d+> "
ENDED = "The session ended, so the upload stopped: The password was changed on another connection"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("session-end")).start()
    yield process
    process.stop()


def account(server: ServerProcess, config: Path, name: str) -> ServerConnection:
    """A new account `name`, and a connection logged in to it: the other shell."""
    return server.user_connection(config, name, PASSWORD)


def change_password(other: ServerConnection) -> None:
    """What `change_password` in another shell does: every other session of the user ends."""
    other.call(ChangePassword(id=0, old_password=PASSWORD, new_password=CHANGED), Session)


def client(
    server: ServerProcess, config: Path, name: str, command: str, **streams: Any
) -> subprocess.Popen[str]:
    """client.py running `login NAME` and `command` as a script, stdout and stderr apart."""
    return subprocess.Popen(
        client_argv(server, config, f"login {name}", command),
        cwd=ROOT,
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=streams.get("stderr", subprocess.PIPE),
        text=True,
    )  # fmt: skip


def terminal(server: ServerProcess, config: Path, name: str) -> Any:
    child = spawn_client(
        server,
        config,
        "--fingerprint",
        server.fingerprint,
        env={"VITRINE_PASSWORD": PASSWORD, "COLUMNS": "200"},
    )
    child.timeout = 90
    child.expect("Type help for commands")
    child.sendline(f"login {name}")
    child.expect(f"Logged in as {name}")
    return child


# --- 1. the session ends during add_image and delete_image ---------------------------------------


def test_an_upload_stops_sending_at_the_session_end_and_accounts_for_every_file(
    shop: ServerProcess, tmp_path: Path
) -> None:
    folder = noise_folder(tmp_path / "bulk", FILES, seed=2201)
    other = account(shop, tmp_path / "other", "sue")
    process = client(shop, tmp_path / "config", "sue", f"add_image {folder} --json --window 1")
    assert process.stdout is not None and process.stderr is not None
    first = [process.stdout.readline() for _ in range(3)]
    assert all(first), process.communicate()
    change_password(other)
    rest, err = process.stdout.read(), process.stderr.read()
    assert process.wait(timeout=120) != 0, err  # a script sees the failure
    other.close()
    assert "Traceback" not in err, err
    lines = [json.loads(line) for line in (*first, *rest.splitlines())]
    assert len(lines) == FILES, err  # every file has its line
    refused = [n for n, line in enumerate(lines) if line.get("code") == "unauthenticated"]
    assert refused, err
    stop = refused[0]
    assert lines[stop]["outcome"] == "rejected", lines[stop]
    # One request in flight at most: nothing is sent after the first refusal.
    after = lines[stop + 1 :]
    assert after and all(line["outcome"] == "not_sent" for line in after), after[:3]
    assert all(line["code"] == "unauthenticated" for line in after), after[:3]
    assert "log in again" in after[0]["reason"], after[0]
    said = " ".join(err.split())
    assert said.count("The password was changed on another connection") == 1, err
    assert (
        f"{ENDED}; log in again. 1 file refused for it and {len(after)} files not sent. "
        "Then run the same command again to send the rest: files already stored come back as "
        "present, not twice."
    ) in said, err
    assert "Once logged in" not in said, err  # "log in" said once (review, session 22)
    assert "Not everything was uploaded" not in said, err


def wait_until_stored(other: ServerConnection, tag: str, count: int) -> None:
    """Until the server holds `count` images tagged `tag` (the run is under way), asked on
    the other connection: an upload without --json prints nothing before its summary."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tags = other.call(ListTags(id=0), TagList).tags
        if any(t.name == tag and t.count >= count for t in tags):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} images tagged {tag} within a minute")


def test_after_a_session_end_the_summary_does_not_offer_verbose(
    shop: ServerProcess, tmp_path: Path
) -> None:
    """Review: the summary on stdout still ended "Add --verbose to list every file.", but
    --verbose lists neither the refused file nor those not sent: the failure line counts them."""
    folder = noise_folder(tmp_path / "bulk", FILES, seed=2206)
    other = account(shop, tmp_path / "other", "xena")
    process = client(
        shop, tmp_path / "config", "xena", f"add_image {folder} --window 1 --tags xena-bulk"
    )
    try:
        wait_until_stored(other, "xena-bulk", 3)
        change_password(other)
        out, err = process.communicate(timeout=120)
    finally:
        other.close()
        process.kill()
    assert process.returncode != 0, err
    (summary,) = [line for line in out.splitlines() if line.startswith(f"{FILES} files: ")]
    assert " not sent " in summary, out  # the run did stop at the session end
    assert "--verbose" not in out + err, out
    assert ENDED in " ".join(err.split()), err


def test_at_a_terminal_the_upload_says_it_once_and_the_prompt_is_logged_out_at_once(
    shop: ServerProcess, tmp_path: Path
) -> None:
    folder = noise_folder(tmp_path / "bulk", FILES, seed=2202)
    other = account(shop, tmp_path / "other", "tess")
    child = terminal(shop, tmp_path / "config", "tess")
    try:
        child.sendline(f"add_image {folder} --window 2 --verbose --tags bulk")
        child.expect(r"new\s+#\d+")
        change_password(other)
        child.expect("The session ended, so the upload stopped")
        shown = child.before
        child.expect("run the same command again to send the rest")
        child.expect(LOGGED_OUT)  # at once, not after the next command
        assert "password was changed" not in shown, shown  # not once a file
        assert "Not everything was uploaded" not in shown + child.before, shown
        child.sendline("whoami")
        child.expect("needs a logged-in user")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
        other.close()


def test_delete_image_after_the_session_ended_says_so_once_and_logs_out(
    shop: ServerProcess, tmp_path: Path
) -> None:
    folder = noise_folder(tmp_path / "two", 2, seed=2203)
    other = account(shop, tmp_path / "other", "uma")
    child = terminal(shop, tmp_path / "config", "uma")
    try:
        child.sendline(f"add_image {folder}")
        ids = []
        for _ in range(2):
            child.expect(r"new\s+#(\d+)")
            ids.append(int(child.match.group(1)))
        child.expect(r"2 files: 2 new")
        change_password(other)
        child.sendline(f"delete_image {ids[0]} {ids[1]}")
        child.expect(r"The session ended, so 2 of 2 not deleted \(#\d+, #\d+\)")
        shown = child.before
        child.expect(re.escape(f"; log in again. Then `delete_image {ids[0]} {ids[1]}` deletes"))
        assert "Once logged in" not in child.before, child.before  # log in, said once
        child.expect(LOGGED_OUT)
        assert "UNAUTHENTICATED" not in shown, shown
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
        other.close()
    again = run_client(
        shop,
        "login uma",
        f"show_image {ids[0]} --json",
        config_dir=tmp_path / "c",
        password=CHANGED,
    )
    assert again.returncode == 0, again.stderr  # nothing was deleted


# --- 2. the closing line on stderr stands on its own ----------------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--verbose"])
def test_a_lost_server_is_named_on_stderr_when_stdout_goes_elsewhere(
    server: ServerProcess, tmp_path: Path, flag: str
) -> None:
    folder = noise_folder(tmp_path / "bulk", FILES, seed=2204)
    account(server, tmp_path / "other", "vic").close()
    process = client(server, tmp_path / "config", "vic", f"add_image {folder} {flag} --window 4")
    assert process.stdout is not None and process.stderr is not None
    first = [process.stdout.readline() for _ in range(3)]
    assert all(first), process.communicate()
    server.kill()
    rest, err = process.stdout.read(), process.stderr.read()
    assert process.wait(timeout=120) != 0, err
    assert "Traceback" not in err, err
    said = " ".join(err.split())
    failure = said[said.index("Not everything was uploaded") :]
    assert f"The connection to {server.address} was lost (" in failure, err
    assert "Run the same command again to send the rest" in failure, err
    assert "see above" not in failure and "see stdout" in failure, err
    assert "connection_lost" in rest or "connection was lost" in rest, rest[-500:]


def test_see_above_only_when_both_streams_go_to_one_place(
    shop: ServerProcess, tmp_path: Path
) -> None:
    folder = noise_folder(tmp_path / "some", 2, seed=2205)
    (folder / "broken.png").write_bytes(b"not a picture at all")
    account(shop, tmp_path / "other", "wes").close()
    merged = client(shop, tmp_path / "c1", "wes", f"add_image {folder}", stderr=subprocess.STDOUT)
    out, _ = merged.communicate(timeout=120)
    assert merged.returncode != 0, out
    assert "Not everything was uploaded: 1 file rejected; see above." in out, out
    apart = client(shop, tmp_path / "c2", "wes", f"add_image {folder}")
    out, err = apart.communicate(timeout=120)
    assert apart.returncode != 0, err
    assert "Not everything was uploaded: 1 file rejected; see stdout." in err, err
    assert "broken.png" in out, out


def test_at_a_terminal_see_above_points_at_the_lines_above(
    shop: ServerProcess, tmp_path: Path
) -> None:
    """Both streams at one terminal: the rejected file is listed above the closing line, so
    it says "see above" (not "see stdout", which is for `>out 2>err`)."""
    folder = noise_folder(tmp_path / "some", 2, seed=2207)
    (folder / "broken.png").write_bytes(b"not a picture at all")
    account(shop, tmp_path / "other", "yves").close()
    child = terminal(shop, tmp_path / "config", "yves")
    try:
        child.sendline(f"add_image {folder}")
        child.expect("broken.png")
        child.expect(r"Not everything was uploaded: 1 file rejected; (see \w+)\.")
        assert child.match.group(1) == "see above", child.before
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
