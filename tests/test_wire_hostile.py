"""Hostile and broken peers: each gets an error or a closed connection, never a crash, and the
server keeps serving everyone else (checked after every case by a real login)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from pathlib import Path

import msgspec
import pytest

from protocol.errors import ErrorCode
from protocol.messages import PROTOCOL_VERSION, Error, Session, Welcome, WhoAmI
from tests.servers import ServerProcess
from tests.wire import closed_by_server, read_response, send_body, send_message, tls_socket

HELLO = {"type": "Hello", "id": 1, "protocol": PROTOCOL_VERSION}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory):
    process = ServerProcess(tmp_path_factory.mktemp("hostile"), extra_args=["--idle-timeout", "2"])
    process.start()
    yield process
    process.stop()


def assert_still_serving(server: ServerProcess, tmp_path: Path) -> None:
    connection = server.user_connection(tmp_path, "survivor")
    assert connection.call(WhoAmI(id=0)).name == "survivor"
    connection.close()
    assert server.process is not None and server.process.poll() is None


def greeted(server: ServerProcess) -> ssl.SSLSocket:
    sock = tls_socket(server)
    send_message(sock, HELLO)
    assert isinstance(read_response(sock), Welcome)
    return sock


def test_random_bytes_on_the_port(hostile_server: ServerProcess, tmp_path: Path) -> None:
    with socket.create_connection((hostile_server.host, hostile_server.port), timeout=10) as sock:
        sock.sendall(os.urandom(4096))
        assert closed_by_server(sock)
    assert_still_serving(hostile_server, tmp_path)


def test_plaintext_client_is_refused(hostile_server: ServerProcess, tmp_path: Path) -> None:
    with socket.create_connection((hostile_server.host, hostile_server.port), timeout=10) as sock:
        sock.sendall(struct.pack(">I", 20) + msgspec.msgpack.encode(HELLO))
        assert closed_by_server(sock)
    assert_still_serving(hostile_server, tmp_path)


def test_tls12_client_cannot_connect(hostile_server: ServerProcess, tmp_path: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((hostile_server.host, hostile_server.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")
    assert_still_serving(hostile_server, tmp_path)


def test_frame_announcing_4gb_is_refused_before_the_body(
    hostile_server: ServerProcess, tmp_path: Path
) -> None:
    sock = greeted(hostile_server)
    sock.sendall(struct.pack(">I", 0xFFFFFFFF))
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.TOO_LARGE
    assert "4294967295" in reply.message
    assert closed_by_server(sock)
    assert_still_serving(hostile_server, tmp_path)


def test_frame_cut_short(hostile_server: ServerProcess, tmp_path: Path) -> None:
    sock = greeted(hostile_server)
    sock.sendall(struct.pack(">I", 1000) + b"x" * 10)
    sock.close()  # the server sees the stream end 990 bytes early
    assert_still_serving(hostile_server, tmp_path)


def test_unknown_message_type(hostile_server: ServerProcess, tmp_path: Path) -> None:
    sock = greeted(hostile_server)
    send_message(sock, {"type": "LaunchMissiles", "id": 7})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert reply.id == 7
    assert "LaunchMissiles" in reply.message
    # The connection survives a bad message: framing was not lost.
    send_message(sock, {"type": "WhoAmI", "id": 8})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHENTICATED
    assert_still_serving(hostile_server, tmp_path)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "Login", "id": 3, "name": 42, "password": "x"},
        {"type": "Login", "id": 3, "name": "a" * 500, "password": "x"},
        {"type": "Login", "id": 3, "name": "alice"},
        {"type": "Login", "id": 3, "name": "alice", "password": "x", "admin": True},
        {"type": "Browse", "id": 3, "options": {"limit": 100000}},
        {"type": "UploadImage", "id": 3, "filename": "a.jpg", "data": b"x", "price_cents": -5},
    ],
    ids=["wrong-type", "too-long", "missing-field", "unknown-field", "limit-range", "negative"],
)
def test_wrong_field_types_and_ranges(
    hostile_server: ServerProcess, tmp_path: Path, message: dict
) -> None:
    sock = greeted(hostile_server)
    send_message(sock, message)
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert reply.id == 3
    assert reply.message.startswith("Invalid message")
    assert "Traceback" not in reply.message


def test_malformed_messagepack(hostile_server: ServerProcess, tmp_path: Path) -> None:
    sock = greeted(hostile_server)
    port = sock.getsockname()[1]
    send_body(sock, b"\xc1\xc1\xc1")
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    # logged like a request, with the peer, so an operator can see who sends junk
    hostile_server.wait_for_log(f":{port} request=? outcome=BAD_REQUEST refused frame: ")


def test_a_refused_frame_cannot_forge_a_log_line(
    hostile_server: ServerProcess, tmp_path: Path
) -> None:
    """The refusal quotes what the peer sent; an anonymous peer must not be able to start a
    line of its own in the operator's log, nor send it an escape sequence."""
    sock = greeted(hostile_server)
    forged = "Hello\n2026-01-01 00:00:00,000 INFO vitrine.requests: user=admin forged\x1b[2J"
    send_message(sock, {"type": forged, "id": 5})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    log = hostile_server.wait_for_log("user=admin forged")
    assert "\nuser=admin" not in log and "\n2026-01-01 00:00:00,000 INFO" not in log
    assert "\x1b[2J" not in log
    assert_still_serving(hostile_server, tmp_path)
    assert_still_serving(hostile_server, tmp_path)


def test_request_before_hello(hostile_server: ServerProcess, tmp_path: Path) -> None:
    sock = tls_socket(hostile_server)
    send_message(sock, {"type": "WhoAmI", "id": 5})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert "Hello" in reply.message
    assert closed_by_server(sock)
    assert_still_serving(hostile_server, tmp_path)


def test_second_hello(hostile_server: ServerProcess) -> None:
    sock = greeted(hostile_server)
    send_message(sock, {**HELLO, "id": 2})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert "already" in reply.message


def test_protocol_version_mismatch_is_explained(hostile_server: ServerProcess) -> None:
    sock = tls_socket(hostile_server)
    send_message(sock, {**HELLO, "protocol": PROTOCOL_VERSION + 98})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert f"version {PROTOCOL_VERSION}" in reply.message
    assert f"version {PROTOCOL_VERSION + 98}" in reply.message
    assert closed_by_server(sock)
    hostile_server.wait_for_log("speaks protocol")


def test_silent_connection_is_closed(hostile_server: ServerProcess, tmp_path: Path) -> None:
    sock = greeted(hostile_server)
    sock.settimeout(15)
    reply = read_response(sock)
    assert isinstance(reply, Error) and "nothing received" in reply.message
    assert closed_by_server(sock)
    assert_still_serving(hostile_server, tmp_path)


def test_connection_that_never_starts_tls_is_closed(hostile_server: ServerProcess) -> None:
    with socket.create_connection((hostile_server.host, hostile_server.port), timeout=15) as sock:
        assert closed_by_server(sock)


def test_many_clients_at_once(hostile_server: ServerProcess, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def session(index: int) -> str:
        connection = hostile_server.user_connection(tmp_path / str(index), f"crowd{index}")
        try:
            return connection.call(WhoAmI(id=0)).name
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        names = list(pool.map(session, range(16)))
    assert names == [f"crowd{i}" for i in range(16)]


def test_a_malformed_first_frame_closes_the_connection(hostile_server: ServerProcess) -> None:
    """One handshake deadline: a peer may not keep sending junk instead of Hello."""
    sock = tls_socket(hostile_server)
    hello = msgspec.msgpack.encode(HELLO)
    junk = b"\xc1\xc1\xc1"
    sock.sendall(struct.pack(">I", len(junk)) + junk + struct.pack(">I", len(hello)) + hello)
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert read_response(sock) is None  # closed: the Hello after the junk is never answered


def test_a_string_that_is_not_utf8_is_answered_and_the_connection_stays_open(
    hostile_server: ServerProcess, tmp_path: Path
) -> None:
    sock = greeted(hostile_server)
    body = msgspec.msgpack.encode({"type": "Login", "id": 3, "name": "\x01\x01", "password": "x"})
    send_body(sock, body.replace(b"\x01\x01", b"\xff\xfe"))
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST
    assert reply.id == 3 and "not valid UTF-8" in reply.message
    send_message(sock, {"type": "WhoAmI", "id": 4})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHENTICATED
    assert "Traceback" not in hostile_server.log()
    assert_still_serving(hostile_server, tmp_path)


def test_deeply_nested_values_are_a_bad_request_not_a_dropped_connection(
    hostile_server: ServerProcess, tmp_path: Path
) -> None:
    """A kilobyte of nested arrays, anonymous, used to exhaust the recursion limit while the
    request's id was salvaged: the connection died with a traceback in the log."""
    placeholder = msgspec.msgpack.encode("PLACEHOLDER")
    body = msgspec.msgpack.encode(
        {"type": "Login", "id": 3, "name": "PLACEHOLDER", "password": "x"}
    )
    nested = b"\x91" * 1000 + msgspec.msgpack.encode("x")  # [[[...["x"]...]]], 1000 deep
    sock = greeted(hostile_server)
    send_body(sock, body.replace(placeholder, nested))
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST, reply
    send_message(sock, {"type": "WhoAmI", "id": 4})
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHENTICATED
    assert "RecursionError" not in hostile_server.log()
    assert_still_serving(hostile_server, tmp_path)


def test_frames_before_login_are_small_and_uploads_need_a_login(
    hostile_server: ServerProcess, tmp_path: Path
) -> None:
    megabyte_upload = {"type": "UploadImage", "id": 9, "filename": "a.jpg", "data": b"x" * 2**20}
    sock = greeted(hostile_server)
    sock.sendall(struct.pack(">I", 2**20))  # refused on the header: no need to send the body
    reply = read_response(sock)
    assert isinstance(reply, Error) and reply.code is ErrorCode.TOO_LARGE
    assert str(2**20) in reply.message
    assert "log in first" in reply.message
    assert closed_by_server(sock)

    hostile_server.user_connection(tmp_path, "uploader").close()  # creates the account
    sock = greeted(hostile_server)
    send_message(sock, {"type": "Login", "id": 2, "name": "uploader", "password": "correct horse"})
    assert isinstance(read_response(sock), Session)
    send_message(sock, {**megabyte_upload, "price_cents": -5})
    reply = read_response(sock)  # read in full and decoded, not refused as a frame
    assert isinstance(reply, Error) and reply.code is ErrorCode.BAD_REQUEST, reply
    assert reply.id == 9 and "price_cents" in reply.message
