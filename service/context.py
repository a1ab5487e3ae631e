"""What a handler is given: the server's shared parts and the state of its own connection."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import sqlite3
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from protocol.errors import ErrorCode, VitrineError
from protocol.framing import DEFAULT_MAX_FRAME
from protocol.limits import MAX_BATCH
from protocol.messages import SESSION_LIFETIME_S
from repository.accounts import User
from repository.blobstore import BlobStore
from repository.database import Database
from service.auth import DeviceTokens, LoginThrottle
from util.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from repository.images import NewImage
    from service.ingest import Analyser
    from util.config import Setting

#: Called after an upload's row (and embedding) committed, with the new id: e.g. to index it.
#: It runs in the worker thread that committed, with that thread's connection, in the same trip
#: to the executor (not two more thread hand-offs per upload); so it must be quick, and must
#: not await anything.
StoredHook = Callable[["Services", sqlite3.Connection, int, "NewImage"], None]
#: Called after an image was (soft) deleted, with its id: e.g. to drop it from an index.
DeletedHook = Callable[["Services", int], Awaitable[None]]

log = logging.getLogger("vitrine.requests")

T = TypeVar("T")

#: What a request on a connection whose session ran out of time is told (`ConnectionState`).
SESSION_EXPIRED = "Your session has expired; log in again."


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7878
    data_dir: Path = Path(".")
    max_frame_bytes: int = DEFAULT_MAX_FRAME
    #: Frames before a login are Hello, Login, CreateUser and Resume, all a few hundred bytes:
    #: an anonymous peer may not make the server buffer an upload-sized frame.
    max_anonymous_frame_bytes: int = 64 * 1024
    max_image_bytes: int = DEFAULT_MAX_BYTES
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = MAX_BATCH
    max_in_flight: int = 32
    #: Open connections at once (each idle TLS one holds ~275 KB and a file descriptor): at
    #: most ~280 MB of idle connections; start-up lowers it to fit the open-file limit.
    max_connections: int = 1024
    #: Open connections from one client address (an IPv6 /64): an office behind one NAT, or
    #: the test-suite's 40 at once, stays far below; one attacker holds at most ~70 MB idle.
    max_connections_per_address: int = 256
    #: Connections logged in as one account at once, checked at Login and Resume: what one
    #: free account can make the server buffer is at most this many frames in the making.
    max_connections_per_account: int = 64
    idle_timeout_s: float = 300.0
    handshake_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    session_lifetime_s: float = float(SESSION_LIFETIME_S)
    #: Longest side of the thumbnails served in listings (and seen by colours and embeddings).
    thumbnail_side: int = 256
    #: Extract dominant colours at upload (`--no-colours` turns it off: a shop that does not
    #: use colour search saves the CPU, and the ingest benchmark measures what it costs).
    colours: bool = True
    #: Soft-deleted images older than this are purged at start-up (their blobs then swept).
    purge_after_s: float = 30 * 24 * 3600.0
    #: Listing cursors kept per connection; the oldest is dropped beyond this.
    max_cursors: int = 16
    #: MobileNetV2 no-top weights file for search by image; None: Keras' own download.
    weights: str | None = None
    #: Where the converted model is cached; None: util.config.default_cache_dir().
    cache_dir: Path | None = None
    #: Where cache_dir came from, so that the warning about an unusable cache names it.
    cache_dir_setting: Setting | None = None


@dataclass
class Services:
    """Everything shared by all connections; built once by `service.app`."""

    config: ServerConfig
    db: Database
    throttle: LoginThrottle
    executor: ThreadPoolExecutor
    #: Encrypted originals and thumbnails.
    blobs: BlobStore
    #: Extra upload steps (embeddings) that get each decoded upload once; see service.ingest.
    analysers: list[Analyser] = field(default_factory=list)
    #: Post-commit hooks; a failing hook is logged and never fails the request.
    on_stored: list[StoredHook] = field(default_factory=list)
    on_deleted: list[DeletedHook] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    #: This data's random id (`repository.database.server_id`), sent in `Welcome`.
    server_id: str = ""
    #: A small pool of its own for short transactional work (checkout, reading a few images),
    #: so it does not queue behind searches in `executor`; see `quick_db_call`.
    quick_executor: ThreadPoolExecutor | None = None
    #: Threads that mostly wait on the disk: each new upload fsyncs two blob files and their
    #: directories, and in `executor` those waits held one of the two workers a third of the
    #: time during bulk ingest. A thread waiting in fsync holds neither the GIL nor a core.
    io_executor: ThreadPoolExecutor | None = None
    #: Every open connection's state, so ending a session ends it where it is in use too: a
    #: token resumed by someone else must not outlive a logout or a password change.
    connections: set[ConnectionState] = field(default_factory=set)
    #: Work that goes on after its client left (`finish_regardless`); shutdown waits for it.
    unfinished: set[asyncio.Task[Any]] = field(default_factory=set)
    #: At most this much at once: a client that uploads, drops the connection and comes back
    #: must not pile up work (and the bytes it holds) beyond what two full windows hold.
    max_unfinished: int = 64
    #: Issues and checks the device tokens that exempt an owner's client from the account-wide
    #: login limit. `open_services` keys them from the data directory's master key, so they
    #: outlive a restart; services built without it (tests) get a key of their own, whose
    #: tokens die with the process.
    device_tokens: DeviceTokens = field(
        default_factory=lambda: DeviceTokens.from_master_key(secrets.token_bytes(32))
    )

    def finish_regardless(self, work: Awaitable[T], what: str = "") -> Awaitable[T]:
        """`work`, carried to its end even if the request waiting for it is cancelled (its
        client disconnected). An upload cancelled between its blob writes and its insert left
        blobs that no row names until the next start; one whose bytes all arrived is now
        stored, and sending it again reports it present. Past `max_unfinished`, work is
        cancelled with its request as before (the next start sweeps what it left).

        `what` names the work in the log (the request, its user), with anything a client
        chose quoted by the caller (%r), as the request lines do; without it, the coroutine's
        name. While its request still waits, a failure is the request's, which answers and
        logs it; once its client left, nobody else would: see `_log_unanswered`."""
        if len(self.unfinished) >= self.max_unfinished:
            return work
        task = asyncio.ensure_future(work)
        self.unfinished.add(task)
        waiting = asyncio.shield(task)
        label = what or getattr(work, "__qualname__", type(work).__name__)

        def forget(finished: asyncio.Task[T]) -> None:
            self.unfinished.discard(finished)
            if finished.cancelled():
                return
            # Read here in any case: nobody may be left to, and asyncio would otherwise log a
            # refused upload as "exception was never retrieved".
            exc = finished.exception()
            if exc is not None and waiting.cancelled():
                _log_unanswered(label, exc)

        task.add_done_callback(forget)
        return waiting

    def end_sessions(
        self,
        user_id: int,
        reason: str,
        *,
        session_id: int | None = None,
        keep: ConnectionState | None = None,
    ) -> None:
        """Log out every open connection of `user_id` (only those on `session_id`, if given)
        but `keep`; their next request is told `reason`."""
        for state in self.connections:
            if state is keep or state.user is None or state.user.id != user_id:
                continue
            if session_id is None or state.session_id == session_id:
                state.end(reason)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (SQLite, hashing, decoding) off the event loop."""
        return await _in_pool(self.executor, functools.partial(fn, *args, **kwargs))

    async def db_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, ...)` with the worker thread's own database connection."""
        return await _in_pool(self.executor, lambda: fn(self.db.conn, *args, **kwargs))

    async def quick_db_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`db_call` for work that takes a millisecond or two.

        Under load the main executor's queue holds a request from nearly every client, so a
        checkout waited behind forty searches (a quarter of a second at 50 clients). Only
        bounded, small work may come here: the lane is short because its calls are.
        """
        pool = self.quick_executor or self.executor
        return await _in_pool(pool, lambda: fn(self.db.conn, *args, **kwargs))


async def _in_pool(pool: ThreadPoolExecutor, call: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, call)


def _log_unanswered(what: str, exc: BaseException) -> None:
    """The outcome of work whose client left, which no request line will tell: that line said
    "disconnected" when the client went. A refusal (VitrineError) is what a request line would
    have logged at INFO, with its code; anything else (a database or disk error, a bug) lost
    an upload the client may believe sent, so it is an ERROR with its traceback, as a request's
    own unexpected failure is (service.connection)."""
    if isinstance(exc, VitrineError):
        log.info(
            "%s, whose client had left, was refused: outcome=%s %.200r",
            what,
            exc.code.value,
            exc.message,
        )
        return
    log.error("%s failed after its client had left (no one was told)", what, exc_info=exc)


@dataclass(eq=False)  # identity: one per connection, kept in Services.connections
class ConnectionState:
    peer: str
    user: User | None = None
    session_id: int | None = None
    #: Per-connection state owned by feature modules (listing cursors, for example).
    extras: dict[str, Any] = field(default_factory=dict)
    #: Why this connection's session was ended from elsewhere, told to its next request.
    ended: str | None = None
    #: Ends the session when it expires (`expire_at`); called early, it cancels that.
    _expiry: weakref.finalize | None = field(default=None, init=False, repr=False)

    def start(self, user: User, session_id: int) -> None:
        """Someone logged in; a different user than before inherits none of their listings
        (a `More` on the last user's cursor would page through what only they could see)."""
        self._cancel_expiry()
        if self.user is None or self.user.id != user.id:
            self.extras.clear()
        self.user, self.session_id, self.ended = user, session_id, None

    def expire_at(self, when: float) -> None:
        """End this connection's session at `when` (seconds since the epoch, as the database
        has it), telling its next request `SESSION_EXPIRED`.

        Expiry was only checked at Login and Resume, so a connection that kept talking stayed
        logged in for good. A timer ends it instead of a check of the clock on every read of
        `user`: the session then ends between two steps of the event loop, as one ended from
        another connection does, and never between two reads of `user` in one step. The
        timer holds the state weakly, and is cancelled when the session ends sooner or the
        state is collected (its connection closed), so closed connections leave no timers
        behind for the rest of the session's lifetime."""
        self._cancel_expiry()
        if self.session_id is None:
            return
        session_id, state = self.session_id, weakref.ref(self)

        def expire() -> None:
            current = state()
            if current is not None and current.session_id == session_id:
                current.end(SESSION_EXPIRED)

        loop = asyncio.get_running_loop()
        handle = loop.call_later(max(0.0, when - time.time()), expire)
        self._expiry = weakref.finalize(self, handle.cancel)
        self._expiry.atexit = False

    def end(self, reason: str | None = None) -> None:
        """Nobody logged in; what the last user listed is forgotten with them."""
        self._cancel_expiry()
        self.user, self.session_id, self.ended = None, None, reason
        self.extras.clear()

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry()  # cancels the timer, once
            self._expiry = None


@dataclass
class RequestContext:
    services: Services
    connection: ConnectionState

    @property
    def user(self) -> User:
        """The logged-in user; routes that need login are only called with one (the session
        may still end while the request runs: it is then told why)."""
        if self.connection.user is None:
            raise VitrineError(ErrorCode.UNAUTHENTICATED, self.connection.ended or "Log in first.")
        return self.connection.user
