"""Shell fixes found by QA: `history -e`, quotes inside tag lists, create_user's name checked
before the password, help texts and limits worded for what they are, and search text sent as
typed. Real server, real client.py processes (at a pseudo-terminal where that matters).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.catalog import GetImage, ImageDetails
from tests.servers import ROOT, ServerProcess, client_argv, json_lines, run_client
from tests.test_images_server import jpeg, upload

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("s18-server")).start()
    conn = process.user_connection(tmp_path_factory.mktemp("s18-admin"), "admin", PASSWORD)
    conn.close()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("s18-clients")


def shell(shop: ServerProcess, home: Path, *commands: str, login: str | None = "seller"):
    if login is not None:
        shop.user_connection(home, login, PASSWORD).close()
        commands = (f"login {login}", *commands)
    # No password for create_user: asking for one then fails, which shows when it was asked.
    password = PASSWORD if login is not None else None
    done = run_client(shop, *commands, config_dir=home / "client", password=password)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


# --- history -e ----------------------------------------------------------------------------------


def test_history_edit_is_refused_and_runs_nothing(shop: ServerProcess, home: Path) -> None:
    """cmd2 failed to open the (disabled) editor and then ran the unedited items anyway: the
    same change twice, or with no argument the whole session, a login and a delete too."""
    pexpect = pytest.importorskip("pexpect")
    conn = shop.user_connection(home, "seller", PASSWORD)
    image = upload(conn, jpeg(7001), title="Counted", quantity=1).image_id
    argv = client_argv(shop, home / "tty", "login seller")
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        cwd=str(ROOT),
        env={**os.environ, "VITRINE_PASSWORD": PASSWORD, "TERM": "xterm-256color"},
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 160),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        child.expect("Logged in as seller")
        child.expect("vitrine ")
        child.sendline(f"update_image {image} --quantity +1")
        child.expect(f"Updated #{image}")
        child.expect("vitrine ")
        for line in ("history -e update_image", "history -e", "history --edit 1:"):
            child.sendline(line)
            child.expect("history -e would open a text editor, which Vitrine does not have")
            child.expect("nothing was run")
            child.expect("vitrine ")
            assert "Updated" not in child.before and "Logged in" not in child.before
        child.sendline("history")  # it still lists, and `history -r` is left as it was
        child.expect(r"update_image \d+ --quantity \+1")
        child.expect("vitrine ")
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    details = conn.call(GetImage(id=0, image_id=image, with_original=False), ImageDetails)
    assert details.image.quantity == 2  # added once, never again
    conn.close()


# --- quotes inside a tag list --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ('add_image {dir} --tags hat,"straw hat"', "--tags"),
        ("add_image {dir} --tags hat,'straw hat'", "--tags"),
        ('update_image 1 --add-tags hat,"straw hat"', "--add-tags"),
        ('update_image 1 --remove-tags hat,"straw hat"', "--remove-tags"),
        ('search_by_color red --tags hat,"straw hat"', "--tags"),
    ],
)
def test_a_quote_inside_a_tag_list_says_to_quote_the_whole_list(
    shop: ServerProcess, home: Path, tmp_path: Path, command: str, flag: str
) -> None:
    done = shell(shop, home, command.format(dir=tmp_path))
    assert done.returncode == 1, done
    said = " ".join(done.stderr.split())
    assert "quote the whole list instead, as in: " + f'{flag} "hat,straw hat"' in said, said
    assert "tags use letters" not in said


def test_the_whole_list_quoted_is_taken(shop: ServerProcess, home: Path, tmp_path: Path) -> None:
    (tmp_path / "one.jpg").write_bytes(jpeg(7002))
    done = shell(shop, home, f'add_image {tmp_path} --tags "hat,wide brim" --json')
    assert done.returncode == 0, done
    (line,) = json_lines(done.stdout)
    shown = shell(shop, home, f"show_image {line['id']} --json")
    assert len(json_lines(shown.stdout)[0]["tags"]) == 2, shown


def test_too_many_tags_in_a_filter_is_worded_for_a_filter(shop: ServerProcess, home: Path) -> None:
    tags = ",".join(f"t{n}" for n in range(65))
    done = shell(shop, home, f"search_by_color red --tags {tags}")
    assert done.returncode == 1
    assert "at most 64 tags in a search filter, not 65" in done.stderr, done.stderr
    assert "per image" not in done.stderr
    upload_too_many = shell(shop, home, f"update_image 1 --add-tags {tags}")
    assert "at most 64 tags per image" in upload_too_many.stderr


# --- create_user ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab", '"a b c"', "ab!", "_lead", "x" * 33])
def test_a_name_the_server_would_refuse_is_refused_before_the_password(
    shop: ServerProcess, home: Path, name: str
) -> None:
    """No password in the environment and no terminal: asking for it would fail with "No
    terminal to ask for a password"; the name must be refused before that."""
    done = shell(shop, home, f"create_user {name}", login=None)
    assert done.returncode == 1, done
    assert "Invalid user name" in done.stderr and "3 to 32 characters" in done.stderr
    assert "password" not in done.stderr.lower(), done.stderr


def test_a_name_starting_with_a_dash_says_so(shop: ServerProcess, home: Path) -> None:
    done = shell(shop, home, "create_user -bad", login=None)
    assert done.returncode == 1
    assert "create_user has no option -bad, and a name cannot start with '-'" in done.stderr
    assert "required" not in done.stderr, done.stderr


def test_a_valid_name_still_asks_and_the_server_judges_taken(
    shop: ServerProcess, home: Path
) -> None:
    done = shell(shop, home, "create_user Admin", login=None)
    assert done.returncode == 1
    assert "No terminal to ask for a password" in done.stderr  # the name passed the client


# --- help texts ----------------------------------------------------------------------------------


def test_help_says_admins_reach_public_images_only(shop: ServerProcess, home: Path) -> None:
    done = shell(shop, home, "help delete_image", "help update_image")
    assert done.returncode == 0, done
    text = " ".join(done.stdout.split())
    assert "admins: any image" not in text
    assert "admins: any public image too" in text and "admins: any public image," in text


# --- search text as typed ------------------------------------------------------------------------


def test_a_quoted_prefix_reaches_the_server_whole(shop: ServerProcess, home: Path) -> None:
    """cmd2 split `"stra"*` into `stra` and `*`; joined with a space, the lone `*` was
    dropped by the server and the search found nothing."""
    conn = shop.user_connection(home, "seller", PASSWORD)
    hat = upload(conn, jpeg(7003), title="straw hat").image_id
    other = upload(conn, jpeg(7004), title="hat of straw").image_id
    conn.close()

    def found(line: str) -> list[int]:
        done = shell(shop, home, line + " --json")
        assert done.returncode == 0, done
        return sorted(row["id"] for row in json_lines(done.stdout))

    assert found('search "stra"*') == sorted([hat, other])
    assert found("search '\"stra\"*'") == sorted([hat, other])  # as it always worked
    assert found('search --batch 5 "straw ha"*') == [hat]  # a phrase with a prefix
    assert found('search "straw hat"') == [hat]
    assert found("search 'straw hat'") == [hat]
    assert found('search "hat of"') == [other]
