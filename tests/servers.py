"""Real Vitrine processes for tests: a `server.py` on a loopback port, and `client.py` runs.

Nothing here is a stand-in: the server is the real program with real TLS and a real SQLite file
in a temporary directory, and the client is the real shell driven as a process or, for protocol
tests, the real `ServerConnection` class.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from protocol.errors import VitrineError
from protocol.messages import CreateUser, Login, Session
from protocol.pinning import KnownServers
from shell.connection import ServerConnection, TrustPolicy

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LISTENING = re.compile(r"listening on (\S+):(\d+)$")
FINGERPRINT = re.compile(r"(SHA256:[A-Za-z0-9+/=]+)")
START_TIMEOUT_S = 120.0
RESTART_ATTEMPTS = 5


def default_sigint() -> None:
    """For a child: SIGINT back to its default. A test run started with SIGINT ignored (`make
    test &` from a script, as CI may) passes the ignore on, and a server keeps an ignored SIGINT
    ignored on purpose (service.app.serve), so a test of Ctrl-C would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class ServerProcess:
    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    fingerprint: str = ""
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    #: Run in the child before the server starts: the signal dispositions it inherits.
    signals: Callable[[], None] = default_sigint
    _drains: list[threading.Thread] = field(default_factory=list, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        """Start the server and read its announced address and fingerprint from stdout.

        The log has its own pipe: native libraries write their lines in pieces from other
        threads, so a merged pipe can glue a log line onto the announced port."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        port_args = ["--port", str(self.port)]
        self.process = subprocess.Popen(
            [
                PYTHON,
                str(ROOT / "server.py"),
                "--data-dir",
                str(self.data_dir),
                *port_args,
                *self.extra_args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self.signals,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._drains = [self._drain_in_background(self.process.stderr)]
        deadline = time.monotonic() + START_TIMEOUT_S
        port = fingerprint = None
        while time.monotonic() < deadline and (port is None or fingerprint is None):
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(30)
                self._join_drains()
                raise RuntimeError("server exited during start-up:\n" + self.log())
            self.output.append(line)
            if match := LISTENING.search(line.rstrip("\n")):
                self.host, port = match.group(1), int(match.group(2))
            if "fingerprint" in line.lower() and (match := FINGERPRINT.search(line)):
                fingerprint = match.group(1)
        if port is None or fingerprint is None:
            raise RuntimeError("server did not announce itself:\n" + self.log())
        self.port, self.fingerprint = port, fingerprint
        self._drains.append(self._drain_in_background(self.process.stdout))
        return self

    def _drain_in_background(self, stream: IO[str]) -> threading.Thread:
        sink = self.output  # this run's log: restart() starts a new list for the next run

        def drain() -> None:
            for line in stream:
                sink.append(line)

        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
        return thread

    def _join_drains(self) -> None:
        """Wait until every line the exited process wrote is in the log."""
        for thread in self._drains:
            thread.join(10)

    def log(self) -> str:
        return "".join(self.output)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text`: the server writes log lines from a background thread,
        so a line can land just after the answer that it describes."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s:\n{log}"
            time.sleep(0.05)
        return log

    def settled_log(self, config_dir: Path) -> str:
        """The log once the lines about every request answered so far are in it, without a
        fixed sleep: a login under a fresh name is logged after them, by the same thread."""
        name = f"settle{time.monotonic_ns()}"
        self.user_connection(config_dir, name).close()
        return self.wait_for_log(f"user={name} ")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._join_drains()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> ServerProcess:
        """Start again on the same port, so pinned clients and resume tokens still apply. The
        port was free a moment ago, but another program may take it meanwhile: try a few
        times before giving up."""
        for _ in range(RESTART_ATTEMPTS - 1):
            self.output = []
            try:
                return self.start()
            except RuntimeError:
                if "cannot listen" not in self.log():
                    raise
                time.sleep(0.5)
        self.output = []
        return self.start()

    # --- Python-level clients --------------------------------------------------------------------

    def connect(self, config_dir: Path) -> ServerConnection:
        trust = TrustPolicy(KnownServers(config_dir / "known_servers"), expected=self.fingerprint)
        connection = ServerConnection(self.host, self.port, trust)
        connection.connect()
        return connection

    def user_connection(
        self, config_dir: Path, name: str, password: str = "correct horse"
    ) -> ServerConnection:
        """A connection logged in as `name`, creating the account if it does not exist."""
        connection = self.connect(config_dir)
        with contextlib.suppress(VitrineError):  # it may exist already; the login decides
            connection.call(CreateUser(id=0, name=name, password=password))
        connection.call(Login(id=0, name=name, password=password), Session)
        return connection


def client_argv(
    server: ServerProcess,
    config_dir: Path,
    *more: str,
    data_dir: Path | None = None,
    pin: bool = True,
    program: Path = ROOT / "client.py",
) -> list[str]:
    """The command line of `client.py` against `server`, with its own config and data
    directories (so no test reads or writes the user's), pinned to the server's fingerprint
    unless `pin` is False; `more` are further flags and commands. `program` is for a wrapper
    that runs client.py inside a changed process."""
    pinning = ["--fingerprint", server.fingerprint] if pin else []
    return [PYTHON, str(program), "--server", server.address, "--config-dir", str(config_dir),
            "--data-dir", str(data_dir or config_dir / "data"), *pinning, *more]  # fmt: skip


def run_client(
    server: ServerProcess,
    *commands: str,
    config_dir: Path,
    data_dir: Path | None = None,
    password: str | None = None,
    extra_env: dict[str, str] | None = None,
    flags: tuple[str, ...] = (),
    timeout: float = 120.0,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `client.py` once with commands as arguments, the way a script would; `stdin` is
    piped in when given (a script's own input, or commands with no arguments)."""
    env = {**os.environ, **(extra_env or {})}
    env.pop("VITRINE_PASSWORD", None)
    if password is not None:
        env["VITRINE_PASSWORD"] = password
    return subprocess.run(
        client_argv(server, config_dir, *flags, *commands, data_dir=data_dir),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **({"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}),
    )


def create_users(server: ServerProcess, home: Path, names: Iterable[str], password: str) -> None:
    """Accounts made the way a person makes them, through client.py; the first is the admin
    on a fresh server."""
    for name in names:
        done = run_client(server, f"create_user {name}", config_dir=home, password=password)
        assert done.returncode == 0, done.stderr


class LoggedInShell:
    """`client.py` runs as one user: each call logs in, runs the commands, and returns
    (exit status, stdout, stderr), failing the test on any traceback."""

    def __init__(
        self,
        server: ServerProcess,
        name: str,
        config_dir: Path,
        password: str = "correct horse battery",
    ) -> None:
        self.server, self.name, self.config_dir, self.password = server, name, config_dir, password

    def __call__(self, *commands: str) -> tuple[int, str, str]:
        done = run_client(
            self.server,
            f"login {self.name}",
            *commands,
            config_dir=self.config_dir,
            password=self.password,
            extra_env={"COLUMNS": "200"},
        )
        assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
        return done.returncode, done.stdout, done.stderr


def json_lines(out: str) -> list[dict]:
    """The JSON objects a `--json` listing printed, one per line."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# --- what a stopped server has not read yet ------------------------------------------------------


def _tcp_sockets() -> list[tuple[int, int, int, int]]:
    """(local port, remote port, bytes in the receive queue, inode) of every TCP socket."""
    sockets = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                ports = [int(address.rsplit(":", 1)[1], 16) for address in fields[1:3]]
                received = int(fields[4].split(":")[1], 16)
                sockets.append((ports[0], ports[1], received, int(fields[9])))
    return sockets


def unread_by_server(child: Any, server: ServerProcess) -> int:
    """How many bytes the shell sent that the (stopped) server has not read: the server's end
    of the shell's connection, found through the shell's own socket."""
    links = []
    for fd in Path(f"/proc/{child.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the directory was listed
            links.append(os.readlink(fd))
    inodes = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    sockets = _tcp_sockets()
    shell_ports = {
        local
        for local, remote, _, inode in sockets
        if remote == server.port and str(inode) in inodes
    }
    assert len(shell_ports) == 1, (shell_ports, sockets)
    (shell_port,) = shell_ports
    return sum(
        received
        for local, remote, received, _ in sockets
        if local == server.port and remote == shell_port
    )
