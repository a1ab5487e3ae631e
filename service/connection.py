"""One client connection: handshake, reading frames, running handlers, writing answers.

Requests on a connection run concurrently (bounded), so a bulk upload pipelines over one TLS
connection; requests that change who the connection is run alone. Everything a peer can do
wrong ends in a typed `Error`, or in closing this connection only: nothing here lets one client
stall or crash the server for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
import time

from protocol import codec, framing
from protocol.base import Request, Response
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import PROTOCOL_VERSION, Error, Hello, Limits, Welcome
from service.context import ConnectionState, RequestContext, Services
from service.registry import ROUTES, Frames, Reply

log = logging.getLogger("vitrine.requests")
SERVER_VERSION = "0.1.0"
# Small enough that a stalled peer holds little beyond the socket's own buffer; large enough
# that a 25 MB original is a hundred writes, not thousands.
WRITE_CHUNK_BYTES = 256 * 1024
# The slowest average a reply may be read at (beyond one write timeout): a 25 MB original gets
# about 400 s. Slower, a peer could hold its in-flight replies for hours, a chunk at a time.
MIN_READ_BYTES_PER_S = 64 * 1024
#: What a client is told when the disk or the blob store failed under its request: enough to
#: know it is the server's fault and worth retrying later, nothing of the paths in the log.
STORAGE_FAILED = (
    "The server could not read or write its storage; the error has been logged for its operator."
)


#: ... and when that failure is a full disk, which a retry will not mend and which the operator
#: must hear of: a full disk also refuses logins (each writes a session row).
STORAGE_FULL = (
    "The server's storage is full; nothing was changed. The error has been logged for its operator."
)
_SQLITE_STORAGE_ERRORS = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _failed(name: str, request_id: int, exc: Exception) -> str:
    """Log a handler's failure and return the sentence its client gets.

    The disk failing under a request (an OSError of the blob store, SQLite's "database or disk
    is full" or "disk I/O error") is the operator's to mend, not a bug: one line says so. A full
    disk gets no traceback, since every request would then write one to the disk that is full.
    Anything else is a bug and is logged with its traceback."""
    if isinstance(exc, sqlite3.OperationalError):
        storage = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_STORAGE_ERRORS
        full = getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL
    else:
        storage = isinstance(exc, OSError)
        full = storage and getattr(exc, "errno", None) in _FULL_ERRNOS
    if not storage:
        log.error("request %s %s failed", name, request_id, exc_info=exc)
        return "The server hit an unexpected error; it has been logged."
    log.error(
        "request %s %s failed: the server could not use its storage%s: %s",
        name,
        request_id,
        " (it is full)" if full else "",
        exc,
        exc_info=None if full else exc,
    )
    return STORAGE_FULL if full else STORAGE_FAILED


class _Closing(Exception):
    """Raised inside the loop when the connection must end after what was sent."""


class Connection:
    def __init__(
        self, services: Services, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.services = services
        self.config = services.config
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.state = ConnectionState(peer=str(peer[0]))
        services.connections.add(self.state)
        self.label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._write_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- writing ---------------------------------------------------------------------------------

    async def send(self, message: Response | Frames) -> None:
        """Write one reply in chunks. A peer is dropped when it takes no chunk within the write
        timeout, or reads the whole reply slower than MIN_READ_BYTES_PER_S on average (after a
        write timeout's grace): the memory it holds stays bounded by one reply plus the
        transport's buffer, and for a bounded time.

        Chunks, because asyncio's TLS transport hands a whole write to the socket transport
        underneath, whose buffer its own flow control does not count: one 12 MB write drained
        at once into memory, and a peer that then stopped reading was never timed out."""
        data = message.data if isinstance(message, Frames) else framing.frame(codec.encode(message))
        view = memoryview(data)
        stall = self.config.write_timeout_s
        budget = stall + len(view) / MIN_READ_BYTES_PER_S
        async with self._write_lock:
            if self.writer.is_closing() or self.reader.at_eof():
                # The peer left: asyncio's TLS transport would drop the bytes and log "SSL
                # connection is closed" (naming no peer) for every answer still coming.
                raise ConnectionResetError("the peer closed the connection")
            try:
                # asyncio.timeout, not wait_for: no extra task per chunk on the shared loop.
                async with asyncio.timeout(budget):
                    for start in range(0, len(view), WRITE_CHUNK_BYTES):
                        self.writer.write(view[start : start + WRITE_CHUNK_BYTES])
                        async with asyncio.timeout(stall):
                            await self.writer.drain()
            except TimeoutError:
                self.writer.transport.abort()
                raise ConnectionError("peer stopped reading") from None

    async def _send_error(
        self, request_id: int, code: ErrorCode, message: str, details: list[str] | None = None
    ) -> None:
        await self.send(_error(request_id, code, message, details))

    # --- the loop --------------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            await self._handshake()
            await self._loop()
        except _Closing:
            pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("connection %s dropped: %s", self.label, exc)
        finally:
            self.services.connections.discard(self.state)
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    def _frame_limit(self) -> int:
        """Upload-sized frames only once someone is logged in (exclusive requests such as Login
        finish before the next frame is read, so the state seen here is current)."""
        if self.state.user is None:
            return min(self.config.max_anonymous_frame_bytes, self.config.max_frame_bytes)
        return self.config.max_frame_bytes

    async def _next_request(self, timeout: float) -> Request | None:
        """Read and decode one request; framing errors are answered, then the connection closes."""
        limit = self._frame_limit()
        try:
            async with asyncio.timeout(timeout):
                body = await framing.read_frame(self.reader, limit)
        except TimeoutError:
            await self._send_error(
                0,
                ErrorCode.BAD_REQUEST,
                f"Closing the connection: nothing received for {timeout:g} s.",
            )
            raise _Closing from None
        except framing.FrameTooLarge as exc:
            message = str(exc)
            if limit < self.config.max_frame_bytes:
                message += " Until a login, only small frames are read: log in first."
            await self._send_error(0, ErrorCode.TOO_LARGE, message)
            raise _Closing from None
        except framing.FrameError as exc:
            with contextlib.suppress(ConnectionError, OSError):
                await self._send_error(0, ErrorCode.BAD_REQUEST, str(exc))
            raise _Closing from None
        if body is None:
            raise _Closing
        try:
            return codec.decode_request(body)
        except codec.MessageError as exc:
            # Not a request, but worth the line a request gets: the operator sees who sends it.
            # The message quotes what the peer sent (a type's name, a field's): %r, so that a
            # newline or an escape in it cannot forge a log line or drive a terminal.
            user = self.state.user.name if self.state.user else "-"
            log.info(
                "user=%s peer=%s request=? outcome=%s refused frame: %.200r",
                user,
                self.label,
                exc.code.value,
                exc.message,
            )
            await self._send_error(exc.request_id, exc.code, exc.message)
            return None

    async def _handshake(self) -> None:
        """One frame, within one deadline: a peer that cannot send Hello first is not a client,
        and a malformed frame must not buy it another handshake timeout."""
        request = await self._next_request(
            min(self.config.handshake_timeout_s, self.config.idle_timeout_s)
        )
        if request is None:  # malformed: the error is already sent
            raise _Closing
        if not isinstance(request, Hello):
            log.info("peer=%s sent %s before Hello; closing", self.label, type(request).__name__)
            await self._send_error(
                request.id,
                ErrorCode.BAD_REQUEST,
                "The first message must be Hello; closing the connection.",
            )
            raise _Closing
        if request.protocol != PROTOCOL_VERSION:
            log.warning(
                "peer=%s speaks protocol %s, not %s; closing",
                self.label,
                request.protocol,
                PROTOCOL_VERSION,
            )
            await self._send_error(
                request.id,
                ErrorCode.BAD_REQUEST,
                f"Protocol version mismatch: this server speaks version {PROTOCOL_VERSION}, the "
                f"client speaks version {request.protocol}. Use a client of the same release.",
            )
            raise _Closing
        config = self.config
        await self.send(
            Welcome(
                id=request.id,
                protocol=PROTOCOL_VERSION,
                server_version=SERVER_VERSION,
                limits=Limits(
                    max_frame_bytes=config.max_frame_bytes,
                    max_image_bytes=config.max_image_bytes,
                    max_image_pixels=config.max_image_pixels,
                    max_batch=config.max_batch,
                    max_in_flight=config.max_in_flight,
                    idle_timeout_s=config.idle_timeout_s,
                ),
                server_id=self.services.server_id,
            )
        )

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                request = await self._next_request(self.config.idle_timeout_s)
            except BaseException:
                self._slots.release()
                raise
            if request is None:
                self._slots.release()
                continue
            route = ROUTES.get(type(request))
            if route is not None and route.exclusive:
                self._slots.release()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                await self._run(request)
                continue
            task = asyncio.create_task(self._run_in_slot(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_in_slot(self, request: Request) -> None:
        """`_run` as a task of its own: nobody awaits it, so a failed send ends here (an
        exception left in the task would only surface as "Task exception was never retrieved"),
        and the transport is dropped so that the read loop ends too."""
        try:
            await self._run(request)
        except OSError as exc:  # the answer could not be sent: the peer is gone
            log.debug("connection %s dropped while answering: %s", self.label, exc)
            self.writer.transport.abort()
        finally:
            self._slots.release()

    # --- one request -----------------------------------------------------------------------------

    async def _run(self, request: Request) -> None:
        """Answer one request. Failures of the handler's own work are answered; only a failure
        to send the answer means the peer is gone (the handler never touches the socket, so an
        OSError from it is the disk's or the blob store's, and the client must not be left
        waiting for an answer that will never come)."""
        started = time.perf_counter()
        outcome = "ok"
        user_before = self.state.user.name if self.state.user else "-"
        name = type(request).__name__
        reply: Reply
        try:
            try:
                reply = await self._dispatch(request)
            except VitrineError as exc:
                outcome = exc.code.value
                reply = _error(request.id, exc.code, exc.message, exc.details)
            except asyncio.CancelledError:
                outcome = "disconnected"
                raise
            except Exception as exc:
                outcome = ErrorCode.INTERNAL.value
                reply = _error(request.id, ErrorCode.INTERNAL, _failed(name, request.id, exc))
            try:
                await self.send(reply)
            except (OSError, asyncio.CancelledError):  # OSError includes ConnectionError
                outcome = "disconnected"
                raise
        finally:
            user = self.state.user.name if self.state.user else user_before
            log.info(
                "user=%s peer=%s request=%s outcome=%s duration_ms=%.1f",
                user,
                self.label,
                name,
                outcome,
                (time.perf_counter() - started) * 1000,
            )

    async def _dispatch(self, request: Request) -> Reply:
        if isinstance(request, Hello):
            raise VitrineError(
                ErrorCode.BAD_REQUEST, "Hello was already exchanged on this connection."
            )
        route = ROUTES.get(type(request))
        if route is None:
            raise VitrineError(
                ErrorCode.BAD_REQUEST,
                f"{type(request).__name__} is not a request this server answers.",
            )
        if route.needs_login and self.state.user is None:
            raise VitrineError(
                ErrorCode.UNAUTHENTICATED,
                self.state.ended
                or f"{type(request).__name__} needs a logged-in user; log in first.",
            )
        return await route.handler(RequestContext(self.services, self.state), request)


def _error(
    request_id: int, code: ErrorCode, message: str, details: list[str] | None = None
) -> Error:
    return Error(id=request_id, code=code, message=message, details=details or [])
