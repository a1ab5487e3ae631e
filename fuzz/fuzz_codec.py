"""Coverage-guided fuzzing (atheris) of everything the server does with a peer's bytes before a
handler sees them: the frame reader (header, length limit, body) and the message decoder
(MessagePack, the tagged union, field types and ranges).

The contract under test: hostile bytes only ever raise the codec's own typed errors
(`framing.FrameError`, `codec.MessageError`); anything else is a crash, because the connection
loop answers exactly those two and treats any other exception as a server bug. A request that
decodes must also survive a re-encode and decode unchanged, so the server never answers from a
message it could not have received.

    .venv/bin/python fuzz/fuzz_codec.py -runs=1000000            # a longer run
    .venv/bin/python fuzz/fuzz_codec.py -max_total_time=600 corpus/   # keep a corpus
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    import msgspec

    from protocol import codec, framing

#: Small, so the length check is exercised both ways without allocating big bodies.
MAX_FRAME = 4096


def _read_frames_async(stream: bytes) -> None:
    """Every frame of `stream` through the server's asyncio reader, as the connection loop does."""

    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        while True:
            body = await framing.read_frame(reader, MAX_FRAME)
            if body is None:
                return
            _decode(body)

    asyncio.run(run())


def _read_frames_blocking(stream: bytes) -> None:
    """The client's blocking twin over a real socket pair."""
    left, right = socket.socketpair()
    try:
        right.sendall(stream)
        right.shutdown(socket.SHUT_WR)
        while True:
            body = framing.read_frame_blocking(left, MAX_FRAME)
            if body is None:
                return
            with contextlib.suppress(codec.MessageError):
                codec.decode_response(body)
    finally:
        left.close()
        right.close()


def _decode(body: bytes) -> None:
    try:
        request = codec.decode_request(body)
    except codec.MessageError as exc:
        assert isinstance(exc.request_id, int) and 0 <= exc.request_id <= 2**53
        return
    again = codec.decode_request(codec.encode(request))
    assert again == request, (request, again)


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    mode = provider.ConsumeIntInRange(0, 3)
    rest = provider.ConsumeBytes(len(data))
    try:
        if mode == 0:  # a bare body, the commonest path
            _decode(rest)
        elif mode == 1:  # a body with a well-formed header: the decoder sees it whole
            _read_frames_async(framing.frame(rest) if rest else b"")
        elif mode == 2:  # a raw stream: headers and bodies as the peer chose them
            _read_frames_async(rest)
        else:
            _read_frames_blocking(rest)
    except framing.FrameError:
        pass


def _seeds() -> list[bytes]:
    """Valid messages as starting points, so mutations reach the validators, not just msgpack."""
    hello = {"type": "Hello", "id": 1, "protocol": 1}
    login = {"type": "Login", "id": 2, "name": "alice", "password": "secret"}
    upload = {"type": "UploadImage", "id": 3, "filename": "a.jpg", "data": b"\xff", "tags": ["x"]}
    browse = {"type": "Browse", "id": 4, "tags": ["a"], "options": {"limit": 20}}
    checkout = {"type": "Checkout", "id": 5, "lines": [{"image_id": 1, "quantity": 2}]}
    bodies = [msgspec.msgpack.encode(m) for m in (hello, login, upload, browse, checkout)]
    return [b"\x00" + b for b in bodies] + [b"\x02" + struct.pack(">I", len(b)) + b for b in bodies]


def main() -> None:
    argv = list(sys.argv)
    corpora = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    if not corpora:  # no corpus directory given: a throw-away one
        corpora = [Path(tempfile.mkdtemp(prefix="vitrine-fuzz-"))]
        argv.append(str(corpora[0]))
    if corpora[0].is_dir() and not any(corpora[0].iterdir()):
        for number, seed in enumerate(_seeds()):
            (corpora[0] / f"seed-{number}").write_bytes(seed)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
