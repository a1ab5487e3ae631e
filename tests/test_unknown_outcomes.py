"""delete_image and update_image whose answer never comes: the request was sent, so the server
may well have acted on it; the shell says the outcome is unknown (and how to learn it) instead
of "not deleted", which a retry would then seem to confirm (NOT_FOUND, "not deleted" again).

Real processes only: the shell at a pseudo-terminal, the server stopped with SIGSTOP so that a
request waits unread in its socket, then killed (a lost connection) or resumed after a Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from protocol.catalog import GetImage, ImageDetails
from protocol.errors import ErrorCode, VitrineError
from shell.connection import ServerConnection
from tests.servers import ROOT, ServerProcess, client_argv, unread_by_server
from tests.test_images_server import jpeg, unique, upload

PASSWORD = "correct horse"


@contextmanager
def terminal(server: ServerProcess, name: str, config_dir: Path) -> Iterator[Any]:
    """client.py at a pseudo-terminal, logged in as `name`: what a person sees."""
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD, "TERM": "xterm-256color"}
    argv = client_argv(server, config_dir, f"login {name}")
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
        # A terminal delivers Ctrl-C even when this test run was started with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        child.expect("Logged in as")
        child.expect("vitrine ")
        yield child
    finally:
        child.close(force=True)


def send_while_stopped(child: Any, server: ServerProcess, line: str) -> None:
    """Type `line` while the server is stopped; return once its request waits unread in the
    server's socket: sent, and unanswered."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    assert unread_by_server(child, server) == 0
    if hasattr(child, "sendline"):
        child.sendline(line)
    else:  # a script's stdin
        child.stdin.write(line + "\n")
        child.stdin.flush()
    deadline = time.monotonic() + 30
    while unread_by_server(child, server) == 0:
        assert time.monotonic() < deadline, f"{line!r} sent no request"
        time.sleep(0.05)


def image_of(conn: ServerConnection, number: int) -> ImageDetails | None:
    try:
        return conn.call(GetImage(id=0, image_id=number, with_original=False), ImageDetails)
    except VitrineError as exc:
        assert exc.code is ErrorCode.NOT_FOUND, exc
        return None


def quit_shell(child: Any) -> None:
    """At a terminal, commands typed at the prompt do not set the exit status (the person saw
    each error): the script test below checks it."""
    pexpect = pytest.importorskip("pexpect")
    child.sendline("quit")
    child.expect(pexpect.EOF)


def test_ctrl_c_after_a_delete_or_update_was_sent_says_the_outcome_is_unknown(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Ctrl-C at a stalled server printed only "Interrupted.", and both changes were applied
    when it resumed."""
    name = unique("owner")
    seller = server.user_connection(tmp_path, name, PASSWORD)
    doomed = upload(seller, jpeg(9101), title="Doomed").image_id
    repriced = upload(seller, jpeg(9102), title="Repriced", price_cents=1000).image_id
    with terminal(server, name, tmp_path / "shell") as child:
        try:
            send_while_stopped(child, server, f"delete_image {doomed}")
            child.sendintr()
            child.expect(rf"#{doomed}: outcome unknown: the request was sent, but interrupted")
            child.expect(rf"`show_image {doomed}` tells")
            child.expect(r"1 of 1 with the outcome unknown")
            child.expect("vitrine ")
            assert "not deleted" not in child.before
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            child.sendline(f"update_image {repriced} --title Resumed")  # the connection is fine
            child.expect(f"Updated #{repriced}")
            child.expect("vitrine ")

            send_while_stopped(child, server, f"update_image {repriced} --price 42")
            child.sendintr()
            child.expect(rf"#{repriced}: outcome unknown: the request was sent, but interrupted")
            child.expect(rf"may have been updated\. `show_image {repriced}` tells")
            child.expect("vitrine ")
            assert "Interrupted." not in child.before
        finally:
            os.kill(server.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        child.sendline(f"show_image {repriced} --json")
        child.expect('"price":"42.00"')
        child.expect("vitrine ")
        quit_shell(child)
    # The server did both, as the shell said it might have.
    assert image_of(seller, doomed) is None
    after = image_of(seller, repriced)
    assert after is not None and after.image.price_cents == 4200


def test_a_connection_lost_after_a_delete_was_sent_is_not_called_a_refusal(
    server: ServerProcess, tmp_path: Path
) -> None:
    """ "#614: no answer, the connection was lost ... 1 of 1 not deleted." was printed for a
    delete the database had made."""
    name = unique("owner")
    seller = server.user_connection(tmp_path, name, PASSWORD)
    mine = upload(seller, jpeg(9201), title="Mine").image_id
    other = upload(seller, jpeg(9202), title="Other").image_id
    seller.close()
    with terminal(server, name, tmp_path / "shell") as child:
        send_while_stopped(child, server, f"delete_image {mine} {other}")
        server.kill()
        child.expect(rf"#{mine}: outcome unknown: the request was sent, but the connection was")
        child.expect(rf"`show_image {mine}` tells")
        child.expect(rf"#{other}: outcome unknown")
        child.expect(r"2 of 2 with the outcome unknown")
        child.expect("vitrine ")
        assert "not deleted" not in child.before

        server.restart()
        child.sendline(f"show_image {mine} --json")  # reconnects, resumes: the shell tells
        child.expect(f'"id":{mine}')
        child.expect("vitrine ")
        send_while_stopped(child, server, f"update_image {mine} --price 3")
        server.kill()
        child.expect(rf"#{mine}: outcome unknown: the request was sent, but the connection was")
        child.expect(rf"may have been updated\. `show_image {mine}` tells")
        child.expect("vitrine ")
        assert "Lost the connection" not in child.before
        quit_shell(child)


def test_a_script_fails_when_a_delete_has_no_answer(server: ServerProcess, tmp_path: Path) -> None:
    """Commands read from stdin: the exit status is non-zero, and the sentence is the same."""
    name = unique("owner")
    seller = server.user_connection(tmp_path, name, PASSWORD)
    mine = upload(seller, jpeg(9301), title="Scripted").image_id
    seller.close()
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD}
    shell = subprocess.Popen(
        client_argv(server, tmp_path / "script"),
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert shell.stdin is not None and shell.stderr is not None
    try:
        shell.stdin.write(f"login {name}\n")
        shell.stdin.flush()
        for _ in range(5):  # the greeting first
            if "Logged in as" in shell.stderr.readline():
                break
        else:
            pytest.fail("the script never logged in")
        send_while_stopped(shell, server, f"delete_image {mine}")
        server.kill()
        shell.stdin.close()
        assert shell.wait(60) == 1
        err = shell.stderr.read()
    finally:
        shell.kill()
        shell.wait()
    assert f"#{mine}: outcome unknown: the request was sent, but the connection was lost" in err
    assert "1 of 1 with the outcome unknown" in err and "not deleted" not in err, err
