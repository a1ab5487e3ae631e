"""The client's end of the wire: TLS, pinning, the handshake and request/response matching.

An I/O thread takes every frame off the socket and hands it to whoever waits for that request
id, so the shell can pipeline many requests over one connection (bulk upload) while a plain
command still reads as a simple call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from protocol import codec, framing, tls
from protocol.base import Request, Response
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import PROTOCOL_VERSION, Error, Hello, Limits, Welcome
from protocol.pinning import KnownServers, PinningError

R = TypeVar("R", bound=Response)
T = TypeVar("T")

#: Connecting (TCP, the TLS handshake) is given up after this long, or after the answer
#: timeout when that is shorter: `--timeout 3` must not wait 10 s for a stopped server.
CONNECT_TIMEOUT_S = 10.0
#: How long the server may stay silent while requests wait for it before the connection is
#: given up (client.py --timeout). Silent, not slow: every frame that arrives restarts it.
DEFAULT_ANSWER_TIMEOUT_S = 120.0
_END = object()


class ConnectionLost(Exception):
    """The connection ended; the shell reconnects on the next command."""


class InterruptedAfterSending(KeyboardInterrupt):
    """Ctrl-C came after the requests' frames were handed to the I/O thread, which writes them
    whatever this thread does: the server will act on them, so their futures still matter (a
    bulk upload waits for them to tell the user which files were stored)."""

    def __init__(self, futures: Sequence[Future[Response]] = ()) -> None:
        super().__init__()
        self.futures = list(futures)


class UntrustedServer(PinningError):
    pass


def unexpected_response(expected: type, response: object) -> VitrineError:
    """The error for an answer of the wrong type: a server that does not speak this client's
    protocol, or a bug. One wording for `ServerConnection.call` and the commands that wait
    for their answer themselves (checkout, update_image)."""
    return VitrineError(
        ErrorCode.INTERNAL, f"Expected {expected.__name__}, got {type(response).__name__}."
    )


@dataclass
class TrustPolicy:
    """How to treat a server that `known_servers` does not know yet, or knows by another
    certificate. With `--ca-file` the handshake has verified chain and host name against the
    CA the user named, and that CA is the trust anchor: the pin just follows the certificate
    (renewals are routine), instead of asking or refusing."""

    known_servers: KnownServers
    #: Accept an unknown server without asking (scripts).
    trust_new: bool = False
    #: The fingerprint the user expects; a different one is refused.
    expected: str | None = None
    #: Asks the person; returns True to trust and pin. None means nobody can be asked.
    ask: Callable[[str, str], bool] | None = None

    def verify(self, server: str, presented: str, *, ca_verified: bool = False) -> None:
        if self.expected is not None and self.expected != presented:
            raise UntrustedServer(
                f"The server at {server} presented {presented}, not the expected {self.expected}; "
                "refusing to connect."
            )
        if ca_verified:
            self.known_servers.follow(server, presented)
            return
        if self.known_servers.check(server, presented):
            return
        if self.expected is not None or self.trust_new:
            self.known_servers.add(server, presented)
            return
        if self.ask is None:
            raise UntrustedServer(
                f"The server at {server} is not known yet (fingerprint {presented}). Check the "
                "fingerprint the server printed, then pass --fingerprint or --trust-new-server."
            )
        if not self.ask(server, presented):
            raise UntrustedServer(f"Not connecting to the untrusted server at {server}.")
        self.known_servers.add(server, presented)


@dataclass
class _Pending:
    replies: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    future: Future[Response] | None = None


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The I/O thread: run the connection's loop until `close` stops it, then close it here,
    in its own thread, so its self-pipe is released now rather than whenever (and wherever)
    the garbage collector gets to it."""
    try:
        loop.run_forever()
    finally:
        loop.close()


class ServerConnection:
    """One connection to a server, usable from any thread.

    The socket belongs to an asyncio loop on a thread of its own: OpenSSL does not allow one
    SSL object to be read and written from two threads at once, and asyncio's memory-BIO TLS
    does both from one. Callers only see blocking calls and futures.
    """

    def __init__(
        self,
        host: str,
        port: int,
        trust: TrustPolicy,
        *,
        ca_file: Path | None = None,
        max_frame: int = framing.DEFAULT_MAX_FRAME,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.server = f"{host}:{port}"
        self.trust = trust
        self.ca_file = ca_file
        self.max_frame = max_frame
        self.answer_timeout = answer_timeout
        self.connect_timeout = min(CONNECT_TIMEOUT_S, answer_timeout)
        #: When the server last answered, or a request started waiting with none before it.
        self._last_heard = time.monotonic()
        self.limits: Limits | None = None
        self.server_version = ""
        #: The shop's own id (Welcome.server_id); "" from a server too old to send one.
        self.server_id = ""
        self.fingerprint = ""
        #: How many connections this object has opened: what the server keeps per connection
        #: (a listing's cursor) belongs to one generation, and is gone after a reconnect.
        self.generation = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._closed.set()
        self.close_reason = "not connected"
        self._server_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None

    # --- the I/O thread --------------------------------------------------------------------------

    def _io(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the connection's I/O loop and wait for its result."""
        return self._schedule(coroutine).result()

    def _schedule(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Hand a coroutine to the connection's I/O loop; it runs whatever this thread does."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(
                target=_serve_loop, args=(self._loop,), name="vitrine-io", daemon=True
            ).start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=tls.client_context(self.ca_file),
                server_hostname=self.host,
                limit=2**20,
            ),
            self.connect_timeout,
        )

    async def _start_reader(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._read_loop(reader))
        self._watchdog_task = loop.create_task(self._watchdog())

    async def _watchdog(self) -> None:
        """Give the connection up when requests have waited `answer_timeout` seconds without a
        word from the server (stopped, hung, a dead link with no RST): every waiting call then
        fails with ConnectionLost instead of blocking a script forever."""
        tick = min(1.0, self.answer_timeout / 4)
        while not self._closed.is_set():
            await asyncio.sleep(tick)
            with self._lock:
                waiting = bool(self._pending)
            silent = time.monotonic() - self._last_heard
            if waiting and silent > self.answer_timeout:
                self._mark_closed(f"the server did not answer for {self.answer_timeout:g} s")
                writer = self._writer
                if writer is not None:
                    writer.transport.abort()
                return

    async def _drop_transport(self) -> None:
        writer, self._writer = self._writer, None
        task, self._reader_task = self._reader_task, None
        watchdog, self._watchdog_task = self._watchdog_task, None
        if watchdog is not None:
            watchdog.cancel()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or self._closed.is_set():
            raise ConnectionLost(self.close_reason)
        writer.write(data)
        await writer.drain()

    # --- connecting ------------------------------------------------------------------------------

    def connect(self) -> Welcome:
        self._io(self._drop_transport())
        try:
            reader, writer = self._io(self._open())
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS 1.3 handshake with {self.server} failed: {exc}") from None
        except TimeoutError:
            raise ConnectionError(
                f"The server at {self.server} did not answer within {self.connect_timeout:g} s."
            ) from None
        except OSError as exc:
            raise ConnectionError(
                f"Cannot reach a Vitrine server at {self.server}: {exc.strerror or exc}. "
                "Is the server running (python server.py), and are host and port right?"
            ) from None
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.fingerprint = tls.fingerprint(der or b"")
        self._writer = writer
        try:
            self.trust.verify(self.server, self.fingerprint, ca_verified=self.ca_file is not None)
        except BaseException:
            self._io(self._drop_transport())
            raise
        self._server_reason = None
        self.generation += 1
        self._closed.clear()
        self._io(self._start_reader(reader))
        welcome = self.call(Hello(id=0, protocol=PROTOCOL_VERSION, client="vitrine-shell"), Welcome)
        self.limits = welcome.limits
        self.server_version = welcome.server_version
        self.server_id = welcome.server_id
        return welcome

    @property
    def connected(self) -> bool:
        return not self._closed.is_set()

    def close(self) -> None:
        loop = self._loop
        if loop is not None:
            self._io(self._drop_transport())
            loop.call_soon_threadsafe(loop.stop)
            self._loop = None
        self._mark_closed("closed by the client")

    # --- requests --------------------------------------------------------------------------------

    def _register(self, request: Request, pending: _Pending) -> Request:
        request_id = next(self._ids)
        with self._lock:
            if self._closed.is_set():
                raise ConnectionLost(self.close_reason)
            if not self._pending:  # the silence that counts starts now, not at the last answer
                self._last_heard = time.monotonic()
            self._pending[request_id] = pending
        return msgspec.structs.replace(request, id=request_id)

    def _send(self, *requests: Request) -> None:
        """Write their frames in one write; returns once they are in the transport
        (back-pressure for uploads). Ctrl-C while waiting for that raises
        InterruptedAfterSending: the write is queued by then and goes out anyway."""
        data = b"".join(framing.frame(codec.encode(request)) for request in requests)
        written = self._schedule(self._write(data))
        try:
            written.result()
        except KeyboardInterrupt:
            raise InterruptedAfterSending() from None
        except OSError as exc:
            self._mark_closed(f"send failed: {exc}")
            raise ConnectionLost(self.close_reason) from None

    def submit(self, request: Request) -> Future[Response]:
        """Send without waiting; the future resolves to the response or raises its error."""
        (future,) = self.submit_all([request])
        return future

    def submit_all(self, requests: Sequence[Request]) -> list[Future[Response]]:
        """`submit` for several requests at once, sent in one write, so that the server reads
        them together (a delete of many ids costs one round trip, not one each)."""
        futures: list[Future[Response]] = [Future() for _ in requests]
        registered: list[Request] = []
        try:
            for request, future in zip(requests, futures, strict=True):
                registered.append(self._register(request, _Pending(future=future)))
            self._send(*registered)
        except InterruptedAfterSending:
            raise InterruptedAfterSending(futures) from None
        except KeyboardInterrupt:
            # Nothing was handed over: no answer will come, so nothing may wait for one (the
            # watchdog would give the connection up after its timeout of silence).
            with self._lock:
                for request in registered:
                    self._pending.pop(request.id, None)
            raise
        return futures

    def call(self, request: Request, expect: type[R] | None = None) -> R:
        response = self.submit(request).result()
        if expect is not None and not isinstance(response, expect):
            raise unexpected_response(expect, response)
        return response  # type: ignore[return-value]

    def stream(self, request: Request) -> Iterator[Response]:
        """Yield every response for one request until the one marked `final`."""
        pending = _Pending()
        self._send(self._register(request, pending))
        while True:
            item = pending.replies.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # --- the reader thread -----------------------------------------------------------------------

    def _deliver(self, response: Response) -> None:
        final = getattr(response, "final", True)
        with self._lock:
            pending = self._pending.get(response.id)
            if pending is not None and (final or isinstance(response, Error)):
                del self._pending[response.id]
        if pending is None:
            if isinstance(response, Error) and response.id == 0:
                # A connection-level complaint (idle timeout, bad frame): the server closes next.
                # Its sentence starts "Closing the connection: ..." for raw peers; said once.
                why = response.message.removeprefix("Closing the connection: ").rstrip(".")
                self._server_reason = f"the server closed the connection: {why}"
            return
        result: Any = response
        if isinstance(response, Error):
            result = VitrineError(response.code, response.message, list(response.details))
        if pending.future is not None:
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        else:
            pending.replies.put(result)
            if final or isinstance(result, BaseException):
                pending.replies.put(_END)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        reason = "the server closed the connection"
        try:
            while True:
                body = await framing.read_frame(reader, self.max_frame)
                if body is None:
                    break
                self._last_heard = time.monotonic()
                self._deliver(codec.decode_response(body))
        except (OSError, framing.FrameError, codec.MessageError) as exc:
            reason = f"connection error: {exc}"
        finally:
            self._mark_closed(reason)

    def _mark_closed(self, reason: str) -> None:
        with self._lock:
            if not self._closed.is_set():
                self.close_reason = self._server_reason or reason
                self._closed.set()
            pending, self._pending = self._pending, {}
        error = ConnectionLost(self.close_reason)
        for entry in pending.values():
            if entry.future is not None:
                if not entry.future.done():
                    entry.future.set_exception(error)
            else:
                entry.replies.put(error)
                entry.replies.put(_END)
