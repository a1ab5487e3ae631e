"""Passwords are compared in Unicode NFC: "é" typed composed on one machine and decomposed
(NFD, as macOS may send it) on another is one password; hashes made before normalisation, from
a password that was not NFC, still accept it as it was typed."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from protocol.errors import ErrorCode, VitrineError
from protocol.messages import ChangePassword, CreateUser, Login, Session
from service.auth import check_new_password, hash_password, verify_password
from shell.app import CommandFailed, _long_enough
from tests.servers import ServerProcess, run_client

COMPOSED = unicodedata.normalize("NFC", "café crème brûlée")
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def test_the_two_forms_differ_as_strings() -> None:
    assert COMPOSED != DECOMPOSED and len(DECOMPOSED) > len(COMPOSED)


@pytest.mark.parametrize(("made", "typed"), [(DECOMPOSED, COMPOSED), (COMPOSED, DECOMPOSED)])
def test_either_form_verifies_a_hash_made_from_the_other(made: str, typed: str) -> None:
    phc = hash_password(made)
    assert verify_password(typed, phc)
    assert not verify_password(typed + "x", phc)


def test_a_hash_made_before_normalisation_still_accepts_the_password_as_typed() -> None:
    kdf = Argon2id(salt=os.urandom(16), length=32, iterations=2, lanes=1, memory_cost=19 * 1024)
    old = kdf.derive_phc_encoded(DECOMPOSED.encode())  # what hash_password used to store
    assert verify_password(DECOMPOSED, old)


def test_the_length_rule_counts_characters_as_composed() -> None:
    eight = unicodedata.normalize("NFD", "éééééééé")  # 16 code points, 8 characters
    check_new_password(eight)
    with pytest.raises(VitrineError) as caught:
        check_new_password(unicodedata.normalize("NFD", "ééééééé"))  # 7 characters
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_an_account_made_on_one_machine_logs_in_from_another(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    mac = shared_server.connect(tmp_path / "mac")
    mac.call(CreateUser(id=0, name="nfc-user", password=DECOMPOSED))
    linux = shared_server.connect(tmp_path / "linux")
    assert linux.call(Login(id=0, name="nfc-user", password=COMPOSED), Session).name == "nfc-user"
    new = unicodedata.normalize("NFC", "naïve señor")
    linux.call(ChangePassword(id=0, old_password=DECOMPOSED, new_password=new), Session)
    again = shared_server.connect(tmp_path / "mac2")
    login = Login(id=0, name="nfc-user", password=unicodedata.normalize("NFD", new))
    assert again.call(login, Session).name == "nfc-user"


def test_the_shell_sees_a_new_password_equal_to_the_old_one_as_the_server_does(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    """The same password typed composed as the new one and decomposed as the current one is no
    change: the shell refuses it before asking the server, which would end every other session
    for nothing."""
    home = tmp_path / "home"
    made = run_client(shared_server, "create_user nfc-same", config_dir=home, password=DECOMPOSED)
    assert made.returncode == 0, made.stderr
    done = run_client(
        shared_server,
        "login nfc-same",
        "change_password",
        config_dir=home,
        password=DECOMPOSED,
        extra_env={"VITRINE_NEW_PASSWORD": COMPOSED},
    )
    assert done.returncode != 0
    assert "The new password is the current one; nothing was changed." in done.stderr, done


def test_the_shell_counts_a_new_passwords_length_as_the_server_does() -> None:
    """Seven decomposed "é" are 14 code points but 7 characters once composed: the shell must
    refuse it before the second entry, as the server would after it."""
    with pytest.raises(CommandFailed, match="at least"):
        _long_enough(unicodedata.normalize("NFD", "ééééééé"))
    assert _long_enough("éééééééé") == "éééééééé"
