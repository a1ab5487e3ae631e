"""Raw access to the wire for hostile-input tests: a TLS socket and hand-made frames."""

from __future__ import annotations

import socket
import ssl
import struct

import msgspec

from protocol import codec, framing
from protocol.base import Response
from tests.servers import ServerProcess


def tls_socket(server: ServerProcess, *, timeout: float = 10.0) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((server.host, server.port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname=server.host)


def send_body(sock: socket.socket, body: bytes) -> None:
    sock.sendall(struct.pack(">I", len(body)) + body)


def send_message(sock: socket.socket, message: object) -> None:
    send_body(sock, msgspec.msgpack.encode(message))


def read_response(sock: socket.socket) -> Response | None:
    """The next response, or None when the server closed the connection."""
    try:
        body = framing.read_frame_blocking(sock, framing.DEFAULT_MAX_FRAME)
    except (ConnectionError, ssl.SSLError, framing.FrameError):
        return None
    return None if body is None else codec.decode_response(body)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed: reads return end-of-stream or a reset."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
