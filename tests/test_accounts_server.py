"""Account rules on the real server over the wire: names, passwords, admin, throttling,
sessions and what the log may contain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from protocol.errors import ErrorCode, VitrineError
from protocol.messages import (
    ChangePassword,
    CreateUser,
    Login,
    Logout,
    Resume,
    Session,
    UserInfo,
    WhoAmI,
)
from service.auth import LoginThrottle, hash_password, verify_password
from tests.servers import ServerProcess

PASSWORD = "correct horse battery"


def error_of(call) -> VitrineError:
    with pytest.raises(VitrineError) as caught:
        call()
    return caught.value


def test_first_user_is_admin_and_later_ones_are_not(server: ServerProcess, tmp_path: Path) -> None:
    connection = server.connect(tmp_path)
    first = connection.call(CreateUser(id=0, name="Root", password=PASSWORD), UserInfo)
    second = connection.call(CreateUser(id=0, name="plain", password=PASSWORD), UserInfo)
    assert (first.name, first.admin) == ("root", True)
    assert (second.name, second.admin) == ("plain", False)


@pytest.mark.parametrize("name", ["ab", "x" * 33, "bad name", "-dash", "naïve", "a/b", "a;drop"])
def test_username_rule(shared_server: ServerProcess, tmp_path: Path, name: str) -> None:
    connection = shared_server.connect(tmp_path)
    error = error_of(lambda: connection.call(CreateUser(id=0, name=name, password=PASSWORD)))
    assert error.code is ErrorCode.BAD_REQUEST
    assert "3 to 32 characters" in error.message


def test_short_password_and_taken_name(shared_server: ServerProcess, tmp_path: Path) -> None:
    connection = shared_server.connect(tmp_path)
    error = error_of(lambda: connection.call(CreateUser(id=0, name="shorty", password="1234567")))
    assert error.code is ErrorCode.BAD_REQUEST and "at least 8" in error.message
    connection.call(CreateUser(id=0, name="taken", password=PASSWORD))
    error = error_of(lambda: connection.call(CreateUser(id=0, name="TAKEN", password=PASSWORD)))
    assert error.code is ErrorCode.CONFLICT


def test_password_guessing_is_slowed_then_rate_limited(
    server: ServerProcess, tmp_path: Path
) -> None:
    connection = server.connect(tmp_path)
    connection.call(CreateUser(id=0, name="victim", password=PASSWORD))
    delays = []
    for _ in range(5):
        started = time.monotonic()
        error = error_of(lambda: connection.call(Login(id=0, name="victim", password="guess123")))
        delays.append(time.monotonic() - started)
        assert error.code is ErrorCode.UNAUTHENTICATED
    assert delays[-1] > delays[0]  # growing delays (ordering, not a duration target)
    error = error_of(lambda: connection.call(Login(id=0, name="victim", password=PASSWORD)))
    assert error.code is ErrorCode.RATE_LIMITED
    assert "try again in" in error.message


def test_resume_token_is_useless_after_logout(shared_server: ServerProcess, tmp_path: Path) -> None:
    thief = shared_server.connect(tmp_path / "thief")
    victim = shared_server.user_connection(tmp_path / "victim", "mallory-target", PASSWORD)
    token = victim.call(Login(id=0, name="mallory-target", password=PASSWORD), Session).resume_token
    resumed = thief.call(Resume(id=0, token=token), Session)
    assert resumed.name == "mallory-target"  # a token works while its session lives...
    victim.call(Logout(id=0))
    later = shared_server.connect(tmp_path / "later")
    error = error_of(lambda: later.call(Resume(id=0, token=token)))
    assert error.code is ErrorCode.UNAUTHENTICATED  # ...and never after logout
    error = error_of(lambda: later.call(WhoAmI(id=0)))
    assert error.code is ErrorCode.UNAUTHENTICATED


def test_change_password_ends_other_sessions(shared_server: ServerProcess, tmp_path: Path) -> None:
    here = shared_server.user_connection(tmp_path / "a", "changer", PASSWORD)
    there = shared_server.connect(tmp_path / "b")
    token = there.call(Login(id=0, name="changer", password=PASSWORD), Session).resume_token
    error = error_of(
        lambda: here.call(
            ChangePassword(id=0, old_password="wrong-one", new_password="another password")
        )
    )
    assert error.code is ErrorCode.UNAUTHENTICATED
    here.call(ChangePassword(id=0, old_password=PASSWORD, new_password="another password"))
    fresh = shared_server.connect(tmp_path / "c")
    assert error_of(lambda: fresh.call(Resume(id=0, token=token))).code is ErrorCode.UNAUTHENTICATED
    assert fresh.call(Login(id=0, name="changer", password="another password"), Session)
    assert (
        error_of(lambda: fresh.call(Login(id=0, name="changer", password=PASSWORD))).code
        is ErrorCode.UNAUTHENTICATED
    )


def test_log_has_one_line_per_request_and_no_password(
    server: ServerProcess, tmp_path: Path
) -> None:
    secret = "very-secret-password-9"
    connection = server.connect(tmp_path)
    connection.call(CreateUser(id=0, name="logged", password=secret))
    connection.call(Login(id=0, name="logged", password=secret))
    connection.call(WhoAmI(id=0))
    server.stop()
    log = server.log()
    assert secret not in log
    lines = [line for line in log.splitlines() if "request=" in line]
    assert [line.split("request=")[1].split()[0] for line in lines] == [
        "CreateUser",
        "Login",
        "WhoAmI",
    ]
    for line in lines:
        assert "INFO" in line and "outcome=ok" in line and "duration_ms=" in line
    assert "user=logged" in lines[-1]


def test_passwords_are_argon2id_phc_at_owasp_minimum() -> None:
    phc = hash_password("some password")
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("some password", phc)
    assert not verify_password("other password", phc)


def test_throttle_counts_per_account_and_per_peer() -> None:
    throttle = LoginThrottle(base_delay=0.1, max_delay=1.0, account_limit=3, peer_limit=5)
    delays = [throttle.failure("alice", "10.0.0.1") for _ in range(3)]
    assert delays == sorted(delays) and delays[0] < delays[-1] <= 1.0
    with pytest.raises(VitrineError) as caught:
        throttle.check("alice", "10.0.0.2")  # another peer cannot keep guessing alice
    assert caught.value.code is ErrorCode.RATE_LIMITED
    throttle.check("bob", "10.0.0.2")
    for name in ("bob", "carol"):
        throttle.failure(name, "10.0.0.1")
    with pytest.raises(VitrineError):
        throttle.check("dave", "10.0.0.1")  # one peer cannot spray many accounts
    throttle.success("alice")
    throttle.check("alice", "10.0.0.2")
