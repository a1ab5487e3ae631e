"""Assembling the server from its parts, serving it, and a clean stop on SIGINT/SIGTERM/SIGHUP.

The data directory is opened only once it has passed the refusals of `service.data_dir`, and
the TLS identity (`service.identity`) is taken only after that; this module puts the
database, the blob store, the thread pools and the engines together (`open_services`), and
runs the listening socket until a signal (`serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import sqlite3
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from repository import images as image_repo
from repository.blobstore import BlobStore, KeyFileError, load_or_create_key
from repository.database import Database, SchemaTooNew, server_id
from service import (  # noqa: F401  (they register their routes)
    accounts,
    colour_backfill,
    colour_search,
    image_search,
    images,
    listings,
    orders,
    similarity,
)
from service.auth import DeviceTokens, LoginThrottle
from service.connection import Connection, ConnectionLimits
from service.context import ServerConfig, Services
from service.data_dir import (
    BLOB_DIR,
    BLOB_KEY_FILE,
    DB_FILE,
    DataDirError,
    database_too_new,
    lock_data_dir,
    lost_blob_key,
    lost_database,
    missing_blob_dir,
    newer_database,
    prepare_data_dir,
    restrict_to_owner,
    unreadable_database,
    wrong_blob_key,
)
from service.identity import Identity

log = logging.getLogger("vitrine.server")


class CannotListen(Exception):
    """The address cannot be served: in use, not this machine's, or a privileged port."""


#: Threads for durable blob writes (Services.io_executor). Two keep the disk busy at 100+
#: uploads/s (about 2 ms of fsync waits per upload); four cost twice the CPU in GIL and
#: wake-up traffic during bulk ingest (2.8 against 1.45 ms per upload with one, one run each).
IO_WORKERS = 2
#: Seconds a stopping server gives uploads whose clients left (`Services.finish_regardless`)
#: to be stored; a pipeline of 32 decodes takes a few seconds.
UNFINISHED_WAIT_S = 30.0


def recover(db: Database, blobs: BlobStore, purge_after_s: float) -> tuple[int, int]:
    """Start-up housekeeping, run before any upload can be in flight: purge soft-deleted
    images past their grace period, then remove every blob no row names (crash leftovers,
    purged data). Returns (images purged, blobs removed)."""
    purged = image_repo.purge_deleted(db.conn, time.time() - purge_after_s)
    removed = blobs.sweep(image_repo.referenced_blobs(db.conn))
    return purged, removed


def open_services(config: ServerConfig) -> Services:
    data_dir = prepare_data_dir(config.data_dir)
    lock_fd = lock_data_dir(data_dir)
    db: Database | None = None
    try:
        if reason := lost_database(data_dir) or database_too_new(data_dir):
            raise DataDirError(reason)
        db = Database(data_dir / DB_FILE)
        if reason := lost_blob_key(data_dir, db) or missing_blob_dir(data_dir, db.conn):
            raise DataDirError(reason)
        master_key = load_or_create_key(data_dir / BLOB_KEY_FILE)
        blobs = BlobStore(data_dir / BLOB_DIR, master_key)
        if reason := wrong_blob_key(data_dir, db.conn, blobs):
            raise DataDirError(reason)
        restrict_to_owner(data_dir)
        purged, removed = recover(db, blobs, config.purge_after_s)
    except BaseException as exc:
        if db is not None:
            db.close()
        os.close(lock_fd)
        if isinstance(exc, sqlite3.DatabaseError):
            raise DataDirError(unreadable_database(data_dir / DB_FILE, exc)) from None
        if isinstance(exc, KeyFileError):  # its message already says what to do
            raise DataDirError(str(exc)) from None
        if isinstance(exc, SchemaTooNew):  # migrate's own guard, in the same words
            raise DataDirError(newer_database(data_dir / DB_FILE, exc.version)) from None
        raise
    if purged or removed:
        log.info("start-up: purged %d deleted images, swept %d unreferenced blobs", purged, removed)
    services = Services(
        config=config,
        db=db,
        throttle=LoginThrottle(),
        # As many workers as cores: the work is mostly Python, and more threads only fight
        # over the GIL. On this 2-core machine 8 workers gave 160.8 operations/s under the
        # 50-client load (p99 546 ms), 4 gave 202.7, 2 gave 235.9 (p99 334 ms); ingest was
        # unchanged (105.7 images/s with 2). See docs/architecture.md, "Under load".
        executor=ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="vitrine-work"
        ),
        quick_executor=ThreadPoolExecutor(max_workers=2, thread_name_prefix="vitrine-quick"),
        io_executor=ThreadPoolExecutor(max_workers=IO_WORKERS, thread_name_prefix="vitrine-io"),
        blobs=blobs,
        server_id=server_id(db.conn),
        device_tokens=DeviceTokens.from_master_key(master_key),
    )
    services.extras["data_dir_lock"] = lock_fd
    # Search by image: registers the upload analyser and index hooks; loads nothing yet.
    similarity.install(services, config.weights, config.cache_dir)
    return services


def close_services(services: Services) -> None:
    """The reverse of `open_services`, once no request is running: pools, database, lock."""
    services.executor.shutdown(wait=True, cancel_futures=True)
    for pool in (services.quick_executor, services.io_executor):
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    services.db.close()
    os.close(services.extras.pop("data_dir_lock"))


#: File descriptors kept for everything but counted client connections: the database and its
#: WAL, blob files being written, the model, the listening socket.
RESERVED_FDS = 256
#: The soft open-file limit start-up asks for (as far as the hard limit allows), well above the
#: caps: connections still in their TLS handshake (up to the handshake timeout) and refused ones
#: still closing are not counted by ConnectionLimits, yet hold a descriptor each. 3,000 plain
#: TCP connections from one address held 772 descriptors, which cap + 256 barely covered.
WANTED_OPEN_FILES = 65536


def connection_cap(config: ServerConfig) -> int:
    """`config.max_connections`, after raising the soft open-file limit to WANTED_OPEN_FILES
    (or the cap plus RESERVED_FDS if more; as far as the hard limit allows), or else the cap
    lowered to what the limit leaves, with a warning.

    The cap counts connections once their TLS handshake is done, so it keeps the counted ones
    from exhausting the limit; it cannot stop a flood of handshakes (bounded by the listen
    backlog and the handshake timeout) from doing so, which is what the headroom is for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = config.max_connections + RESERVED_FDS
    wanted = max(needed, WANTED_OPEN_FILES)
    if hard != resource.RLIM_INFINITY:
        wanted = min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return config.max_connections
    cap = max(1, soft - RESERVED_FDS)
    log.warning(
        "the open-file limit (%d) leaves room for %d connections, not --max-connections %d: "
        "raise it (ulimit -n, or LimitNOFILE= in a systemd unit)",
        soft,
        cap,
        config.max_connections,
    )
    return cap


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A failed connection is the peer's problem, not a server error worth a traceback.

    This does not log plaintext or TLS 1.2 clients: asyncio passes a failed TLS handshake (an
    `ssl.SSLError`, which is an `OSError`) only to its debug log, never to this handler, so
    they go unlogged (checked: a plaintext request and a TLS 1.2 ClientHello leave no line).
    Logging them would mean doing the handshake after accepting (`start_tls`), which races
    with bytes the stream has already read."""
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        log.info("rejected connection: %s", exc)
        return
    loop.default_exception_handler(context)


async def serve(
    config: ServerConfig,
    identity: Callable[[], Identity],
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until a signal. `identity` is called once the data directory passed its
    refusals (see `identity_after_refusals`), so a refused start makes no TLS identity."""
    loop = asyncio.get_running_loop()
    # Handlers first: a signal that arrives while we open the data directory or announce
    # ourselves must still mean "stop cleanly", not a KeyboardInterrupt traceback.
    # SIGHUP too: a server started from a terminal gets it when the terminal closes, and its
    # default action would kill the process with no shutdown at all. But not when the operator
    # ignored it (`nohup server.py &`): a handler would replace nohup's SIG_IGN, and closing
    # the terminal would stop the server they asked to outlive it. SIGINT likewise: a script's
    # `server.py &` (no job control) starts it ignored, so that Ctrl-C at the program the script
    # runs next, at the same terminal, is that program's alone (Python keeps it ignored too).
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        stop.set()

    stopping = [signal.SIGTERM]
    stopping += [s for s in (signal.SIGINT, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]
    for sig in stopping:
        loop.add_signal_handler(sig, on_signal, sig)
    services = open_services(config)
    try:
        ssl_context, fingerprint = identity()
    except BaseException:
        close_services(services)
        raise
    loop.set_exception_handler(_quiet_handshake_failures)
    connections: set[asyncio.Task[None]] = set()
    limits = ConnectionLimits(connection_cap(config), config.max_connections_per_address)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await Connection(services, reader, writer, limits).serve()
        except asyncio.CancelledError:
            # Cancelled by shutdown: asyncio's stream callback would log it as an error.
            pass
        finally:
            connections.discard(task)

    try:
        server = await asyncio.start_server(
            on_connect,
            config.host,
            config.port,
            ssl=ssl_context,
            ssl_handshake_timeout=min(config.handshake_timeout_s, config.idle_timeout_s),
            limit=2**20,
        )
    except OSError as exc:
        close_services(services)
        raise CannotListen(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    host, port = server.sockets[0].getsockname()[:2]
    announce(f"Vitrine server listening on {host}:{port}")
    announce(f"Certificate fingerprint {fingerprint}")
    # What start-up built (modules, services) lives as long as the server: keep it out of the
    # collector's full passes, which would otherwise rescan it on the request path.
    gc.freeze()
    # The model and the index load in the background, after we already answer.
    similarity.start(services)
    colour_search.start(services)
    colour_backfill.start(services)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        server.close()
        for task in list(connections):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*connections, return_exceptions=True), 5)
        # First: it would go on decoding through the waits below (the rest waits for the next
        # start, which goes on where it stopped).
        await asyncio.to_thread(colour_backfill.stop, services)
        if services.unfinished:
            log.info("finishing %d uploads whose clients left", len(services.unfinished))
            done, left = await asyncio.wait(services.unfinished, timeout=UNFINISHED_WAIT_S)
            # Their requests were logged "disconnected" when the clients left: say what became
            # of them, or the operator would think them lost.
            refused = sum(1 for task in done if task.cancelled() or task.exception() is not None)
            log.info(
                "uploads whose clients left: %d stored, %d refused or failed",
                len(done) - refused,
                refused,
            )
            if left:
                log.warning(
                    "%d uploads whose clients left were not finished within %.0f s; the next "
                    "start removes what they wrote",
                    len(left),
                    UNFINISHED_WAIT_S,
                )
        try:
            await asyncio.to_thread(similarity.stop, services)  # saves the vector index
        except Exception:
            log.exception("stopping search by image failed")
        await asyncio.to_thread(colour_search.stop, services)
        close_services(services)
        # After a SIGHUP the terminal may be gone: the stop is done, whether or not it is told.
        with contextlib.suppress(OSError):
            announce("Vitrine server stopped")
