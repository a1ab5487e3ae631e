"""client.py with its output piped or closed, and script lines a person did not expect to matter.

`client.py "login alice" "tags --json" | jq` typed at a terminal has the keyboard on stdin and
a pipe on stdout: questions (password, trust, checkout) must reach the person, on the terminal
or stderr, and stdout must hold nothing but the commands' output. When the reader of stdout
goes (`| head -1`), nothing more may run. And a script line that is not UTF-8, or starts with a
byte-order mark, gets a sentence, not a traceback. Everything runs against a real server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from protocol.catalog import DeleteImage, GetImages, Images, UpdateImage
from shell.connection import ServerConnection
from tests.servers import PYTHON, ROOT, ServerProcess, client_argv, create_users, run_client
from tests.test_images_server import jpeg, upload

PASSWORD = "correct horse battery"
_seeds = iter(range(910_000, 990_000))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("piped-server")).start()
    home = tmp_path_factory.mktemp("piped-accounts")
    create_users(process, home, ("admin", "alice", "bob"), PASSWORD)
    yield process
    process.stop()


@pytest.fixture
def alice(server: ServerProcess, tmp_path: Path) -> Iterator[ServerConnection]:
    """The seller, over the wire: setting up the catalogue is tested elsewhere."""
    conn = server.user_connection(tmp_path / "alice", "alice", PASSWORD)
    yield conn
    conn.close()


def item(alice: ServerConnection, price: int = 500, stock: int = 5, title: str = "Thing") -> int:
    return upload(
        alice, jpeg(next(_seeds)), title=title, price_cents=price, quantity=stock
    ).image_id


def stock(alice: ServerConnection, image_id: int) -> int:
    (found,) = alice.call(GetImages(id=0, image_ids=[image_id]), Images).items
    return found.quantity


def at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_piped(
    server: ServerProcess,
    home: Path,
    *commands: str,
    out: Path,
    password: bool = False,
    pin: bool = True,
) -> pexpect.spawn:
    """client.py with the keyboard a terminal and stdout a file, as `client.py ... > out` (or
    `| jq`) typed at a prompt: stdin and stderr are the terminal."""
    env = {k: v for k, v in os.environ.items() if k != "VITRINE_PASSWORD"}
    env["TERM"] = "dumb"
    if password:
        env["VITRINE_PASSWORD"] = PASSWORD
    argv = client_argv(server, home, *commands, pin=pin)
    return pexpect.spawn(
        "/bin/sh",
        ["-c", 'exec "$@" > "$0"', str(out), *argv],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
        preexec_fn=at_a_terminal,
    )


def finished(child: pexpect.spawn) -> int:
    """The exit status, once the client has ended by itself (a timeout here: it hung)."""
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return child.exitstatus


# --- 1. keyboard a terminal, stdout piped ---------------------------------------------------------


def test_the_password_is_asked_hidden_on_the_terminal_when_stdout_is_piped(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    child = spawn_piped(server, tmp_path, "login alice", "whoami", out=out)
    try:
        child.expect("Password: ")
        child.sendline(PASSWORD)
        assert finished(child) == 0, child.before
    finally:
        child.close(force=True)
    assert PASSWORD not in child.before, child.before  # not echoed
    assert out.read_text().startswith("alice on "), out.read_text()
    assert "Password" not in out.read_text()


def test_argument_commands_end_the_run_when_stdout_is_piped(
    server: ServerProcess, tmp_path: Path
) -> None:
    """At a terminal with stdout a pipe, a shell left open after the arguments shows no prompt
    (the prompt would go into the pipe) and looks hung: the arguments are the whole run."""
    out = tmp_path / "out"
    child = spawn_piped(server, tmp_path, "login alice", "tags --json", out=out, password=True)
    try:
        assert finished(child) == 0, child.before
    finally:
        child.close(force=True)
    for line in out.read_text().splitlines():
        assert "tag" in json.loads(line), out.read_text()


def test_the_trust_question_is_asked_on_stderr_not_into_the_pipe(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    child = spawn_piped(
        server, tmp_path, "login alice", "whoami", out=out, password=True, pin=False
    )
    try:
        child.expect(r"Are you sure you want to trust it and connect \(yes/no\)\? ")
        child.sendline("yes")
        assert finished(child) == 0, child.before
    finally:
        child.close(force=True)
    assert out.read_text().splitlines() == [f"alice on {server.address}"], out.read_text()


def test_checkout_asks_on_stderr_and_a_cancel_under_json_prints_nothing_on_stdout(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path
) -> None:
    thing = item(alice, 700, 3, title="Piped")
    done = run_client(server, "login bob", "clear_cart", f"add_to_cart {thing}",
                      config_dir=tmp_path, password=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    child = spawn_piped(
        server, tmp_path, "login bob", "checkout --json --no-images", out=out, password=True
    )
    try:
        child.expect(r"Buy this 1 item for 7\.00\? \[y/N\] ")
        child.sendline("n")
        child.expect("Checkout cancelled; your cart is unchanged.")
        finished(child)
    finally:
        child.close(force=True)
    assert out.read_text() == ""
    assert stock(alice, thing) == 3


# --- 2. lines that are not UTF-8, and a byte-order mark -------------------------------------------


def test_an_argument_that_is_not_utf8_is_refused_with_a_sentence(
    server: ServerProcess, tmp_path: Path
) -> None:
    # "caf\xe9" in Latin-1, as `$(printf 'caf\xe9')` gives it: Python holds it as "\udce9"
    done = run_client(server, "login alice", "update_image 1 --title caf\udce9", "whoami",
                      config_dir=tmp_path, password=PASSWORD)  # fmt: skip
    assert done.returncode == 1, done
    assert "This line holds bytes that are not UTF-8" in done.stderr, done.stderr
    assert "update_image 1 --title caf\\xe9" in done.stderr, done.stderr
    assert "Stopped at `update_image 1 --title caf\\xe9`" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stdout == ""  # whoami was not run
    again = run_client(server, "login alice", "history -a", config_dir=tmp_path, password=PASSWORD)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again  # history readable


def test_a_stdin_script_line_that_is_not_utf8_is_refused_with_a_sentence(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD}
    done = subprocess.run(
        client_argv(server, tmp_path),
        input=b"login alice\nupdate_image 1 --title caf\xe9\nwhoami\n",
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "bytes that are not UTF-8" in err and "caf\\xe9" in err, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert done.stdout == b""


def test_a_stdin_script_may_start_with_a_byte_order_mark(
    server: ServerProcess, tmp_path: Path
) -> None:
    done = run_client(server, config_dir=tmp_path, password=PASSWORD,
                      stdin="\ufefflogin alice\nwhoami\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("alice on "), done


# --- 3. an empty page prints no line --------------------------------------------------------------


def test_an_empty_page_of_sales_or_orders_prints_no_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    for command in ("sales --json --before 1", "orders --json --before 1", "sales --json"):
        done = run_client(server, "login admin", command, config_dir=tmp_path, password=PASSWORD)
        assert done.returncode == 0, done
        assert done.stdout == "", (command, done.stdout)


# --- 4. the reader of stdout goes away ------------------------------------------------------------


def reader_leaves_after_one_line(
    server: ServerProcess, home: Path, before: list[str], after: list[str]
) -> tuple[int, str]:
    """Commands piped in: `before`, then the reader of stdout takes one line and closes it
    (as `| head -1` does), then `after`. Returns the exit status and stderr."""
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD, "COLUMNS": "160"}
    with subprocess.Popen(
        client_argv(server, home), cwd=ROOT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as shell:  # fmt: skip
        assert shell.stdin is not None and shell.stdout is not None and shell.stderr is not None
        shell.stdin.write("".join(f"{line}\n" for line in before))
        shell.stdin.flush()
        assert shell.stdout.readline()
        shell.stdout.close()
        shell.stdin.write("".join(f"{line}\n" for line in after))
        shell.stdin.close()
        err = shell.stderr.read()
        return shell.wait(timeout=60), err


@pytest.mark.parametrize("listing", ["view_cart --no-images", "view_cart --json"])
def test_once_the_reader_goes_nothing_more_runs_and_the_status_is_sigpipes(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path, listing: str
) -> None:
    thing = item(alice, 300, 4, title="Unbought")
    done = run_client(server, "login bob", "clear_cart", f"add_to_cart {thing}",
                      config_dir=tmp_path, password=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done.stderr
    code, err = reader_leaves_after_one_line(
        server, tmp_path, ["login bob", listing], ["checkout --yes --no-images"]
    )
    assert code == 141, err
    assert stock(alice, thing) == 4  # the checkout did not run
    assert "Broken pipe" not in err and "Stopped at" not in err and "Traceback" not in err, err


# --- 5. checkout --yes names every line that stops it ---------------------------------------------


def test_checkout_yes_names_every_blocking_line_at_once(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path
) -> None:
    repriced = item(alice, 1000, 5, title="Repriced")
    renamed = item(alice, 200, 5, title="Renamed")
    deleted = item(alice, 300, 5, title="Deleted")
    done = run_client(server, "login bob", "clear_cart",
                      *(f"add_to_cart {i}" for i in (repriced, renamed, deleted)),
                      config_dir=tmp_path, password=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done.stderr
    alice.call(UpdateImage(id=0, image_id=repriced, price_cents=1100))
    alice.call(UpdateImage(id=0, image_id=renamed, title="Empty box"))
    alice.call(DeleteImage(id=0, image_id=deleted))
    done = run_client(server, "login bob", "checkout --yes --json", config_dir=tmp_path,
                      password=PASSWORD)  # fmt: skip
    assert done.returncode == 1 and done.stdout == "", done
    assert f"#{repriced} Repriced: price changed: was 10.00, now 11.00" in done.stderr, done
    assert f"#{renamed} Empty box: title changed: was 'Renamed'" in done.stderr, done
    assert f"#{deleted} Deleted: gone" in done.stderr, done
    assert f"Hint: update_cart {repriced} QTY accepts the new price" in done.stderr
    assert f"Hint: remove_from_cart {deleted} takes the line out." in done.stderr
    assert stock(alice, repriced) == 5


# --- 6. small things ------------------------------------------------------------------------------


def test_an_ignored_file_has_a_code(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "shoot"
    folder.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 60)).save(folder / "a.jpg", "JPEG")
    (folder / "readme.txt").write_text("notes")
    done = run_client(server, "login alice", f"add_image {folder} --json", config_dir=tmp_path,
                      password=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done
    rows = {Path(row["path"]).name: row for row in map(json.loads, done.stdout.splitlines())}
    assert rows["readme.txt"]["outcome"] == "ignored", rows
    assert rows["readme.txt"]["code"] == "not_an_image_name", rows


def test_a_contact_sheet_of_one_image_is_said_in_the_singular(
    server: ServerProcess, alice: ServerConnection, tmp_path: Path
) -> None:
    tag = f"single{next(_seeds)}"
    upload(alice, jpeg(next(_seeds)), title="Alone", tags=[tag])
    sheet = tmp_path / "sheet.png"
    done = run_client(server, "login bob", f"browse_by_tags {tag} --sheet {sheet}",
                      config_dir=tmp_path, password=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done
    assert f"Wrote a contact sheet of 1 image to {sheet}" in done.stdout + done.stderr, done


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("VITRINE_TIMEOUT", "soon", "VITRINE_TIMEOUT: 'soon' is not a number of seconds"),
        ("VITRINE_TIMEOUT", "0", "VITRINE_TIMEOUT: the timeout must be above 0 s"),
        ("VITRINE_SERVER", ":7878", "bad VITRINE_SERVER: ':7878' has no host name"),
    ],
)
def test_a_bad_environment_value_is_said_to_come_from_the_variable(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    env = {**os.environ, variable: value}
    argv = [PYTHON, str(ROOT / "client.py"), "--config-dir", str(tmp_path), "whoami"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2, done
    assert said in done.stderr, done.stderr
    assert "argument --timeout" not in done.stderr and "bad --server" not in done.stderr


def test_a_bad_flag_is_still_named_as_the_flag(tmp_path: Path) -> None:
    env = {**os.environ, "VITRINE_TIMEOUT": "30"}
    argv = [PYTHON, str(ROOT / "client.py"), "--config-dir", str(tmp_path), "--timeout", "x",
            "--server", ":1", "whoami"]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2 and "argument --timeout: 'x'" in done.stderr, done.stderr
