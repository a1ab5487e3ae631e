"""The shell as a person or a script meets it: pinning, unreachable servers, bad arguments,
lost connections. Every failure is a clear sentence and a non-zero exit, never a traceback."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pexpect

from protocol import tls
from tests.servers import PYTHON, ROOT, ServerProcess, run_client

PASSWORD = "correct horse battery"


def at_a_terminal() -> None:
    """A person's terminal delivers Ctrl-C; a test run started where SIGINT is ignored (a
    background job of a shell without job control, as a CI runner may be) would pass that on
    to the client, whose trust question then never sees the Ctrl-C a test sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_client(
    server: ServerProcess, config_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> pexpect.spawn:
    child_env = {k: v for k, v in os.environ.items() if k != "VITRINE_PASSWORD"}
    child_env.update(env or {})
    child_env["TERM"] = "dumb"
    return pexpect.spawn(
        PYTHON,
        [
            str(ROOT / "client.py"),
            "--server",
            server.address,
            "--config-dir",
            str(config_dir),
            "--data-dir",
            str(config_dir / "data"),
            *flags,
        ],
        cwd=str(ROOT),
        env=child_env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
        preexec_fn=at_a_terminal,
    )


def logged_in_shell(
    server: ServerProcess, config_dir: Path, name: str, env: dict[str, str] | None = None
) -> pexpect.spawn:
    """A new account `name`, and a terminal shell logged in as it (VITRINE_PASSWORD answers)."""
    run_client(server, f"create_user {name}", "quit", config_dir=config_dir, password=PASSWORD)
    child = spawn_client(
        server,
        config_dir,
        "--fingerprint",
        server.fingerprint,
        env={"VITRINE_PASSWORD": PASSWORD, **(env or {})},
    )
    child.expect("Type help for commands")
    child.sendline(f"login {name}")
    child.expect(f"Logged in as {name}")
    return child


def bare_client(address: str, config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """client.py with exactly these flags and commands: no pin passed, no terminal to ask."""
    return subprocess.run(
        [
            PYTHON,
            str(ROOT / "client.py"),
            "--server",
            address,
            "--config-dir",
            str(config_dir),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def known_servers(config_dir: Path) -> str:
    return (config_dir / "known_servers").read_text()


def test_unknown_server_is_shown_and_asked_about(server: ServerProcess, config_dir: Path) -> None:
    child = spawn_client(server, config_dir)
    child.expect("can't be established")
    child.expect(server.fingerprint.replace("+", r"\+"))
    child.expect(r"trust it and connect \(yes/no\)\?")
    child.sendline("yes")
    child.expect("Type help for commands")
    child.sendline("quit")
    child.expect(pexpect.EOF)
    assert f"{server.address} {server.fingerprint}" in known_servers(config_dir)


def test_answering_no_refuses_and_pins_nothing(server: ServerProcess, config_dir: Path) -> None:
    child = spawn_client(server, config_dir)
    child.expect(r"\(yes/no\)\?")
    child.sendline("no")
    child.expect("untrusted server")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    assert not (config_dir / "known_servers").exists()


def test_ctrl_c_at_the_trust_question_refuses_without_a_traceback(
    server: ServerProcess, config_dir: Path
) -> None:
    child = spawn_client(server, config_dir)
    child.expect(r"\(yes/no\)\?")
    child.sendintr()
    child.expect("untrusted server")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "Traceback" not in (child.before or "")
    assert not (config_dir / "known_servers").exists()


def test_an_unreadable_known_servers_file_is_named_not_a_traceback(
    server: ServerProcess, config_dir: Path
) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    pins = config_dir / "known_servers"
    pins.write_bytes(b"# caf\xe9 server\n")  # Latin-1, not UTF-8
    result = bare_client(server.address, config_dir, "--trust-new-server", "quit")
    assert result.returncode == 2, result
    assert f"Cannot read the known servers file {pins}" in result.stderr
    assert "not UTF-8" in result.stderr and "Traceback" not in result.stderr
    pins.unlink()
    pins.mkdir()  # a folder where the file should be: it cannot be saved either
    result = bare_client(server.address, config_dir, "--trust-new-server", "quit")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert str(pins) in result.stderr


def test_a_ca_file_that_cannot_be_used_is_named(server: ServerProcess, config_dir: Path) -> None:
    missing = config_dir / "no-such-ca.pem"
    result = bare_client(server.address, config_dir, "--ca-file", str(missing), "quit")
    assert result.returncode == 2
    assert f"cannot use --ca-file {missing}" in result.stderr and "running" not in result.stderr
    garbage = config_dir / "garbage.pem"
    garbage.parent.mkdir(parents=True, exist_ok=True)
    garbage.write_text("not a certificate")
    result = bare_client(server.address, config_dir, "--ca-file", str(garbage), "quit")
    assert result.returncode == 2 and f"cannot use --ca-file {garbage}" in result.stderr


def test_the_history_is_owner_only(server: ServerProcess, config_dir: Path) -> None:
    fresh = config_dir / "fresh"
    result = bare_client(server.address, fresh, "--trust-new-server", "help", "quit")
    assert result.returncode == 0, result
    assert (fresh / "history").stat().st_mode & 0o777 == 0o600
    assert fresh.stat().st_mode & 0o777 == 0o700


def piped_client_logged_in(
    server: ServerProcess, config_dir: Path, name: str
) -> subprocess.Popen[str]:
    """client.py reading its commands from a pipe, as a script feeds it, with `name` (created
    here) logged in: the test writes the rest with `communicate`."""
    run_client(server, f"create_user {name}", "quit", config_dir=config_dir, password=PASSWORD)
    child = subprocess.Popen(
        [PYTHON, str(ROOT / "client.py"), "--server", server.address, "--config-dir",
         str(config_dir), "--data-dir", str(config_dir / "data"), "--fingerprint",
         server.fingerprint],
        cwd=str(ROOT), env={**os.environ, "VITRINE_PASSWORD": PASSWORD}, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None
    child.stdin.write(f"login {name}\n")
    child.stdin.flush()
    server.wait_for_log(f"user={name}")
    return child


def test_a_reconnect_notice_in_a_script_goes_to_stderr(
    server: ServerProcess, config_dir: Path
) -> None:
    """After a lost connection the next command reconnects and says so; in a script that note
    must not come before the JSON on stdout."""
    child = piped_client_logged_in(server, config_dir, "hale")
    server.stop()
    server.restart()
    out, err = child.communicate("tags --json\nquit\n", timeout=60)
    assert "resumed the session as hale" in err, err
    assert all(line.startswith("{") for line in out.splitlines()), out


def test_an_idle_reconnect_says_why_once(tmp_path: Path, config_dir: Path) -> None:
    """It read "(the server closed the connection: Closing the connection: nothing received
    for 2 s.)"."""
    idle = ServerProcess(tmp_path / "idle", ["--idle-timeout", "2"]).start()
    try:
        child = piped_client_logged_in(idle, config_dir, "nap")
        time.sleep(3)  # past the server's idle timeout: it closes the connection
        _, err = child.communicate("whoami\nquit\n", timeout=60)
        assert "(the server closed the connection: nothing received for 2 s)" in err, err
        assert "Closing the connection" not in err, err
    finally:
        idle.stop()


def test_script_without_trust_flag_is_refused(server: ServerProcess, config_dir: Path) -> None:
    result = bare_client(server.address, config_dir, "quit")
    assert result.returncode != 0
    assert "--trust-new-server" in result.stderr
    assert "Traceback" not in result.stderr


def test_trust_new_server_flag_pins_without_asking(server: ServerProcess, config_dir: Path) -> None:
    result = bare_client(server.address, config_dir, "--trust-new-server", "quit")
    assert result.returncode == 0, result.stderr
    assert server.fingerprint in known_servers(config_dir)


def test_wrong_expected_fingerprint_is_refused(server: ServerProcess, config_dir: Path) -> None:
    wrong = "SHA256:" + "A" * 43
    result = bare_client(server.address, config_dir, "--fingerprint", wrong, "quit")
    assert result.returncode != 0
    assert wrong in result.stderr and server.fingerprint in result.stderr
    assert not (config_dir / "known_servers").exists()


def test_changed_fingerprint_is_refused_loudly(tmp_path: Path, config_dir: Path) -> None:
    first = ServerProcess(tmp_path / "one").start()
    port, old = first.port, first.fingerprint
    assert run_client(first, "quit", config_dir=config_dir).returncode == 0
    first.stop()
    # A different server (new key) on the same address: what a man in the middle looks like.
    impostor = ServerProcess(tmp_path / "two", port=port).start()
    try:
        assert impostor.fingerprint != old
        for flags in ([], ["--trust-new-server"], ["--fingerprint", impostor.fingerprint]):
            result = bare_client(impostor.address, config_dir, *flags, "quit")
            assert result.returncode != 0
            assert "IDENTITY HAS CHANGED" in result.stderr
            assert old in result.stderr and impostor.fingerprint in result.stderr
            assert "Traceback" not in result.stderr
        assert old in known_servers(config_dir)
    finally:
        impostor.stop()


def test_server_not_running(tmp_path: Path, config_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    result = bare_client(f"127.0.0.1:{free_port}", config_dir, "--trust-new-server", "quit")
    assert result.returncode != 0
    assert "Cannot reach a Vitrine server" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_argument_fails_the_script(shared_server: ServerProcess, config_dir: Path) -> None:
    result = run_client(shared_server, "login", "quit", config_dir=config_dir, password=PASSWORD)
    assert result.returncode != 0
    assert "the following arguments are required: NAME" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_fails_the_script(shared_server: ServerProcess, config_dir: Path) -> None:
    result = run_client(shared_server, "fly_to_the_moon", "quit", config_dir=config_dir)
    assert result.returncode != 0
    assert "fly_to_the_moon is not a Vitrine command" in result.stderr


def test_at_a_terminal_a_failed_argument_command_skips_the_rest_and_hands_over(
    shared_server: ServerProcess, config_dir: Path
) -> None:
    """The arguments stop at their first failure at a terminal too, and the person then gets
    the prompt to carry on from there; what is typed there does not change the status."""
    child = spawn_client(
        shared_server, config_dir, "--fingerprint", shared_server.fingerprint,
        "fly_to_the_moon", "help",
    )  # fmt: skip
    child.expect("fly_to_the_moon is not a Vitrine command")
    child.expect("Stopped at `fly_to_the_moon`, which failed: 1 command after it not run.")
    child.expect("> ")
    assert "create_user" not in child.before  # `help` did not run
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def test_only_account_commands_before_login(shared_server: ServerProcess, config_dir: Path) -> None:
    result = run_client(shared_server, "help", "quit", config_dir=config_dir)
    assert result.returncode == 0
    offered = set(result.stdout.split())
    assert {"create_user", "login", "help", "quit"} <= offered
    for hidden in ("logout", "whoami", "change_password", "shell", "alias", "history"):
        assert hidden not in offered, hidden
    result = run_client(shared_server, "whoami", "quit", config_dir=config_dir)
    assert result.returncode != 0
    assert "log in first" in result.stderr


def test_reconnects_and_resumes_after_server_restart(
    server: ServerProcess, config_dir: Path
) -> None:
    child = logged_in_shell(server, config_dir, "erin")
    server.stop()
    server.restart()
    child.sendline("whoami")
    child.expect("resumed the session as erin")
    child.expect(r"erin .*on 127\.0\.0\.1")
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_after_a_password_change_the_shell_resumes_with_its_new_token(
    server: ServerProcess, config_dir: Path
) -> None:
    """ChangePassword revokes every token of the user, the shell's own too, and answers with a
    new one; a shell that kept the old token could not resume after the next outage."""
    child = logged_in_shell(
        server, config_dir, "gale", env={"VITRINE_NEW_PASSWORD": "a brand new secret"}
    )
    child.sendline("change_password")
    child.expect("Password changed; your other sessions have ended")
    server.stop()
    server.restart()
    child.sendline("whoami")
    child.expect("resumed the session as gale")
    child.expect(r"gale .*on 127\.0\.0\.1")
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_password_change_elsewhere_logs_this_shell_out(
    server: ServerProcess, config_dir: Path, tmp_path: Path
) -> None:
    """The server ends the other sessions of a user whose password changed; the shell used to
    keep the user's prompt and commands, failing each one with the same error."""
    child = logged_in_shell(server, config_dir, "hale")
    changed = run_client(
        server,
        "login hale",
        "change_password",
        config_dir=tmp_path / "elsewhere",
        password=PASSWORD,
        extra_env={"VITRINE_NEW_PASSWORD": "a brand new secret"},
    )
    assert changed.returncode == 0, changed.stderr
    child.sendline("browse_by_tags anything")
    child.expect("The password was changed on another connection; log in again")
    child.expect(r"vitrine 127\.0\.0\.1:\d+> ")  # the logged-out prompt
    child.sendline("whoami")
    child.expect("needs a logged-in user")
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()


def test_a_wrong_password_at_login_keeps_the_user_logged_in(
    server: ServerProcess, config_dir: Path
) -> None:
    """UNAUTHENTICATED does not always mean logged out: the shell asks before it forgets."""
    run_client(server, "create_user ines", "quit", config_dir=config_dir, password=PASSWORD)
    child = spawn_client(server, config_dir, "--fingerprint", server.fingerprint)
    child.expect("Type help for commands")
    child.sendline("login ines")
    child.expect("Password:")
    child.sendline(PASSWORD)
    child.expect("Logged in as ines")
    child.sendline("login ines")
    child.expect("Password:")
    child.sendline("not the password at all")
    child.expect("Wrong user name or password")
    child.expect(r"vitrine ines@127\.0\.0\.1:\d+> ")
    child.sendline("whoami")
    child.expect(r"ines .*on 127\.0\.0\.1")
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()


def test_command_during_outage_fails_clearly_then_recovers(
    server: ServerProcess, config_dir: Path
) -> None:
    child = logged_in_shell(server, config_dir, "faye")
    server.stop()
    child.sendline("whoami")
    child.expect("Cannot reach a Vitrine server")
    server.restart()
    child.sendline("whoami")
    child.expect("resumed the session as faye")
    child.sendline("quit")
    child.expect(pexpect.EOF)


def test_key_and_certificate_are_owner_only(server: ServerProcess) -> None:
    for name in (tls.CERT_FILE, tls.KEY_FILE):
        mode = (server.data_dir / name).stat().st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))
    assert (server.data_dir.stat().st_mode & 0o077) == 0


def test_sigint_and_sigterm_stop_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        process = ServerProcess(tmp_path / sig.name).start()
        assert process.stop(sig) == 0
        assert "stopped" in process.log()


def test_closed_connections_release_their_descriptors(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    """Each connection runs an event loop in a thread of its own; `close` must close that loop
    (its epoll and self-pipe descriptors) then, not leave it to the garbage collector, which
    a long scripted session may not run for a while (and which warned about it in tests)."""
    fds = Path("/proc/self/fd")
    connections = [shared_server.connect(tmp_path) for _ in range(3)]
    for connection in connections:
        connection.close()
    gc.disable()
    try:
        before = len(list(fds.iterdir()))
        for _ in range(10):
            connection = shared_server.connect(tmp_path)
            connection.close()
        deadline = time.monotonic() + 5
        while len(list(fds.iterdir())) > before and time.monotonic() < deadline:
            time.sleep(0.05)  # each I/O thread closes its loop as it ends
        assert len(list(fds.iterdir())) <= before
    finally:
        gc.enable()
