"""Start-up and signal fixes found by QA: a history that cannot be written, empty `VITRINE_*`
variables, a COLUMNS of 0 or 1, the trust question with stderr redirected, and SIGINT in a
script read from stdin. Real server, real client.py processes (at a pseudo-terminal where that
matters).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.limits import MAX_CENTS
from tests.servers import PYTHON, ROOT, ServerProcess, client_argv, run_client
from tests.test_images_server import jpeg, upload
from util import config as cfg

PASSWORD = "correct horse"
#: The longest price there is, "100000000.00": it must show whole at any COLUMNS.
LONGEST_PRICE = f"{MAX_CENTS // 100}.00"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("s19-server")).start()
    conn = process.user_connection(tmp_path_factory.mktemp("s19-admin"), "admin", PASSWORD)
    conn.close()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def priced_image(shop: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> int:
    conn = shop.user_connection(tmp_path_factory.mktemp("s19-seller"), "seller", PASSWORD)
    try:
        return upload(conn, jpeg(1901), title="Dearest", price_cents=MAX_CENTS, quantity=3).image_id
    finally:
        conn.close()


def pinned_config(shop: ServerProcess, config: Path) -> Path:
    """A config directory holding the server's pin, as a container would ship it."""
    config.mkdir(parents=True)
    done = run_client(shop, "help", config_dir=config)
    assert done.returncode == 0, done.stderr
    assert (config / "known_servers").is_file()
    return config


# --- 1. a history that cannot be written ---------------------------------------------------------


def test_history_that_is_a_directory_does_not_stop_the_client(
    shop: ServerProcess, tmp_path: Path
) -> None:
    config = pinned_config(shop, tmp_path / "client")
    (config / "history").unlink()
    (config / "history").mkdir()
    done = run_client(shop, "login admin", "whoami", config_dir=config, password=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith("admin (admin) on "), done.stdout
    notes = [line for line in done.stderr.splitlines() if "history" in line]
    assert notes == [
        f"vitrine: history will not be saved: cannot write {config / 'history'}: Is a directory."
    ], done.stderr


def _read_only_run(config: Path, argv: list[str]) -> subprocess.CompletedProcess[str] | str:
    """`argv` run with `config` bind-mounted read-only in a mount namespace of its own, or why
    that cannot be set up here (as root, chmod would not stop the writes)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "no unshare(1)"
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    namespace = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    probe = subprocess.run(
        [unshare, *namespace, "sh", "-c", mount, str(config), "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot make a read-only mount: {probe.stderr.strip()}"
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD}
    return subprocess.run(
        [unshare, *namespace, "sh", "-c", mount, str(config), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_read_only_config_directory_does_not_stop_the_client(
    shop: ServerProcess, tmp_path: Path
) -> None:
    """Pins shipped read-only in a container: known_servers and history exist, nothing can be
    written. The client used to end with `OSError: [Errno 30] Read-only file system`."""
    config = pinned_config(shop, tmp_path / "client")
    assert (config / "history").is_file()
    done = _read_only_run(config, client_argv(shop, config, "login admin", "whoami", pin=False))
    if isinstance(done, str):
        pytest.skip(done)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith("admin (admin) on "), done.stdout
    assert (
        f"vitrine: history will not be saved: cannot write {config / 'history'}: "
        "Read-only file system." in done.stderr.splitlines()
    ), done.stderr
    assert "Cannot write persistent history" not in done.stderr  # nor again at exit


# --- 2. empty VITRINE_* variables ----------------------------------------------------------------


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    monkeypatch.setenv("VITRINE_CONFIG_DIR", "")
    monkeypatch.setenv("VITRINE_CACHE_DIR", "")
    cfg.add_option(parser, "--config-dir", default="/the/default", help="where")
    assert parser.parse_args([]).config_dir == "/the/default"
    assert cfg.default_cache_dir() != Path("")
    monkeypatch.setenv("VITRINE_CONFIG_DIR", "/from/env")
    parser = argparse.ArgumentParser()
    cfg.add_option(parser, "--config-dir", default="/the/default", help="where")
    assert parser.parse_args([]).config_dir == "/from/env"


def test_empty_directory_variables_do_not_write_into_the_current_directory(
    shop: ServerProcess, priced_image: int, tmp_path: Path
) -> None:
    """`VITRINE_CONFIG_DIR=` and `VITRINE_CLIENT_DATA_DIR=` meant the current directory: pins,
    history and carts were written wherever the client was started. Empty is unset: the
    defaults (here under the XDG directories) are used."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    home = tmp_path / "home"
    env = {
        **os.environ,
        "VITRINE_CONFIG_DIR": "",
        "VITRINE_CLIENT_DATA_DIR": "",
        "VITRINE_TIMEOUT": "",
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "VITRINE_PASSWORD": PASSWORD,
    }
    commands = ["login admin", f"add_to_cart {priced_image}", "whoami"]
    argv = [PYTHON, str(ROOT / "client.py"), "--fingerprint", shop.fingerprint, *commands]
    done = subprocess.run(
        argv,
        cwd=cwd,
        env={**env, "VITRINE_SERVER": shop.address},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert list(cwd.iterdir()) == []
    assert (home / "config" / "vitrine" / "known_servers").is_file()
    assert (home / "config" / "vitrine" / "history").is_file()
    assert list((home / "data" / "vitrine" / "client").iterdir())  # the cart


def test_an_empty_server_variable_means_the_default_address(tmp_path: Path) -> None:
    """`VITRINE_SERVER=` was "'' has no host name"; now the default, 127.0.0.1:7878."""
    done = subprocess.run(
        [PYTHON, "-c", "from shell.cli import parse_args; print(parse_args([]).server)"],
        cwd=ROOT,
        env={**os.environ, "VITRINE_SERVER": "", "VITRINE_TIMEOUT": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "127.0.0.1:7878"


# --- 3. COLUMNS of 0, 1 or nonsense --------------------------------------------------------------


@pytest.mark.parametrize("columns", ["0", "-5", "wide"])
def test_a_columns_that_is_no_width_is_ignored(
    shop: ServerProcess, priced_image: int, tmp_path: Path, columns: str
) -> None:
    """rich took COLUMNS=0 literally and printed nothing at all, errors included."""
    done = run_client(
        shop,
        "login admin",
        f"show_image {priced_image} --no-images",
        "show_image 999999",
        config_dir=tmp_path,
        password=PASSWORD,
        extra_env={"COLUMNS": columns, "LINES": columns},
    )
    assert done.returncode == 1, done.stderr
    assert "Dearest" in done.stdout and LONGEST_PRICE in done.stdout, done.stdout
    assert "Error (NOT_FOUND)" in done.stderr, done.stderr


@pytest.mark.parametrize("columns", ["1", "12"])
def test_a_tiny_columns_still_shows_every_number(
    shop: ServerProcess, priced_image: int, tmp_path: Path, columns: str
) -> None:
    """COLUMNS=1 printed records of blank lines, with no id and no price."""
    done = run_client(
        shop,
        "login admin",
        "browse_by_tags --batch 1 --no-images",
        f"show_image {priced_image} --no-images",
        config_dir=tmp_path,
        password=PASSWORD,
        extra_env={"COLUMNS": columns},
    )
    assert done.returncode == 0, done.stderr
    words = [line.split() for line in done.stdout.splitlines()]
    assert ["id", str(priced_image)] in words, done.stdout
    assert ["price", LONGEST_PRICE] in words, done.stdout
    assert sum(1 for line in words if line and line[0] == "price") == 2, done.stdout


# --- 4. the trust question only where it can be seen ---------------------------------------------


def test_no_trust_question_when_stderr_is_redirected(shop: ServerProcess, tmp_path: Path) -> None:
    """At a terminal with `2>/dev/null` the question was invisible and the client waited; a
    blind `yes` pinned a fingerprint nobody saw. It is now refused as without a terminal."""
    pexpect = pytest.importorskip("pexpect")
    config = tmp_path / "new"
    errors = tmp_path / "errors"
    argv = [PYTHON, str(ROOT / "client.py"), "--server", shop.address, "--config-dir",
            str(config), "--data-dir", str(tmp_path / "data"), "login carol"]  # fmt: skip
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", 'exec "$@" 2>"$0"', str(errors), *argv],
        cwd=str(ROOT),
        env={**os.environ, "TERM": "dumb"},
        encoding="utf-8",
        timeout=30,
    )
    try:
        index = child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=30)
        if index == 1:  # waiting for an answer nobody can see the question for
            child.sendline("yes")
            child.expect(pexpect.EOF, timeout=30)
        child.close()
    finally:
        child.close(force=True)
    assert index == 0, "the client waited for an answer to a question it did not show"
    assert child.exitstatus == 2, (child.exitstatus, errors.read_text())
    assert "--trust-new-server" in errors.read_text(), errors.read_text()
    pins = config / "known_servers"
    assert not pins.exists() or shop.fingerprint not in pins.read_text()


def test_trust_question_still_asked_at_a_terminal(shop: ServerProcess, tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    config = tmp_path / "new"
    argv = [str(ROOT / "client.py"), "--server", shop.address, "--config-dir", str(config),
            "--data-dir", str(tmp_path / "data"), "help"]  # fmt: skip
    child = pexpect.spawn(
        PYTHON, argv, cwd=str(ROOT), env={**os.environ, "TERM": "dumb"}, encoding="utf-8"
    )
    try:
        child.expect("trust it and connect", timeout=30)
        child.sendline("yes")
        child.expect("vitrine ", timeout=30)
        child.sendline("quit")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert shop.fingerprint in (config / "known_servers").read_text()


# --- 5. SIGINT in a script read from stdin -------------------------------------------------------


def _interruptible() -> None:
    """A shell that starts a job in the background may hand it SIGINT ignored; `kill -INT`
    from a person's shell reaches it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _script(shop: ServerProcess, config: Path, out: Path, errors: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD, "COLUMNS": "200"}
    with out.open("wb") as stdout, errors.open("wb") as stderr:
        return subprocess.Popen(
            client_argv(shop, config),
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=_interruptible,
        )


def _wait_for(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, path.read_text(errors="replace")
        time.sleep(0.05)


def test_sigint_between_script_lines_ends_the_run(shop: ServerProcess, tmp_path: Path) -> None:
    """cmd2 wrote `^C` to stdout, then went on with the next line and exited 0."""
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors"
    client = _script(shop, tmp_path / "client", out, errors)
    assert client.stdin is not None
    try:
        client.stdin.write(b"login admin\n")
        client.stdin.flush()
        _wait_for(errors, "Logged in as admin")
        time.sleep(0.3)  # at the read of the next line
        client.send_signal(signal.SIGINT)
        time.sleep(0.3)
        with contextlib.suppress(BrokenPipeError):  # it may have ended already
            client.stdin.write(b"whoami\ntags --json\n")
            client.stdin.close()
        status = client.wait(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    assert out.read_bytes() == b"", out.read_bytes()
    assert status == 130, errors.read_text()
    assert "Interrupted while waiting for the next command" in errors.read_text()


def test_sigint_during_a_script_command_leaves_only_json_and_stops(
    shop: ServerProcess, tmp_path: Path
) -> None:
    """The interrupted add_image still accounts for every file (as after Ctrl-C), stdout holds
    nothing but its JSON lines (cmd2 added an empty one), and `whoami` after it is not run."""
    folder = tmp_path / "noise"
    folder.mkdir()
    rng = np.random.default_rng(19)
    for index in range(300):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"n{index:03d}.jpg", format="JPEG")
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors"
    client = _script(shop, tmp_path / "client", out, errors)
    assert client.stdin is not None
    try:
        client.stdin.write(f"login admin\nadd_image {folder} --json --window 1\nwhoami\n".encode())
        client.stdin.close()
        _wait_for(out, '"outcome"')
        client.send_signal(signal.SIGINT)
        status = client.wait(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    lines = out.read_text().splitlines()
    assert lines, errors.read_text()
    records = [json.loads(line) for line in lines]  # every line is JSON, and nothing else
    assert len(records) == 300, errors.read_text()
    assert any(record["outcome"] == "not_sent" for record in records), errors.read_text()
    assert status == 130, errors.read_text()
    assert "Interrupted. 300 files:" in errors.read_text(), errors.read_text()
    assert "Interrupted at `add_image" in errors.read_text(), errors.read_text()


def test_ctrl_c_at_the_prompt_with_stdout_redirected_leaves_stdout_empty(
    shop: ServerProcess, tmp_path: Path
) -> None:
    """A person typing with `> out`: cmd2 wrote `^C` into the file. At a terminal the shell
    goes on (the person is there), and says ^C on the terminal instead."""
    pexpect = pytest.importorskip("pexpect")
    out = tmp_path / "out"
    argv = client_argv(shop, tmp_path / "client")
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", 'exec "$@" >"$0"', str(out), *argv],
        cwd=str(ROOT),
        env={**os.environ, "TERM": "dumb", "VITRINE_PASSWORD": PASSWORD},
        encoding="utf-8",
        timeout=30,
        preexec_fn=_interruptible,
    )
    try:
        child.expect("Type help for commands")
        time.sleep(0.5)
        child.sendintr()
        child.expect(r"\^C")
        child.sendline("login admin")
        child.expect("Logged in as admin")
        child.sendline("quit")
        child.expect(pexpect.EOF)
        child.close()
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert out.read_text() == "", out.read_text()
