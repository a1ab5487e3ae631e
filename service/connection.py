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
from collections import Counter

from protocol import codec, framing
from protocol.base import Request, Response
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import PROTOCOL_VERSION, Error, Hello, Limits, Login, Resume, Welcome
from repository import accounts as account_repo
from service.auth import peer_key
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
#: A frame that has begun must keep coming: a pause longer than this (or the idle timeout, if
#: shorter) closes the connection, and so does a frame slower than MIN_READ_BYTES_PER_S on
#: average beyond this grace, unless it arrives within the idle timeout (`frame_budget`). A
#: peer that sent 30 MiB of a 32 MiB frame and stopped held them until the idle timeout
#: (300 s); a steady upload slower than the idle timeout was cut. A 25 MB original at exactly
#: 64 KiB/s still arrives (in 381 s, of the 411 s it gets).
FRAME_STALL_S = 30.0
#: Most bytes taken from the stream at once while a frame arrives, to see how far it got.
READ_CHUNK_BYTES = 256 * 1024
#: How long a refused connection is given to send its Hello before the close: a close with its
#: Hello unread, or arriving after, resets the connection, and the client may lose the reason.
REFUSAL_LINGER_S = 1.0
#: Connection refusals (and evictions) past the first of a burst are summed up in one line
#: this often.
REFUSAL_LOG_INTERVAL_S = 60.0
#: How long a connection closed to make room (`ConnectionLimits`) is given to take the reason
#: before it is closed regardless: its place is already given to the newcomer, so a peer that
#: does not read must not keep the socket for a write timeout.
EVICTION_NOTICE_S = 2.0
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


def frame_budget(length: int, idle_timeout_s: float) -> float:
    """Seconds a frame of `length` bytes gets from its header to its last byte: the rate rule
    (a stall's grace plus MIN_READ_BYTES_PER_S), but never less than the idle timeout, which
    every frame had before the rate rule. The rule alone gave a 200 KB upload 33 s, so one at
    5 KB/s (40 s) over a slow uplink was cut where it used to arrive."""
    stall = min(FRAME_STALL_S, idle_timeout_s)
    return max(idle_timeout_s, stall + length / MIN_READ_BYTES_PER_S)


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


class _Late(TimeoutError):
    """A frame (or the wait for one) ran out of time; `reason` says how, for the peer and the
    log: nothing received, or how much of a frame arrived. `slow`: it kept coming, too slowly."""

    def __init__(self, reason: str, slow: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.slow = slow


class _Cut(framing.FrameError):
    """The peer closed the connection in the middle of a frame: nobody is left to answer."""


class ConnectionLimits:
    """Open connections, server-wide and per client address (`auth.peer_key`: an IPv6 /64 is
    one address, as for login failures).

    Each idle TLS connection holds about 275 KB (asyncio's TLS reserves a 256 KiB receive
    buffer) and a file descriptor: one free account opened 19,480 of them, 7 GB, close to the
    open-file limit that would have refused everyone's new connections.

    Only connections that finished their TLS handshake are counted (asyncio runs the handshake
    before the server sees the connection), and a refused one stops counting at once though its
    socket lives on for its reason (REFUSAL_LINGER_S, then the close): the open-file count can
    run past `total` by what the listen backlog and the handshake timeout let in.

    When the server is full, a newcomer may take the place of an idle connection
    (`Connection.idle`: nothing in flight, no frame half-read, no reply being written) of an
    address that, with the newcomer in, would still hold more connections than the newcomer's
    (`_make_room`): four addresses holding 256 idle connections each locked every other client
    out. A connection with work in progress is never closed for a newcomer: closing one lost
    half-received uploads, the replies of stored ones, and cut a password change between its
    commit and the end of the account's other sessions."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        #: Each address's counted connections (a dict for its order and O(1) removal).
        self.by_address: dict[str, dict[Connection, None]] = {}
        self._refusals = _BurstLog("refusing connections", "refusals")
        self._evictions = _BurstLog("closing connections to make room", "evictions")

    @property
    def open(self) -> int:
        """Connections counted now."""
        return sum(len(held) for held in self.by_address.values())

    def admit(self, connection: Connection) -> str | None:
        """Count a new connection in (closing another to make room if it must), or say why it
        is refused."""
        address = connection.address
        held = len(self.by_address.get(address, ()))
        if held >= self.per_address:
            reason = (
                f"too many connections from your address ({self.per_address}); close some "
                "and try again"
            )
        elif self.open >= self.total and not self._make_room(address, held):
            reason = f"the server has too many connections open ({self.total}); try again later"
        else:
            self.by_address.setdefault(address, {})[connection] = None
            return None
        self._refusals.note(address, reason)
        return reason

    def _make_room(self, address: str, held: int) -> bool:
        """Close one idle connection for a newcomer whose address holds `held`, or say there is
        none to close. Only addresses that would still hold more than the newcomer's once it is
        in give up a place: never between two of equal share, which would only trade places
        back and forth. An idle connection not logged in goes first, from any such address (the
        heaviest first had many addresses of one anonymous connection each close an office's
        logged-in ones); then an idle logged-in one. Within each, the address holding the
        most, then the longest idle. One pass over the counted connections (at most `total`)."""
        floor = held + 1
        heavy = [conns for conns in self.by_address.values() if len(conns) > floor]
        for logged_in in (False, True):
            victim = min(
                (
                    conn
                    for conns in heavy
                    for conn in conns
                    if (conn.state.user is not None) is logged_in and conn.idle()
                ),
                key=lambda conn: (-len(self.by_address[conn.address]), conn.active_at),
                default=None,
            )
            if victim is not None:
                break
        else:
            return False
        count = len(self.by_address[victim.address])
        self.release(victim)
        victim.evict(f"the server is full and your address holds the most connections ({count})")
        self._evictions.note(
            victim.address,
            f"the server is full ({self.total}); closed an idle connection of the {count} of "
            f"{victim.address} for a newcomer from {address}",
        )
        return True

    def release(self, connection: Connection) -> None:
        """Stop counting `connection`; nothing if it no longer counts (it was evicted)."""
        held = self.by_address.get(connection.address)
        if held is None or connection not in held:
            return
        del held[connection]
        if not held:
            del self.by_address[connection.address]


class _BurstLog:
    """One warning when refusals (or evictions) start, then one line per
    REFUSAL_LOG_INTERVAL_S while they go on: a flood of them must not become a flood of log
    lines."""

    def __init__(self, what: str, noun: str) -> None:
        self.what = what
        self.noun = noun
        self.counts: Counter[str] = Counter()
        self._summary: asyncio.TimerHandle | None = None

    def note(self, address: str, reason: str) -> None:
        if self._summary is not None:
            self.counts[address] += 1
            return
        log.warning(
            "%s: peer=%s: %s (further %s are summed up every %g s)",
            self.what,
            address,
            reason,
            self.noun,
            REFUSAL_LOG_INTERVAL_S,
        )
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._summary = loop.call_later(REFUSAL_LOG_INTERVAL_S, self._summarise)

    def _summarise(self) -> None:
        self._summary = None
        if not self.counts:
            return  # the burst is over: the next one is logged at once
        top = ", ".join(f"{address} {count}" for address, count in self.counts.most_common(5))
        log.warning(
            "%s: %d more %s in the last %g s from %d addresses (most: %s)",
            self.what,
            self.counts.total(),
            self.noun,
            REFUSAL_LOG_INTERVAL_S,
            len(self.counts),
            top,
        )
        self.counts.clear()
        self._arm()


class Connection:
    def __init__(
        self,
        services: Services,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.services = services
        self.config = services.config
        self.reader = reader
        self.writer = writer
        self.limits = limits
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.state = ConnectionState(peer=str(peer[0]))
        self.address = peer_key(self.state.peer)
        services.connections.add(self.state)
        self.label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._write_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        #: When a frame last arrived or a reply last left: who is idle longest (`_make_room`).
        self.active_at = time.monotonic()
        self._serve_task: asyncio.Task[None] | None = None
        #: From a frame's first byte to its last: not `idle`, as closing would lose the frame.
        self._mid_frame = False
        #: While a request that runs alone (Login, ChangePassword, ...) is handled inline in the
        #: serve task, where `_tasks` does not see it: not `idle`.
        self._exclusive = False
        #: Set once `evict` gave this connection's place away: `serve` tells the peer and ends.
        self.evicted: str | None = None

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
            self.active_at = time.monotonic()

    async def _send_error(self, request_id: int, code: ErrorCode, message: str) -> None:
        await self.send(_error(request_id, code, message))

    # --- the loop --------------------------------------------------------------------------------

    async def serve(self) -> None:
        self._serve_task = asyncio.current_task()
        refusal = self.limits.admit(self) if self.limits is not None else None
        try:
            if refusal is not None:
                await self._refuse(refusal)
                return
            await self._handshake()
            await self._loop()
        except _Closing:
            pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("connection %s dropped: %s", self.label, exc)
        except asyncio.CancelledError:
            if self.evicted is None:
                raise
            # The cancel was `evict`'s, not the server's shutdown: tell the peer, then close.
            assert self._serve_task is not None
            self._serve_task.uncancel()
            await self._tell_evicted(self.evicted)
        finally:
            if self.limits is not None:
                self.limits.release(self)
            self.services.connections.discard(self.state)
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    async def _refuse(self, reason: str) -> None:
        """Tell a connection over a cap why, then close it (the caller does). Its Hello, sent
        right after TLS, is read first if it comes soon: see REFUSAL_LINGER_S."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(REFUSAL_LINGER_S):
                await self.reader.read(self.config.max_anonymous_frame_bytes)
        await self._send_error(0, ErrorCode.RATE_LIMITED, f"Closing the connection: {reason}.")

    def idle(self) -> bool:
        """Whether closing this connection for a newcomer loses nothing: no request in flight
        or running alone, no frame half-received, no reply being written. Its serve task then
        waits for the first bytes of the next frame (or of `Hello`), and `evict` stops it there.
        Those are decrypted bytes: a frame whose first TLS record is still arriving counts as
        idle, since asyncio passes nothing on before a whole record (docs/protocol.md)."""
        return not (
            self._tasks
            or self._exclusive
            or self._mid_frame
            or self._write_lock.locked()
            or self.evicted is not None
            or self._serve_task is None
        )

    def evict(self, reason: str) -> None:
        """Close this `idle` connection, already no longer counted, telling the peer `reason`.
        Its serve task is cancelled at once, in its wait for a frame's first bytes, so that no
        request is read after the decision: one arriving just then is never started."""
        assert self._serve_task is not None
        self.evicted = reason
        self._serve_task.cancel()

    async def _tell_evicted(self, reason: str) -> None:
        """The reason, within EVICTION_NOTICE_S: the place is already the newcomer's, so a peer
        that does not read must not keep the socket for a write timeout."""
        error = _error(0, ErrorCode.RATE_LIMITED, f"Closing the connection: {reason}.")
        try:
            async with asyncio.timeout(EVICTION_NOTICE_S):
                if not self.writer.is_closing():
                    self.writer.write(framing.frame(codec.encode(error)))
                    await self.writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()  # not reading: no graceful close either

    def _frame_limit(self) -> int:
        """Upload-sized frames only once someone is logged in (exclusive requests such as Login
        finish before the next frame is read, so the state seen here is current)."""
        if self.state.user is None:
            return min(self.config.max_anonymous_frame_bytes, self.config.max_frame_bytes)
        return self.config.max_frame_bytes

    async def _read_into(
        self, into: bytearray, size: int, stall: float, deadline: float, what: str
    ) -> None:
        """Read until `into` holds `size` bytes: a pause longer than `stall`, or the loop's
        clock passing `deadline`, raises `_Late` saying which and how far `what` got, and an
        end of stream EOFError (`into` then holds what came). Read in
        pieces rather than with `readexactly`, whose wait cannot tell a frame that keeps coming
        from one that stopped, nor say how much arrived."""
        loop = asyncio.get_running_loop()
        while len(into) < size:
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(max(0.0, min(stall, left))):
                    chunk = await self.reader.read(min(size - len(into), READ_CHUNK_BYTES))
            except TimeoutError:
                if stall < left:
                    raise _Late(
                        f"{what} stopped arriving: {len(into)} of {size} bytes arrived, then "
                        f"nothing for {stall:g} s"
                    ) from None
                raise _Late(
                    f"{what} did not arrive in full in time: {len(into)} of {size} bytes",
                    slow=True,
                ) from None
            if not chunk:
                raise EOFError
            into += chunk

    async def _read_frame(self, limit: int, wait: float, whole: bool) -> bytearray | None:
        """The next frame's body, or None on a clean end of stream between frames.

        Its first bytes may take `wait` (the idle timeout); once it began, the frame must
        keep coming (FRAME_STALL_S) and arrive within `frame_budget`. With `whole`, `wait`
        bounds the whole frame (the handshake's one deadline)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        stall = min(FRAME_STALL_S, self.config.idle_timeout_s)
        header = bytearray()
        try:
            async with asyncio.timeout(wait):
                header += await self.reader.read(framing.HEADER.size)
        except TimeoutError:
            raise _Late(f"nothing received for {wait:g} s") from None
        if not header:
            return None
        self._mid_frame = True  # until the body is in (left set if it never is: closing)
        try:
            await self._read_into(
                header, framing.HEADER.size, stall, began + wait, "a frame's 4-byte header"
            )
        except EOFError:
            raise _Cut("Connection closed in the middle of a frame header.") from None
        (length,) = framing.HEADER.unpack(header)
        framing.check_length(length, limit)
        budget = frame_budget(length, self.config.idle_timeout_s)
        deadline = loop.time() + budget
        if whole:
            deadline = min(deadline, began + wait)
        body = bytearray()
        try:
            await self._read_into(body, length, stall, deadline, "the request")
        except _Late as late:
            if whole or not late.slow:
                raise
            raise _Late(
                f"{late.reason} (a frame gets {stall:g} s plus a second per "
                f"{MIN_READ_BYTES_PER_S // 1024} KiB, or the idle timeout of "
                f"{self.config.idle_timeout_s:g} s if longer: {budget:.0f} s for this one)"
            ) from None
        except EOFError:
            got = len(body)
            raise _Cut(f"Connection closed after {got} of {length} announced bytes.") from None
        self._mid_frame = False
        return body

    def _log_closing(self, outcome: str, reason: str) -> None:
        """One line per connection closed for a frame: the peer and why. Floods of these are
        bounded by the connection caps (ConnectionLimits, max_connections_per_account)."""
        user = self.state.user.name if self.state.user else "-"
        log.info(
            "user=%s peer=%s request=? outcome=%s closed the connection: %s",
            user,
            self.label,
            outcome,
            reason,
        )

    async def _next_request(self, wait: float, *, whole: bool = False) -> Request | None:
        """Read and decode one request; framing errors are answered, then the connection closes."""
        limit = self._frame_limit()
        try:
            body = await self._read_frame(limit, wait, whole)
        except _Late as late:
            self._log_closing(ErrorCode.BAD_REQUEST.value, late.reason)
            with contextlib.suppress(ConnectionError, OSError):
                await self._send_error(
                    0, ErrorCode.BAD_REQUEST, f"Closing the connection: {late.reason}."
                )
            raise _Closing from None
        except framing.FrameTooLarge as exc:
            message = str(exc)
            if limit < self.config.max_frame_bytes:
                message += " Until a login, only small frames are read: log in first."
            self._log_closing(ErrorCode.TOO_LARGE.value, str(exc))
            await self._send_error(0, ErrorCode.TOO_LARGE, message)
            raise _Closing from None
        except _Cut as exc:
            self._log_closing("disconnected", str(exc))
            raise _Closing from None
        except framing.FrameError as exc:
            self._log_closing(ErrorCode.BAD_REQUEST.value, str(exc))
            with contextlib.suppress(ConnectionError, OSError):
                await self._send_error(0, ErrorCode.BAD_REQUEST, str(exc))
            raise _Closing from None
        if body is None:
            raise _Closing
        self.active_at = time.monotonic()
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
            min(self.config.handshake_timeout_s, self.config.idle_timeout_s), whole=True
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
                self._exclusive = True
                try:
                    if self._tasks:
                        await asyncio.gather(*self._tasks, return_exceptions=True)
                    await self._run(request)
                finally:
                    self._exclusive = False
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
        reply = await route.handler(RequestContext(self.services, self.state), request)
        if isinstance(request, Login | Resume):
            await self._within_account_cap(request)
        return reply

    async def _within_account_cap(self, request: Login | Resume) -> None:
        """Undo a login that makes its account's connections more than the cap: one account
        could otherwise hold thousands of connections, each with a frame of up to
        max_frame_bytes in the making. Checked after the login, since only then is the account
        known (a Resume names none); a Login's new session is revoked, as its token is never
        sent, while a resumed one stays with the account's other connections."""
        user, cap = self.state.user, self.config.max_connections_per_account
        if user is None:
            return
        logged_in = sum(
            1 for state in self.services.connections if state.user and state.user.id == user.id
        )
        if logged_in <= cap:
            return
        session_id = self.state.session_id
        self.state.end()
        if isinstance(request, Login) and session_id is not None:
            await self.services.db_call(account_repo.revoke_session, session_id)
        raise VitrineError(
            ErrorCode.RATE_LIMITED,
            f"This account already has {cap} connections logged in, the most it may have; "
            "close one of them (or log out there) and try again.",
        )


def _error(
    request_id: int, code: ErrorCode, message: str, details: list[str] | None = None
) -> Error:
    return Error(id=request_id, code=code, message=message, details=details or [])
