"""Assembling the server: data directory, database, TLS identity, the listening socket, and a
clean stop on SIGINT/SIGTERM/SIGHUP.

Start-up refuses, in one sentence saying what to do, a data directory whose parts do not
belong together (docs/operations.md lists each refusal): serving it would lose data quietly."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
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
from pathlib import Path

from protocol import tls
from repository import images as image_repo
from repository.blobstore import (
    BlobAuthenticationFailed,
    BlobError,
    BlobNotFound,
    BlobStore,
    KeyFileError,
    load_or_create_key,
)
from repository.database import Database, SchemaTooNew, connect_read_only, server_id
from repository.migrations import MIGRATIONS
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

log = logging.getLogger("vitrine.server")


class DataDirError(Exception):
    """The data directory cannot be served as it stands; the message says why and what to do."""


class DataDirPathError(DataDirError):
    """--data-dir names something that cannot be a data directory: a bad argument."""


class CannotListen(Exception):
    """The address cannot be served: in use, not this machine's, or a privileged port."""


class DataDirBusy(DataDirError):
    """Another process (a running server) holds the data directory."""


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory, owner-only. A path that is a file or lies under a folder we
    may not write is the operator's to fix, so it is told in a sentence, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except FileExistsError:
        raise not_a_directory(path) from None
    except OSError as exc:
        raise DataDirPathError(
            f"cannot use {path} as the data directory: {exc.strerror}; "
            "choose another --data-dir or fix its permissions."
        ) from None
    return path


def not_a_directory(path: Path) -> DataDirPathError:
    return DataDirPathError(f"{path} is not a directory; choose another --data-dir.")


DB_FILE = "vitrine.db"
BLOB_DIR = "blobs"
BLOB_KEY_FILE = "blob.key"
LOCK_FILE = "server.lock"
#: Threads for durable blob writes (Services.io_executor). Two keep the disk busy at 100+
#: uploads/s (about 2 ms of fsync waits per upload); four cost twice the CPU in GIL and
#: wake-up traffic during bulk ingest (2.8 against 1.45 ms per upload with one, one run each).
IO_WORKERS = 2
#: Seconds a stopping server gives uploads whose clients left (`Services.finish_regardless`)
#: to be stored; a pipeline of 32 decodes takes a few seconds.
UNFINISHED_WAIT_S = 30.0


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for the life of the process.

    Two servers on one directory would each sweep the other's in-flight blobs; the kernel
    drops the lock when the process dies, even by SIGKILL, so a crash never leaves it stale.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(
            f"Another Vitrine server is using {data_dir}; stop it first or choose another "
            "--data-dir."
        ) from None
    return fd


def open_blob_store(data_dir: Path) -> BlobStore:
    return BlobStore(data_dir / BLOB_DIR, load_or_create_key(data_dir / BLOB_KEY_FILE))


def database_version(path: Path) -> int:
    """The schema version of the database at `path`, 0 if it is missing, empty or was never
    migrated. Read-only, and through the WAL a killed server leaves: a server killed right
    after its first start has its schema only there, and must not pass for a lost database.
    Raises sqlite3.DatabaseError if the file is not a readable database."""
    if not path.exists():
        return 0
    conn = connect_read_only(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def signs_of_use(data_dir: Path) -> list[str]:
    """What shows that a data directory has held images: blob files, and the key that reads
    them (created only once the database is, so never left alone by a first start)."""
    found = []
    blob_files = sum(1 for p in (data_dir / BLOB_DIR).glob("??/*") if p.is_file())
    if blob_files:
        found.append(f"{blob_files} files in {BLOB_DIR}/")
    if (data_dir / BLOB_KEY_FILE).exists():
        found.append(BLOB_KEY_FILE)
    return found


def lost_database(data_dir: Path) -> str | None:
    """Why the data directory must not be opened as new, or None if it may: a new database
    names no blob, so the start-up sweep would delete every image a failed restore or a bad
    copy of the directory left without its database."""
    db_path = data_dir / DB_FILE
    if database_version(db_path) > 0:
        return None
    found = signs_of_use(data_dir)
    if not found:
        return None
    return (
        f"{db_path} is missing or empty, but {data_dir} holds {' and '.join(found)}: "
        f"restore {DB_FILE} from a backup, or to start afresh move {BLOB_DIR}/ and "
        f"{BLOB_KEY_FILE} out of {data_dir}."
    )


def newer_database(path: Path, version: int) -> str:
    """The sentence for a database a newer Vitrine wrote (`version` above this one's). Serving
    it would read and write a schema this code does not know (a table it never fills, a
    column it never sets), and there is no step down: only that version, or the database as
    it was before the upgrade, is right. Start-up and `--check` both say this."""
    return (
        f"{path} is at schema version {version}, newer than this Vitrine's {len(MIGRATIONS)}: "
        "it was written by a newer Vitrine; run that version (or restore a backup made before "
        "the upgrade)."
    )


def database_too_new(data_dir: Path) -> str | None:
    """Why the database must not be opened because a newer Vitrine wrote it, or None. Asked
    before the database is opened, so that the refused start leaves the database as it was
    (no migration, no TLS identity made; the data directory itself is made 0700 and locked
    before this, as for every start)."""
    db_path = data_dir / DB_FILE
    version = database_version(db_path)
    return newer_database(db_path, version) if version > len(MIGRATIONS) else None


def lost_blob_key(data_dir: Path, db: Database) -> str | None:
    """Why the blob store must not be opened, or None if it may: a database that names blobs
    without the key that reads them. A new key would read none of them, and would seal every
    new upload so that the old key, restored later, could not read those either."""
    key_path = data_dir / BLOB_KEY_FILE
    if key_path.exists() or not image_repo.referenced_blobs(db.conn):
        return None
    return (
        f"{key_path} is missing, but {data_dir / DB_FILE} names stored images, which cannot be "
        f"read without it: restore {BLOB_KEY_FILE} from a backup."
    )


def missing_blob_dir(data_dir: Path, conn: sqlite3.Connection) -> str | None:
    """Why the blob store must not be opened, or None if it may: a `blobs` that is not a
    folder (every upload would fail, rows or not), or a database that names blobs but no blob
    folder, or an empty one (a restore that missed it, a volume not mounted). Serving that
    shows every image blank, and uploads meanwhile land where the real folder, once back,
    hides them. Start-up and `--check` both ask this, so they say the same."""
    blob_dir = data_dir / BLOB_DIR
    names_a_blob = conn.execute(
        "SELECT 1 FROM images WHERE blob != ? LIMIT 1", (image_repo.PURGED,)
    ).fetchone()
    if blob_dir.exists() and not blob_dir.is_dir():
        restore = (
            f"and restore {BLOB_DIR}/ from the backup of this database"
            if names_a_blob is not None
            else f"(no image needs it: the next start makes an empty {BLOB_DIR}/)"
        )
        return f"{blob_dir} is not a directory: move it aside {restore}."
    if names_a_blob is None:
        return None
    if blob_dir.is_dir() and any(p.is_file() for p in blob_dir.glob("??/*")):
        return None
    state = "is empty" if blob_dir.is_dir() else "is missing"
    return (
        f"{blob_dir} {state}, but {data_dir / DB_FILE} names stored images: restore "
        f"{BLOB_DIR}/ from the backup of this database (or mount the volume it lives on)."
    )


#: Blobs start-up tries to read before concluding the key is wrong: a missing or damaged blob
#: is not a key problem, so one alone must not stop the server.
KEY_PROBE_IMAGES = 5
KEY_PROBE_FAILURES = 3


def wrong_blob_key(data_dir: Path, conn: sqlite3.Connection, blobs: BlobStore) -> str | None:
    """Why the blob store must not be used, or None if it may: a key (another valid one, from
    the wrong backup) under which the stored blobs do not authenticate. Serving with it shows
    old images blank, misses every dedup, and seals new uploads so that the right key, once
    back, cannot read them.

    Reads the newest images' thumbnails and originals; one blob that authenticates proves the
    key. It refuses only when none did and at least KEY_PROBE_FAILURES failed, or every blob
    that is there failed and there are at least two: one blob alone cannot tell a bit-rotted
    file from a wrong key, and a damaged image must not keep a shop closed."""
    rows = conn.execute(
        "SELECT thumb_blob, blob FROM images WHERE blob != ? "
        "ORDER BY deleted_at IS NOT NULL, id DESC LIMIT ?",
        (image_repo.PURGED, KEY_PROBE_IMAGES),
    ).fetchall()
    failures = present = 0
    for names in rows:
        for name in names:
            try:
                blobs.get(name)
            except BlobAuthenticationFailed:
                failures += 1
                present += 1
            except BlobNotFound:
                continue
            except (BlobError, OSError):  # truncated, unreadable: there, but says nothing
                present += 1
                continue
            else:
                return None
        if failures >= KEY_PROBE_FAILURES:
            break
    if failures < max(2, min(KEY_PROBE_FAILURES, present)):
        return None
    return (
        f"the blob key {data_dir / BLOB_KEY_FILE} does not match the stored blobs (wrong key "
        f"restored?): put back the {BLOB_KEY_FILE} that was backed up with {DB_FILE}; "
        "`server.py --check` counts the blobs that fail under it."
    )


def restrict_to_owner(data_dir: Path) -> None:
    """Tighten what older versions created readable by others (the database, its WAL, the
    vector index); the server's umask keeps new files owner-only. Logged, like the key file."""
    index_dir = data_dir / similarity.INDEX_DIR
    paths = [data_dir / f"{DB_FILE}{suffix}" for suffix in ("", "-wal", "-shm")]
    if index_dir.is_dir() and not index_dir.is_symlink():
        paths += [index_dir, *index_dir.iterdir()]
    loosened = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            if mode & 0o077 and not path.is_symlink():
                os.chmod(path, 0o700 if path.is_dir() else 0o600)
                loosened.append(path.name)
    if loosened:
        log.warning(
            "restricted %s to the owner (they were readable by others)", ", ".join(loosened)
        )


def unreadable_database(path: Path, exc: sqlite3.DatabaseError) -> str:
    """One sentence for a database SQLite refuses; only damage calls for the backup. A file
    the server may not write is named (the database, or its -wal or -shm), with the fix: it
    would otherwise serve reads and answer every login INTERNAL."""
    name = exc.sqlite_errorname or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return f"the database {path} is damaged ({exc}); restore it from a backup."
    if name.startswith("SQLITE_READONLY"):
        files = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
        stuck = [str(f) for f in files if f.exists() and not os.access(f, os.W_OK)]
        return (
            f"the database {' and '.join(stuck) or path} cannot be written ({exc}): make it "
            "writable for the user the server runs as (chmod u+w; `lsattr` shows an immutable "
            "flag, which `chattr -i` clears; or remount the volume read-write)."
        )
    return f"cannot open the database {path}: {exc}"


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


#: The server's TLS context and its certificate's fingerprint.
Identity = tuple[ssl.SSLContext, str]


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


def identity_after_refusals(
    config: ServerConfig, tls_files: tuple[Path, Path] | None
) -> Callable[[], Identity]:
    """The TLS identity, for `serve` to take once the data directory passed its refusals.

    Existing files (--tls-cert/--tls-key, or the self-made pair, or half of it) are checked
    now, which changes nothing, so a bad one is refused before the database is opened. Only
    making a new self-signed pair waits: a start refused for its data directory must not leave
    a new identity behind, or the next start finds both files, says nothing, and every client
    that pinned the lost identity is locked out."""
    data_dir = config.data_dir
    if tls_files is None and not any(
        (data_dir / name).exists() for name in (tls.CERT_FILE, tls.KEY_FILE)
    ):
        return lambda: tls_identity(config, None)
    ready = tls_identity(config, tls_files)
    return lambda: ready


def tls_identity(config: ServerConfig, tls_files: tuple[Path, Path] | None) -> Identity:
    """The server's TLS context and its certificate's fingerprint, from `tls_files` (cert,
    key) or else the self-made pair in the data directory, made if both files are missing.
    Raises tls.TlsIdentityError with one sentence naming the file and what to do. The pair is
    one argument so that half of it cannot be passed; the command line refuses half of it."""
    if tls_files is None:
        data_dir = config.data_dir
        made = not (data_dir / tls.CERT_FILE).exists() and not (data_dir / tls.KEY_FILE).exists()
        if made:  # only then: `--check` runs this on copies it may not change (read-only ones)
            prepare_data_dir(data_dir)
        cert, key = tls.ensure_self_signed(data_dir)
        advice = (
            f"restore {tls.CERT_FILE} and {tls.KEY_FILE} from a backup, or remove both to make "
            "a new identity that every client must trust again."
        )
    else:
        (cert, key), made, advice = tls_files, False, "check --tls-cert and --tls-key."
    try:
        context = tls.server_context(cert, key)
    except tls.TlsIdentityError as exc:
        raise tls.TlsIdentityError(f"{exc}; {advice}") from None
    # No TLS 1.3 session tickets: nothing uses resumption, and tickets arrive just after the
    # handshake, exactly when the client's reader thread and its first write share the socket.
    context.num_tickets = 0
    fingerprint = tls.certificate_fingerprint(cert)
    if made and has_users(config.data_dir):
        log.warning(
            "made a new TLS identity (%s) for a data directory that already has users: every "
            "client that pinned the old one refuses this server until told to trust the new "
            "one; if %s and %s were lost, stop and restore them from a backup instead",
            fingerprint,
            tls.CERT_FILE,
            tls.KEY_FILE,
        )
    return context, fingerprint


def has_users(data_dir: Path) -> bool:
    """Whether this directory served before (the database has accounts): not a first start."""
    try:
        if database_version(data_dir / DB_FILE) == 0:
            return False
        conn = connect_read_only(data_dir / DB_FILE)
        try:
            return conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:  # a damaged database is refused by open_services
        return False
