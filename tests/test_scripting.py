"""client.py driven by scripts: commands as arguments or piped in, stdout kept for data.

What a bash script around the client needs, through a real server: a failed command stops the
run before anything after it happens (a mistyped `update_cart` must not be followed by the
`checkout --yes` meant for the corrected cart); commands given as arguments are the whole
script, so the client never reads its caller's stdin (a `while read` loop around it keeps its
lines); and confirmations go to stderr, so stdout holds only what `--json` promises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from shell.cli import parse_args
from tests.servers import ROOT, ServerProcess, create_users, run_client
from util.money import format_cents

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("scripting-server")).start()
    create_users(process, tmp_path_factory.mktemp("accounts"), ("admin", "alice", "bob"), PASSWORD)
    yield process
    process.stop()


def client(
    server: ServerProcess, home: Path, *commands: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """client.py as a script runs it: arguments, and stdin a pipe (empty unless given)."""
    done = run_client(
        server,
        *commands,
        config_dir=home,
        password=PASSWORD,
        extra_env={"COLUMNS": "160"},
        stdin=stdin or "",
    )
    assert "Traceback" not in done.stdout + done.stderr, done
    return done


def started_client(
    server: ServerProcess, home: Path, *more: str, stdin: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """client.py started by hand, to stop its server midway or close its stdout."""
    env = {**os.environ, "VITRINE_PASSWORD": PASSWORD}
    return subprocess.Popen(
        client_args(server, home, *more), cwd=ROOT, env=env, stdin=stdin,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def client_args(server: ServerProcess, home: Path, *more: str) -> list[str]:
    """client.py's command line for `server`, pinned, with `home` as its config directory."""
    address, pin = server.address, server.fingerprint
    return [sys.executable, str(ROOT / "client.py"), "--server", address, "--config-dir",
            str(home), "--fingerprint", pin, *more]  # fmt: skip


def upload(server: ServerProcess, home: Path, seed: int, *flags: str) -> int:
    path = home / f"photo-{seed}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (seed % 256, (seed * 7) % 256, 90)).save(path, "JPEG")
    done = client(server, home, "login alice", f"add_image {path} --json " + " ".join(flags))
    assert done.returncode == 0, done
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    return int(line["id"])


def image_exists(server: ServerProcess, home: Path, image_id: int) -> bool:
    return client(server, home, "login alice", f"show_image {image_id} --json").returncode == 0


def test_a_failed_argument_command_stops_the_rest(server: ServerProcess, tmp_path: Path) -> None:
    """The reviewer's case: `update_cart 12 1x` failed, the `checkout --yes` after it still
    ran and bought the three that were in the cart instead of the one meant."""
    image = upload(server, tmp_path / "alice", 1, "--price 10 --quantity 5")
    bob = tmp_path / "bob"
    added = client(server, bob, "login bob", f"add_to_cart {image} 3")
    assert added.returncode == 0, added
    done = client(server, bob, "login bob", f"update_cart {image} 1x", "checkout --yes --json")
    assert done.returncode == 1, done
    assert done.stdout == "", done
    assert f"Stopped at `update_cart {image} 1x`, which failed: 1 command after it not run." in (
        done.stderr
    )
    orders = client(server, bob, "login bob", "orders --json")
    assert orders.returncode == 0 and orders.stdout == "", orders
    cart = client(server, bob, "login bob", "view_cart --json")
    assert json.loads(cart.stdout.splitlines()[0])["quantity"] == 3, cart


def test_a_quit_after_success_still_exits_zero(server: ServerProcess, tmp_path: Path) -> None:
    done = client(server, tmp_path, "login bob", "whoami", "quit")
    assert done.returncode == 0, done
    assert done.stdout.startswith("bob on "), done


def test_argument_commands_never_read_stdin(server: ServerProcess, tmp_path: Path) -> None:
    """`ls | while read f; do client.py ... ; done`: the loop's lines are not commands."""
    image = upload(server, tmp_path / "alice", 2)
    done = client(
        server, tmp_path / "alice", "login alice", "whoami", stdin=f"delete_image {image}\n"
    )
    assert done.returncode == 0, done
    assert "Deleted" not in done.stdout + done.stderr, done
    assert image_exists(server, tmp_path / "alice", image)


def test_a_piped_script_stops_at_its_first_failure(server: ServerProcess, tmp_path: Path) -> None:
    image = upload(server, tmp_path / "alice", 3)
    script = f"login alice\nsearch_by_color nosuch\ndelete_image {image}\n"
    done = client(server, tmp_path / "alice", stdin=script)
    assert done.returncode == 1, done
    assert "Stopped at `search_by_color nosuch`, which failed" in done.stderr, done
    assert image_exists(server, tmp_path / "alice", image)


def test_confirmations_leave_stdout_to_the_data(server: ServerProcess, tmp_path: Path) -> None:
    """Mixed with `--json` commands in one run, "Added 1 x ..." on stdout broke `jq`."""
    alice = tmp_path / "alice"
    image = upload(server, alice, 4, "--price 8 --quantity 4")
    spare = upload(server, alice, 5)
    bob = tmp_path / "bob"
    done = client(
        server,
        bob,
        "login bob",
        "clear_cart",
        f"add_to_cart {image}",
        f"update_cart {image} 2",
        f"remove_from_cart {image}",
        "clear_cart",
    )
    assert done.returncode == 0, done
    assert done.stdout == "", done
    for said in ("already empty", "Added 1 x", "The cart now holds 2 x", "Removed"):
        assert said in done.stderr, (said, done)

    updated = client(server, alice, "login alice", f"update_image {image} --price 5 --json")
    assert updated.returncode == 0, updated
    (line,) = [json.loads(text) for text in updated.stdout.splitlines()]
    assert (line["id"], line["price"]) == (image, format_cents(500)), updated
    assert f"Updated #{image}." in updated.stderr

    deleted = client(server, alice, "login alice", f"delete_image {spare}", "tags --json")
    assert deleted.returncode == 0, deleted
    assert f"Deleted #{spare}." in deleted.stderr
    assert all(json.loads(text) for text in deleted.stdout.splitlines()), deleted


def test_the_client_data_dir_has_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """VITRINE_DATA_DIR is the server's: exported for it, it must not move the carts."""
    monkeypatch.setenv("VITRINE_DATA_DIR", "/srv/vitrine")
    monkeypatch.delenv("VITRINE_CLIENT_DATA_DIR", raising=False)
    assert parse_args([]).data_dir != Path("/srv/vitrine")
    monkeypatch.setenv("VITRINE_CLIENT_DATA_DIR", "/home/shop/carts")
    assert parse_args([]).data_dir == Path("/home/shop/carts")


def test_a_malformed_fingerprint_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It used to be reported only as a mismatch with the server's ("not the expected ...")."""
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--fingerprint", "garbage"])
    assert stopped.value.code == 2
    assert (
        "'garbage' is not a fingerprint: it is SHA256: and 43 characters" in capsys.readouterr().err
    )
    good = "SHA256:" + "Ab+/" * 10 + "xyz"
    assert parse_args(["--fingerprint", good]).fingerprint == good


def test_a_silent_server_fails_the_command_after_the_timeout(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A stopped (SIGSTOP) server accepts nothing and answers nothing; a cron job's client
    used to wait for it forever. Now the waiting command fails and the script ends."""
    with started_client(server, tmp_path, "--timeout", "2") as shell:
        assert shell.stdin is not None and shell.stderr is not None
        shell.stdin.write("login bob\n")
        shell.stdin.flush()
        for line in shell.stderr:  # ends at EOF if the client quits before logging in
            if "Logged in as bob" in line:
                break
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            shell.stdin.write("tags --json\nwhoami\n")
            shell.stdin.close()
            code = shell.wait(timeout=60)
            err = shell.stderr.read()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    assert code == 1, err
    assert "the server did not answer for 2 s" in err, err
    assert "Stopped at `tags --json`" in err, err


def test_connecting_to_a_silent_server_also_gives_up_after_the_timeout(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Connecting had a fixed limit of 10 s, whatever --timeout said."""
    args = client_args(server, tmp_path, "--timeout", "2", "whoami")
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert done.returncode == 2, done.stderr
    assert "did not answer within 2 s" in done.stderr, done.stderr


def test_quit_among_the_arguments_says_what_it_left_unrun(
    server: ServerProcess, tmp_path: Path
) -> None:
    done = client(server, tmp_path, "login alice", "quit", "tags --json", "whoami")
    assert done.returncode == 0, done
    assert "Quit at `quit`: 2 commands after it not run." in done.stderr, done
    assert done.stdout == ""


def test_asking_a_command_for_help_succeeds(server: ServerProcess, tmp_path: Path) -> None:
    """cmd2 reports `-h` like a bad argument; a script that asks for help did nothing wrong."""
    done = client(server, tmp_path, "login alice", "tags -h", "search_by_color --help", "whoami")
    assert done.returncode == 0, done
    assert "--json" in done.stdout and "--tolerance" in done.stdout, done
    assert "alice on " in done.stdout, done  # the rest ran
    refused = client(server, tmp_path, "login alice", "search_by_color red --batch x -h")
    assert refused.returncode == 1, refused  # an error before the -h is still one


def test_a_failing_built_in_fails_the_script(server: ServerProcess, tmp_path: Path) -> None:
    done = client(server, tmp_path, "login alice", f"run_script {tmp_path / 'none.txt'}", "whoami")
    assert done.returncode == 1 and "Stopped at `run_script" in done.stderr, done


def test_a_reader_that_goes_away_ends_the_client_quietly(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`client.py ... --json | head -1`: the output's reader closing its end used to print
    "[Errno 32] Broken pipe" (a ConnectionError, reported as if the server had failed). The
    status is SIGPIPE's, 141, as for a Unix tool killed by it."""
    upload(server, tmp_path, 31, "--tags pipe-e2e")
    args = ("login alice", "tags --json")
    with started_client(server, tmp_path, *args, stdin=subprocess.DEVNULL) as shell:
        assert shell.stdout is not None and shell.stderr is not None
        shell.stdout.close()  # gone before the first line is written
        err = shell.stderr.read()
        code = shell.wait(timeout=60)
    assert code == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Stopped at" not in err, err


def test_a_re_upload_with_new_flags_says_the_stored_values_stay(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Present files are answered with their existing id and nothing else changes: a re-run
    with a new --price must not read as if the price had been set."""
    alice = tmp_path / "alice"
    upload(server, alice, 6, "--price 3")
    again = client(
        server, alice, "login alice", f"add_image {alice / 'photo-6.jpg'} --price 9 --json"
    )
    assert again.returncode == 0, again
    assert json.loads(again.stdout)["outcome"] == "present", again
    assert "1 file already present: it keeps the title, description, tags, price" in again.stderr
    plain = client(server, alice, "login alice", f"add_image {alice / 'photo-6.jpg'}")
    assert "already present:" not in plain.stdout + plain.stderr, plain


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("browse_by_tags -hat", "browse_by_tags has no option -hat, and a tag starts with"),
        ("search_by_color -h5", "search_by_color has no option -h5; to search for that colour"),
        ("browse_by_tags hat,straw", "takes tags separated by spaces: browse_by_tags hat straw"),
        ("browse_by_tags " + "a" * 65, "at most 64 characters"),
        ("browse_by_tags " + " ".join(f"t{n}" for n in range(65)), "at most 64 tags, not 65"),
    ],
)
def test_finding_mistakes_get_a_sentence_not_a_protocol_error(
    server: ServerProcess, tmp_path: Path, command: str, said: str
) -> None:
    """What QA typed: argparse's "ignored explicit argument", the server's bare "Invalid tag"
    and the decoder's "Invalid message: Expected `str` of length <= 64" told them nothing."""
    done = client(server, tmp_path, "login bob", command)
    assert done.returncode == 1, done
    assert said in " ".join(done.stderr.split()), done
    assert "ignored explicit" not in done.stderr and "Invalid message" not in done.stderr, done


def test_prices_with_zeros_past_the_cents_and_minus_zero(
    server: ServerProcess, tmp_path: Path
) -> None:
    home = tmp_path / "alice"
    image = upload(server, home, 11, "--price 3")
    updated = client(server, home, "login alice", f"update_image {image} --price 12.500 --json")
    assert updated.returncode == 0, updated
    assert json.loads(updated.stdout)["price"] == "12.50", updated
    found = client(
        server, home, "login alice",
        f"search_by_image --id {image} --min-price 0.000 --max-price -0 --json",
    )  # fmt: skip
    assert found.returncode == 0, found
    assert "negative" not in found.stderr and "decimals" not in found.stderr, found


def test_redirections_pipes_and_semicolons_are_text_not_shell(
    server: ServerProcess, tmp_path: Path
) -> None:
    """cmd2 wrote `update_image 80 --title Sizes>important.txt` over a local file, ran what
    followed a `|` in bash (and went on with exit 0), and ended a command at `;`."""
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "important.txt").write_text("keep me")
    image = upload(server, tmp_path / "alice", 5)
    for line in (
        f"update_image {image} --title Sizes>important.txt",
        f"update_image {image} --title Sizes>>important.txt",
        f"search x|touch {work / 'PWNED'}",
    ):
        done = subprocess.run(
            client_args(server, tmp_path / "alice", "login alice", line, "whoami"),
            cwd=work,  # where a redirection would write
            env={**os.environ, "VITRINE_PASSWORD": PASSWORD},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, (line, done)
        assert "has no special meaning in Vitrine" in done.stderr and "Stopped at" in done.stderr
        assert "alice on" not in done.stdout, done  # the script stopped there
    assert (work / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in work.iterdir()) == ["important.txt"]  # no PWNED, no 10
    quoted = client(
        server,
        tmp_path / "alice",
        "login alice",
        f"update_image {image} --title 'Sizes>XL | 50%; off' --price 6;0 --json",
    )
    assert quoted.returncode == 1, quoted  # `6;0` is one word now, and not a price
    done = client(
        server,
        tmp_path / "alice",
        "login alice",
        f"update_image {image} --title 'Sizes>XL | 50%; off' --json",
    )
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["title"] == "Sizes>XL | 50%; off"


@pytest.mark.parametrize(
    ("password", "said"),
    [
        ("", "a password cannot be empty"),
        ("x" * 1025, "A password has at most 1024 characters"),
    ],
    ids=["empty", "too-long"],
)
def test_a_password_the_wire_would_refuse_gets_a_sentence(
    server: ServerProcess, tmp_path: Path, password: str, said: str
) -> None:
    """The schema's "Expected `str` of length >= 1 - at `$.password`" meant nothing to anyone."""
    for command in ("login alice", "create_user newcomer"):
        done = run_client(server, command, config_dir=tmp_path, password=password)
        assert done.returncode == 1, done
        assert said in done.stderr and "Invalid message" not in done.stderr, done


def test_a_new_password_is_checked_before_anything_is_sent(
    server: ServerProcess, tmp_path: Path
) -> None:
    asked = server.log().count("request=CreateUser")
    short = run_client(server, "create_user shorty", config_dir=tmp_path, password="seven77")
    assert short.returncode == 1 and "at least 8 characters" in short.stderr, short
    assert server.log().count("request=CreateUser") == asked  # refused before sending
    same = run_client(
        server,
        "login alice",
        "change_password",
        config_dir=tmp_path,
        password=PASSWORD,
        extra_env={"VITRINE_NEW_PASSWORD": PASSWORD},
    )
    assert same.returncode == 1 and "is the current one" in same.stderr, same
    assert client(server, tmp_path, "login alice", "whoami").returncode == 0  # unchanged


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ("--tags 'summer,x;y'", "Invalid tag 'x;y'"),
        ("--title 'a\x1bb'", "The title contains control characters"),
        ("--description 'x\x07'", "The description contains control characters"),
    ],
    ids=["tag", "title", "description"],
)
def test_a_bulk_upload_with_text_the_server_refuses_sends_nothing(
    server: ServerProcess, tmp_path: Path, flags: str, said: str
) -> None:
    """Each of 400 files was sent and refused in turn for the one bad flag."""
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (20, 20), (k * 60, 90, 30)).save(folder / f"{k}.jpg", "JPEG")
    before = server.log().count("request=UploadImage")
    done = client(server, tmp_path, "login alice", f"add_image {folder} {flags}")
    assert done.returncode == 1 and said in done.stderr, done
    assert server.log().count("request=UploadImage") == before  # nothing was sent


def test_a_history_item_that_does_not_exist_is_said_plainly(
    server: ServerProcess, tmp_path: Path
) -> None:
    """cmd2's own answer was "IndexError: list index out of range" and a hint to debug it."""
    done = client(server, tmp_path, "login alice", "history -r 99999")
    assert done.returncode == 1, done
    assert "There is no such item in the history" in done.stderr, done
    assert "IndexError" not in done.stderr and "debug" not in done.stderr, done
