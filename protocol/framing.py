"""Length-prefixed frames: a 4-byte big-endian length, then one MessagePack message.

The length is checked against the limit before a single byte of the body is read, so a peer that
announces 4 GB costs us four bytes. Once framing is lost there is no way to find the next frame,
so every framing error ends the connection.
"""

from __future__ import annotations

import asyncio
import socket
import struct

HEADER = struct.Struct(">I")

#: Big enough for the largest accepted image plus its metadata.
DEFAULT_MAX_FRAME = 32 * 1024 * 1024


class FrameError(Exception):
    """The byte stream can no longer be read as frames; the connection must close."""


class FrameTooLarge(FrameError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Frame of {size} bytes exceeds the limit of {limit} bytes.")
        self.size = size
        self.limit = limit


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def check_length(length: int, max_bytes: int) -> None:
    """The refusals of a frame's announced length, for every reader of frames."""
    if length == 0:
        raise FrameError("Empty frame: a frame must hold one message.")
    if length > max_bytes:
        raise FrameTooLarge(length, max_bytes)


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """Return the next body, or None on a clean end of stream between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("Connection closed in the middle of a frame header.") from None
    (length,) = HEADER.unpack(header)
    check_length(length, max_bytes)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(
            f"Connection closed after {len(exc.partial)} of {length} announced bytes."
        ) from None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            if received == 0:
                raise EOFError
            raise FrameError(f"Connection closed after {received} of {size} bytes.")
        received += count
    return bytes(buffer)


def read_frame_blocking(sock: socket.socket, max_bytes: int) -> bytes | None:
    """The blocking twin of `read_frame`, for plain sockets: the hostile-wire tests
    (tests/wire.py) and the codec fuzzer. The shell's connection uses `read_frame`."""
    try:
        header = _recv_exactly(sock, HEADER.size)
    except EOFError:
        return None
    (length,) = HEADER.unpack(header)
    check_length(length, max_bytes)
    try:
        return _recv_exactly(sock, length)
    except EOFError:
        raise FrameError(f"Connection closed before the {length}-byte body arrived.") from None
