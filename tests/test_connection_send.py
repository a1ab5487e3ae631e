"""`Connection.send` against a stand-in writer: how long a reader may take is a rule of this
one function, and a real peer reading slowly enough to test it would take minutes.

The end-to-end counterpart, a real peer that stops reading, is in test_slow_peers.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service import connection as connection_module
from service.connection import WRITE_CHUNK_BYTES, Connection
from service.context import ServerConfig
from service.registry import Frames


class SlowReader:
    """A StreamWriter whose peer takes every chunk, each after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.written = 0
        self.aborted = False
        self.transport = SimpleNamespace(abort=self._abort)

    def _abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def is_closing(self) -> bool:
        return self.aborted

    def write(self, data: memoryview) -> None:
        self.written += len(data)

    async def drain(self) -> None:
        await asyncio.sleep(self.delay)


def _send(writer: SlowReader, size: int, write_timeout: float) -> Exception | None:
    config = ServerConfig(write_timeout_s=write_timeout)
    services = SimpleNamespace(config=config, connections=set())
    reader = SimpleNamespace(at_eof=lambda: False)  # the peer has not closed its side
    conn = Connection(services, reader=reader, writer=writer)  # type: ignore[arg-type]
    try:
        asyncio.run(conn.send(Frames(b"x" * size)))
    except ConnectionError as exc:
        return exc
    return None


def test_a_reader_that_keeps_up_gets_the_whole_reply_in_chunks() -> None:
    writer = SlowReader(delay=0.0)
    assert _send(writer, 3 * WRITE_CHUNK_BYTES + 5, write_timeout=1.0) is None
    assert writer.written == 3 * WRITE_CHUNK_BYTES + 5 and not writer.aborted


def test_a_reader_that_stalls_on_one_chunk_is_dropped_after_the_write_timeout() -> None:
    writer = SlowReader(delay=5.0)
    assert isinstance(_send(writer, 2 * WRITE_CHUNK_BYTES, write_timeout=0.2), ConnectionError)
    assert writer.aborted and writer.written == WRITE_CHUNK_BYTES


def test_a_trickling_reader_is_dropped_when_the_reply_takes_too_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every chunk drains within the write timeout, yet the whole reply would take 2 s where
    the budget is 0.5 + 8 chunks at 32 chunks/s = 0.75 s: a peer reading a few bytes a second
    could otherwise hold its replies for hours, one chunk at a time."""
    monkeypatch.setattr(connection_module, "MIN_READ_BYTES_PER_S", 32 * WRITE_CHUNK_BYTES)
    writer = SlowReader(delay=0.25)
    assert isinstance(_send(writer, 8 * WRITE_CHUNK_BYTES, write_timeout=0.5), ConnectionError)
    assert writer.aborted and writer.written < 8 * WRITE_CHUNK_BYTES


def test_nothing_is_written_to_a_peer_that_has_closed() -> None:
    """asyncio's TLS transport drops such bytes and logs a warning naming no peer for each
    answer; the send fails at once instead (test_crash_safety.py has the real peer)."""
    writer = SlowReader(delay=0.0)
    writer.aborted = True  # is_closing()
    assert isinstance(_send(writer, 10, write_timeout=1.0), ConnectionResetError)
    assert writer.written == 0
