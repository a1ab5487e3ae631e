"""Connection caps: server-wide, per client address and per account.

An attacker with a free account held ~7 GB of server memory by opening 19,480 idle TLS
connections (each costs about 275 KB in asyncio's TLS buffers) until the server neared its
open-file limit and would have refused everyone. Each cap here is set small by flag; the
defaults (ServerConfig) sit far above what the suite or a shop opens.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.errors import ErrorCode, VitrineError
from protocol.messages import PROTOCOL_VERSION, Error, Login, Resume, Session, Welcome, WhoAmI
from shell.connection import ConnectionLost
from tests.servers import ServerProcess
from tests.wire import closed_by_server, read_response, send_message, tls_socket

HELLO = {"type": "Hello", "id": 1, "protocol": PROTOCOL_VERSION}
PASSWORD = "correct horse"


def _server(factory: pytest.TempPathFactory, name: str, *flags: str) -> Iterator[ServerProcess]:
    process = ServerProcess(factory.mktemp(name), extra_args=list(flags)).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def per_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "per-address", "--max-connections-per-address", "3")


@pytest.fixture(scope="module")
def server_wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "server-wide", "--max-connections", "3")


@pytest.fixture(scope="module")
def per_account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "per-account", "--max-connections-per-account", "2")


def greeted(server: ServerProcess) -> ssl.SSLSocket:
    sock = tls_socket(server)
    send_message(sock, HELLO)
    assert isinstance(read_response(sock), Welcome)
    return sock


def refused(server: ServerProcess) -> Error:
    """A connection over a cap: its TLS handshake completes, then one Error, then the close."""
    sock = tls_socket(server)
    send_message(sock, HELLO)
    reply = read_response(sock)
    assert isinstance(reply, Error), reply
    assert closed_by_server(sock)
    sock.close()
    return reply


def test_connections_past_the_per_address_cap_are_refused_with_a_reason(
    per_address: ServerProcess, tmp_path: Path
) -> None:
    held = [greeted(per_address) for _ in range(3)]
    reply = refused(per_address)
    assert reply.id == 0 and reply.code is ErrorCode.RATE_LIMITED
    assert "too many connections from your address (3)" in reply.message
    # The shell says why, rather than "the server closed the connection".
    with pytest.raises(ConnectionLost, match=r"too many connections from your address \(3\)"):
        per_address.connect(tmp_path)
    for _ in range(5):
        refused(per_address)
    # One line for the burst, not one per refused connection.
    log = per_address.wait_for_log("refusing connections")
    assert log.count("refusing connections") == 1, log
    assert "127.0.0.1" in log
    held.pop().close()
    # Once one closes, its place is free again (the server counts the close asynchronously).
    for _ in range(50):
        sock = tls_socket(per_address)
        send_message(sock, HELLO)
        if isinstance(read_response(sock), Welcome):
            held.append(sock)
            break
        sock.close()
        time.sleep(0.1)
    else:
        pytest.fail("no place freed after 50 attempts")
    for sock in held:
        sock.close()


def test_connections_past_the_server_wide_cap_are_refused(server_wide: ServerProcess) -> None:
    held = [greeted(server_wide) for _ in range(3)]
    reply = refused(server_wide)
    assert reply.id == 0 and reply.code is ErrorCode.RATE_LIMITED
    assert "too many connections open (3)" in reply.message
    server_wide.wait_for_log("refusing connections")
    for sock in held:
        sock.close()


def test_logins_past_the_per_account_cap_are_refused_naming_it(
    per_account: ServerProcess, tmp_path: Path
) -> None:
    first = per_account.user_connection(tmp_path, "busy", PASSWORD)
    second = per_account.user_connection(tmp_path, "busy", PASSWORD)
    token = first.call(Login(id=0, name="busy", password=PASSWORD), Session).resume_token
    third = per_account.connect(tmp_path)
    with pytest.raises(VitrineError) as login:
        third.call(Login(id=0, name="busy", password=PASSWORD))
    assert login.value.code is ErrorCode.RATE_LIMITED
    assert "2 connections logged in" in login.value.message
    with pytest.raises(VitrineError) as resume:
        third.call(Resume(id=0, token=token))
    assert resume.value.code is ErrorCode.RATE_LIMITED
    assert "2 connections logged in" in resume.value.message
    # The refused connection is not logged in; the other two are untouched.
    with pytest.raises(VitrineError) as who:
        third.call(WhoAmI(id=0))
    assert who.value.code is ErrorCode.UNAUTHENTICATED
    assert first.call(WhoAmI(id=0)).name == "busy"
    # Other accounts are not affected.
    assert per_account.user_connection(tmp_path, "other", PASSWORD).call(WhoAmI(id=0))
    second.close()
    for _ in range(50):  # the server counts the close asynchronously
        try:
            third.call(Resume(id=0, token=token), Session)
            break
        except VitrineError as exc:
            assert exc.code is ErrorCode.RATE_LIMITED
            time.sleep(0.1)
    assert third.call(WhoAmI(id=0)).name == "busy"
    first.close()
    third.close()
