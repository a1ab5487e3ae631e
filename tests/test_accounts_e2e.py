"""Accounts through the real shell against the real server."""

from __future__ import annotations

from pathlib import Path

from tests.servers import ServerProcess, run_client

PASSWORD = "correct horse battery"


def test_create_login_whoami_logout(shared_server: ServerProcess, config_dir: Path) -> None:
    result = run_client(
        shared_server,
        "create_user carol",
        "login carol",
        "whoami",
        "logout",
        "quit",
        config_dir=config_dir,
        password=PASSWORD,
    )
    assert result.returncode == 0, result.stderr
    # Confirmations go to stderr for a script: its stdout holds only what commands produce.
    assert "Created user carol" in result.stderr
    assert "Logged in as carol" in result.stderr
    assert result.stdout.startswith("carol ") and " on " in result.stdout  # whoami's answer
    assert "Logged out carol" in result.stderr


def test_wrong_password_fails_with_clear_message(
    shared_server: ServerProcess, config_dir: Path
) -> None:
    run_client(shared_server, "create_user dave", "quit", config_dir=config_dir, password=PASSWORD)
    result = run_client(
        shared_server, "login dave", "quit", config_dir=config_dir, password="not the password"
    )
    assert result.returncode != 0
    assert "Wrong user name or password" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_name_gets_the_same_answer_as_wrong_password(
    shared_server: ServerProcess, config_dir: Path
) -> None:
    result = run_client(
        shared_server, "login nobody-here", "quit", config_dir=config_dir, password=PASSWORD
    )
    assert result.returncode != 0
    assert "Wrong user name or password" in result.stderr
