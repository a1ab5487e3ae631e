"""Slow and dead peers cost the server only their own connection.

A peer that asks for a lot (a browse with thumbnails, an original) and then never reads, or one
that vanishes or stalls in the middle of a large upload frame, must not stop anyone else's
requests, and the memory the server holds for it must stay bounded: one response per request in
flight (at most `max_in_flight` of them, however many it pipelines) plus the transport's
buffers, until the write timeout or the idle timeout drops the connection.

Durations appear here only as generous bounds that turn a hang into a failure, never as a
performance assertion. Memory is read from /proc (Linux), as the server's resident set.
"""

from __future__ import annotations

import io
import itertools
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image

from protocol.catalog import (
    Browse,
    GetImage,
    ImageDetails,
    ListingOptions,
    Uploaded,
    UploadImage,
)
from protocol.messages import PROTOCOL_VERSION, Session, UserInfo, Welcome, WhoAmI
from service.context import ServerConfig
from tests.servers import ServerProcess
from tests.wire import closed_by_server, read_response, send_message

PASSWORD = "correct horse battery"
THUMBS = 60
#: A generous bound that turns a hang into a failure; never a performance target.
HANG_S = 90.0
MIB = 1024 * 1024
_seeds = itertools.count(1000)
#: Copies of an answer a stalled peer can pin: the reply, its frame, its encrypted bytes,
#: and a transient copy while the TLS layer encrypts (about three measured).
COPIES = 4
#: Allocator noise: arenas, the other clients' own transient answers, the model's threads.
SLACK = 96 * MIB


def noise_jpeg(seed: int, side: int = 256) -> bytes:
    """Noise compresses badly, so each thumbnail is large (~40 KB): listings get heavy."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


def noise_png(seed: int, side: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def rss_bytes(server: ServerProcess) -> int:
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for the server")


class Catalogue:
    """What a server under test holds: heavy thumbnails and one big original."""

    def __init__(self, server: ServerProcess, home: Path) -> None:
        self.server = server
        self.home = home
        self.seller = f"seller{id(self) % 10_000}"
        # Built before the uploads: under load it takes over a second, and the strict server's
        # idle timer runs from the last upload's slot to this frame.
        self.original = noise_png(99, 2000)
        conn = server.user_connection(home / "seller", self.seller, PASSWORD)
        try:
            futures = [
                conn.submit(UploadImage(id=0, filename=f"{n}.jpg", data=noise_jpeg(n)))
                for n in range(THUMBS)
            ]
            for future in futures:
                assert isinstance(future.result(timeout=HANG_S), Uploaded)
            self.big_id = conn.call(
                UploadImage(id=0, filename="big.png", data=self.original), Uploaded
            ).image_id
            # The same two heavy answers a stalled peer will ask for, read properly: their size
            # is the unit the memory bounds below are stated in.
            frames = list(conn.stream(self.browse_request()))
            self.browse_bytes = sum(len(i.thumbnail or b"") for f in frames for i in f.items)
            assert self.browse_bytes > THUMBS * 20_000, "thumbnails should be heavy"
            details = conn.call(GetImage(id=0, image_id=self.big_id, with_original=True))
            assert isinstance(details, ImageDetails) and details.original == self.original
        finally:
            conn.close()

    @staticmethod
    def browse_request() -> Browse:
        return Browse(id=0, options=ListingOptions(limit=THUMBS, thumbnails=True))

    def stalled_reader(self, *, receive_buffer: int = 4096) -> ssl.SSLSocket:
        """A logged-in raw TLS socket with a tiny receive buffer, so it fills at once."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        raw.settimeout(30)
        raw.connect((self.server.host, self.server.port))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(raw, server_hostname=self.server.host)
        send_message(sock, {"type": "Hello", "id": 1, "protocol": PROTOCOL_VERSION})
        assert isinstance(read_response(sock), Welcome)
        send_message(sock, {"type": "Login", "id": 2, "name": self.seller, "password": PASSWORD})
        assert isinstance(read_response(sock), Session)
        return sock

    def ask_heavy_and_stop_reading(self, sock: ssl.SSLSocket, browses: int = 1) -> None:
        for n in range(browses):
            send_message(
                sock,
                {"type": "Browse", "id": 100 + n, "options": {"limit": THUMBS, "thumbnails": True}},
            )
        send_message(
            sock, {"type": "GetImage", "id": 99, "image_id": self.big_id, "with_original": True}
        )

    def other_client_work(self, tag: str) -> None:
        """What an ordinary client does meanwhile; every answer must arrive and be right."""
        conn = self.server.user_connection(self.home / tag, f"other{tag}", PASSWORD)
        try:
            assert conn.call(WhoAmI(id=0), UserInfo).name == f"other{tag}"
            frames = list(conn.stream(self.browse_request()))
            assert sum(len(f.items) for f in frames) == THUMBS
            details = conn.call(GetImage(id=0, image_id=self.big_id, with_original=True))
            assert isinstance(details, ImageDetails) and details.original == self.original
            data = noise_jpeg(next(_seeds), 64)
            assert conn.call(UploadImage(id=0, filename="x.jpg", data=data), Uploaded).created
        finally:
            conn.close()


def within(seconds: float, work: Callable[[], None]) -> None:
    """Run `work` in a thread; a hang fails the test instead of freezing the suite."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(work).result(timeout=seconds)


def peak_rss(server: ServerProcess, seconds: float) -> int:
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_bytes(server))
        time.sleep(0.05)
    return peak


def _catalogue(factory: pytest.TempPathFactory, name: str, flags: list[str]) -> Iterator[Catalogue]:
    server = ServerProcess(factory.mktemp(name), extra_args=flags).start()
    try:
        yield Catalogue(server, factory.mktemp(f"{name}-clients"))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    """A server that waits long for readers: stalls last until the test ends them."""
    yield from _catalogue(tmp_path_factory, "patient", ["--write-timeout", "600"])


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    """A server with short write and idle timeouts, to watch it drop stalled peers."""
    yield from _catalogue(
        tmp_path_factory, "strict", ["--write-timeout", "2", "--idle-timeout", "5"]
    )


# --- peers that stop reading ---------------------------------------------------------------------


def test_stalled_readers_do_not_hold_up_others_and_cost_a_response_each(
    patient: Catalogue,
) -> None:
    """Four peers each ask for a heavy listing and an original, then never read."""
    within(HANG_S, lambda: patient.other_client_work("warm"))  # allocator and caches warm
    before = rss_bytes(patient.server)
    stalled = [patient.stalled_reader() for _ in range(4)]
    try:
        for sock in stalled:
            patient.ask_heavy_and_stop_reading(sock)
        for n in range(3):
            within(HANG_S, lambda n=n: patient.other_client_work(f"meanwhile{n}"))
        peak = peak_rss(patient.server, 2.0)
        per_peer = patient.browse_bytes + len(patient.original)
        # Each stalled peer holds its own answers, their encoded frames and the encrypted bytes
        # waiting in its transport (four copies at most), and nothing more.
        print(f"stalled readers: RSS +{(peak - before) / MIB:.0f} MiB")
        assert peak - before <= len(stalled) * COPIES * per_peer + SLACK, (
            f"RSS grew {(peak - before) / MIB:.0f} MiB for {len(stalled)} stalled readers "
            f"holding {per_peer / MIB:.1f} MiB of answers each"
        )
    finally:
        for sock in stalled:
            sock.close()
    within(HANG_S, lambda: patient.other_client_work("after"))


def test_a_stalled_reader_that_pipelines_many_requests_is_capped_by_in_flight(
    patient: Catalogue,
) -> None:
    """200 heavy requests, never read: the server stops reading at `max_in_flight`, so it holds
    at most that many answers, not 200."""
    flood = 200
    in_flight = ServerConfig.max_in_flight
    within(HANG_S, lambda: patient.other_client_work("warm2"))
    before = rss_bytes(patient.server)
    sock = patient.stalled_reader()
    try:
        sender = threading.Thread(
            target=patient.ask_heavy_and_stop_reading, args=(sock, flood), daemon=True
        )
        sender.start()
        within(HANG_S, lambda: patient.other_client_work("flooded"))
        peak = peak_rss(patient.server, 3.0)
        bound = (in_flight + COPIES) * patient.browse_bytes + COPIES * len(patient.original) + SLACK
        print(f"flood: RSS +{(peak - before) / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB")
        assert bound < flood * patient.browse_bytes / 2, "the flood must be able to show growth"
        assert peak - before <= bound, (
            f"RSS grew {(peak - before) / MIB:.0f} MiB; "
            f"{in_flight} answers of {patient.browse_bytes / MIB:.1f} MiB were the bound"
        )
    finally:
        sock.close()
    within(HANG_S, lambda: patient.other_client_work("after2"))


@pytest.fixture(scope="module")
def writes_timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    """A short write timeout and an idle timeout far beyond the test, so that only the write
    timeout can be what drops a peer."""
    yield from _catalogue(
        tmp_path_factory,
        "writes-timed",
        ["--write-timeout", "2", "--idle-timeout", str(10 * HANG_S)],
    )


def test_a_peer_that_stops_reading_is_dropped_after_the_write_timeout(
    writes_timed: Catalogue,
) -> None:
    sock = writes_timed.stalled_reader()
    writes_timed.ask_heavy_and_stop_reading(sock)
    within(HANG_S, lambda: writes_timed.other_client_work("during-drop"))
    # Not reading until the server gives up: it is the write timeout that must end this, not
    # the idle one (a whole original used to drain at once into the socket transport's
    # buffer, and nothing timed out until the peer went idle).
    writes_timed.server.wait_for_log("request=GetImage outcome=disconnected", timeout=HANG_S)
    # Reading now drains what was buffered, then meets the end the server put there.
    sock.settimeout(HANG_S)
    assert closed_by_server(sock)
    sock.close()
    within(HANG_S, lambda: writes_timed.other_client_work("after-drop"))


# --- peers that vanish or stall mid-upload -------------------------------------------------------


def _upload_frame(size: int) -> bytes:
    body = msgspec.msgpack.encode(
        {"type": "UploadImage", "id": 7, "filename": "big.jpg", "data": b"\xff" * size}
    )
    return struct.pack(">I", len(body)) + body


def test_a_peer_that_vanishes_mid_upload_costs_only_its_connection(strict: Catalogue) -> None:
    frame = _upload_frame(20 * MIB)
    before = rss_bytes(strict.server)
    for _ in range(3):
        sock = strict.stalled_reader()
        sock.sendall(frame[: len(frame) // 2])
        # An abrupt end: a reset, not a polite close, as when a laptop lid shuts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        within(HANG_S, lambda: strict.other_client_work("after-vanish"))
    # Whatever the half frames cost was given back to the allocator's pool, not kept per peer.
    assert rss_bytes(strict.server) - before <= 2 * len(frame) + SLACK
    assert strict.server.process is not None and strict.server.process.poll() is None


def test_a_peer_that_stalls_mid_upload_is_closed_and_holds_one_frame_at_most(
    strict: Catalogue,
) -> None:
    frame = _upload_frame(20 * MIB)
    before = rss_bytes(strict.server)
    stalled = []
    for _ in range(3):
        sock = strict.stalled_reader()
        sock.sendall(frame[: len(frame) // 2])  # ...and nothing more, connection left open
        stalled.append(sock)
    within(HANG_S, lambda: strict.other_client_work("during-stall"))
    peak = peak_rss(strict.server, 1.0)
    assert peak - before <= len(stalled) * 2 * len(frame) + SLACK
    for sock in stalled:  # the idle timeout covers a whole frame, so a trickle cannot last
        sock.settimeout(HANG_S)
        assert closed_by_server(sock)
        sock.close()
    within(HANG_S, lambda: strict.other_client_work("after-stall"))
