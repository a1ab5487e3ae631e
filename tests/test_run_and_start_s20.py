"""Starting and stopping: `make run` (scripts/run.sh) at a real terminal, a server started with
SIGINT ignored, and a database the server may not write.

Ctrl-C at the shell `make run` opens (the documented way to stop add_image) reached the server
too, which shut down under the user; the server must also never outlive the script, however
the script ends. A read-only vitrine.db used to start without a word and fail every login.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.data_dir import LOCK_FILE
from tests.servers import ROOT, ServerProcess
from tests.test_crash_safety import run_check
from tests.test_images_server import jpeg
from tests.test_operator_startup import refusal, start_refused

pexpect = pytest.importorskip("pexpect")

PASSWORD = "correct horse battery"
PROMPT = r"vitrine .*> "
LOG_LINE = re.compile(r"Server running \(log: (\S+)\)")
#: A server stopping on SIGTERM finishes uploads and saves its index: well within this.
STOP_WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_holds(data_dir: Path) -> bool:
    """Whether a server process still holds the data directory: it keeps its lock for as long
    as it lives (even as it shuts down), and the kernel drops it when the process is gone."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def server_gone(data_dir: Path) -> bool:
    """Waits for the stop, which takes a moment after a signal; True once no server is left."""
    deadline = time.monotonic() + STOP_WAIT_S
    while server_holds(data_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class RunSh:
    """scripts/run.sh on a pseudo-terminal, as `make run` at a person's terminal."""

    def __init__(self, tmp_path: Path, *, under_a_login_shell: bool = False) -> None:
        self.data_dir = tmp_path / "server"
        self.under_a_login_shell = under_a_login_shell
        self.temp = tmp_path / "tmp"  # where mktemp puts the server's log
        self.temp.mkdir()
        env = {
            **os.environ,
            "TERM": "dumb",
            "TMPDIR": str(self.temp),
            "VITRINE_PORT": str(free_port()),
            "VITRINE_DATA_DIR": str(self.data_dir),
            "VITRINE_CONFIG_DIR": str(tmp_path / "config"),
            "VITRINE_CLIENT_DATA_DIR": str(tmp_path / "client"),
            "VITRINE_PASSWORD": PASSWORD,
        }
        run_sh = str(ROOT / "scripts" / "run.sh")
        # At a person's terminal a login shell leads the session and outlives run.sh; here
        # pexpect makes run.sh the leader unless told, and the kernel then hangs up whatever
        # is left in the terminal's foreground when run.sh dies.
        command, args = (
            ("/bin/sh", ["-c", '"$0"; exec sleep 600', run_sh])
            if under_a_login_shell
            else (run_sh, [])
        )
        self.child = pexpect.spawn(
            command,
            args,
            cwd=str(ROOT),
            env=env,
            encoding="utf-8",
            timeout=120,
            dimensions=(40, 150),
            # A person's terminal delivers Ctrl-C even when this test run ignores SIGINT.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.child.expect(LOG_LINE)
        self.log = Path(self.child.match.group(1))
        self.child.expect(PROMPT)

    def children(self, pid: int) -> list[int]:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def pid(self) -> int:
        """run.sh's process id."""
        if not self.under_a_login_shell:
            return int(self.child.pid)
        (pid,) = self.children(self.child.pid)
        return pid

    def command(self, line: str) -> str:
        """Run one shell command; what it printed."""
        self.child.sendline(line)
        self.child.expect(PROMPT)
        return str(self.child.before)

    def close(self) -> None:
        self.child.close(force=True)


@contextlib.contextmanager
def running(run: RunSh) -> Iterator[RunSh]:
    try:
        yield run
    finally:
        run.close()
        # Whatever the test did, leave no server behind.
        with contextlib.suppress(FileNotFoundError):
            if not server_gone(run.data_dir):
                pytest.fail(f"a server still holds {run.data_dir}")


@pytest.fixture
def run_sh(tmp_path: Path) -> Iterator[RunSh]:
    with running(RunSh(tmp_path)) as run:
        yield run


@pytest.fixture
def run_sh_under_a_login_shell(tmp_path: Path) -> Iterator[RunSh]:
    with running(RunSh(tmp_path, under_a_login_shell=True)) as run:
        yield run


def still_served(run_sh: RunSh) -> bool:
    """Whether a command still reaches the server. Waits for the command's own answer, not a
    prompt: a Ctrl-C at the prompt prints one more, which could be taken for the command's."""
    run_sh.child.sendline("whoami")
    answered = run_sh.child.expect([r"alice \(admin\)", "Cannot reach"]) == 0
    run_sh.child.expect(PROMPT)
    return answered


def test_ctrl_c_in_the_shell_leaves_the_server_serving(run_sh: RunSh, tmp_path: Path) -> None:
    run_sh.command("create_user alice")
    run_sh.command("login alice")
    run_sh.child.sendintr()  # at the prompt
    assert still_served(run_sh)

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(300):
        (photos / f"{seed}.jpg").write_bytes(jpeg(seed))
    run_sh.child.sendline(f"add_image {photos}")
    # The progress bar, or the summary if it was that quick: Ctrl-C lands in add_image or
    # just after it, and the server must not get it either way.
    run_sh.child.expect("files")
    run_sh.child.sendintr()
    assert still_served(run_sh)
    assert "received SIGINT" not in run_sh.log.read_text()

    run_sh.child.sendline("quit")
    run_sh.child.expect(pexpect.EOF)
    run_sh.child.close()
    assert run_sh.child.exitstatus == 0, run_sh.child.before
    assert not server_holds(run_sh.data_dir)  # run.sh waits for the stop before it exits
    # A clean stop takes its log with it: one file per `make run` piled up in /tmp.
    assert not run_sh.log.exists()
    assert list(run_sh.temp.iterdir()) == []


def test_closing_the_terminal_stops_the_server(run_sh: RunSh) -> None:
    """The server has no terminal of its own any more, so no SIGHUP of its own: the script's
    trap must stop it."""
    assert server_holds(run_sh.data_dir)
    run_sh.close()  # hangs up the terminal
    assert server_gone(run_sh.data_dir)


def test_a_killed_run_sh_still_stops_the_server(run_sh_under_a_login_shell: RunSh) -> None:
    """SIGKILL runs no trap, and the terminal stays open: the kernel tells the server (its
    parent-death signal). It used to serve on, orphaned, until someone found it."""
    run = run_sh_under_a_login_shell
    assert server_holds(run.data_dir)
    os.kill(run.pid(), signal.SIGKILL)
    assert server_gone(run.data_dir)


def test_a_killed_shell_stops_the_server(run_sh_under_a_login_shell: RunSh) -> None:
    """The client dying (SIGKILL: no goodbye) ends run.sh, whose trap stops the server."""
    run = run_sh_under_a_login_shell
    pids = run.children(run.pid())
    clients = [pid for pid in pids if b"client.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(clients) == 1, pids
    os.kill(clients[0], signal.SIGKILL)
    assert server_gone(run.data_dir)


def test_a_failed_start_keeps_the_log_and_says_where(tmp_path: Path) -> None:
    """The server cannot start (its data directory is a file): run.sh shows why and keeps the
    log, naming it, rather than removing the only record."""
    blocker = tmp_path / "server"
    blocker.write_text("not a directory")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(temp),
        "VITRINE_PORT": str(free_port()),
        "VITRINE_DATA_DIR": str(blocker),
        "VITRINE_CONFIG_DIR": str(tmp_path / "config"),
    }
    done = subprocess.run(
        [str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (log,) = temp.iterdir()
    assert "is not a directory" in log.read_text()
    assert done.stderr.strip().splitlines()[-1].endswith(f"its log: {log}"), done.stderr


# --- a server started with SIGINT ignored --------------------------------------------------------


def ignore_sigint() -> None:
    """What a shell without job control does for `server.py &`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_a_server_started_with_sigint_ignored_keeps_ignoring_it(tmp_path: Path) -> None:
    """A script's `server.py & client.py` gave the server SIGINT ignored, so that Ctrl-C at the
    client is the client's; the server's handler replaced that and stopped it."""
    server = ServerProcess(tmp_path / "server", signals=ignore_sigint).start()
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGINT)
        # Still serving; and the log, settled by that login, is after the signal's handling.
        assert "received SIGINT" not in server.settled_log(tmp_path / "c")
    finally:
        assert server.stop(signal.SIGTERM) == 0


# --- a database the server may not write ---------------------------------------------------------


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: read-only even for root, which chmod is not (these tests may run as root).
    Skips where the tool or the filesystem cannot do it."""
    try:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no chattr here to make a file read-only for every user")
    if done.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_is_refused_at_start(server: ServerProcess, tmp_path: Path) -> None:
    """It used to start, pass for healthy, and answer every login `Error (INTERNAL)`."""
    server.user_connection(tmp_path / "c", "seller").close()
    assert server.stop() == 0
    database = server.data_dir / "vitrine.db"
    with immutable(database):
        assert not os.access(database, os.W_OK)
        line = refusal(start_refused(server.data_dir))
        checked = run_check(server.data_dir)
    assert f"the database {database} cannot be written" in line, line
    # --check agrees with the start, so `--check && server.py` cannot pass and then fail
    assert checked.returncode == 1, checked.stdout
    assert line.split(": ", 1)[1] in checked.stdout and "NOT consistent" in checked.stdout
    assert "chattr -i" in line and "chmod u+w" in line, line
    server.restart()  # writable again: serves as before
    server.user_connection(tmp_path / "c2", "buyer").close()
