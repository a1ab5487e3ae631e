"""Assembling the server: data directory, database, TLS identity, the listening socket, and a
clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from protocol import tls
from repository.database import Database
from service import accounts  # noqa: F401  (registers the account routes)
from service.auth import LoginThrottle
from service.connection import Connection
from service.context import ServerConfig, Services

log = logging.getLogger("vitrine.server")


def prepare_data_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_services(config: ServerConfig) -> Services:
    data_dir = prepare_data_dir(config.data_dir)
    db = Database(data_dir / "vitrine.db")
    return Services(
        config=config,
        db=db,
        throttle=LoginThrottle(),
        executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="vitrine-work"),
    )


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A plaintext or TLS 1.2 client is the peer's problem, not a server error worth a traceback."""
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        log.info("rejected connection: %s", exc)
        return
    loop.default_exception_handler(context)


async def serve(
    config: ServerConfig,
    ssl_context: ssl.SSLContext,
    fingerprint: str,
    announce: Callable[[str], None] = print,
) -> None:
    services = open_services(config)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_handshake_failures)
    connections: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await Connection(services, reader, writer).serve()
        finally:
            connections.discard(task)

    server = await asyncio.start_server(
        on_connect,
        config.host,
        config.port,
        ssl=ssl_context,
        ssl_handshake_timeout=min(config.handshake_timeout_s, config.idle_timeout_s),
        limit=2**20,
    )
    host, port = server.sockets[0].getsockname()[:2]
    announce(f"Vitrine server listening on {host}:{port}")
    announce(f"Certificate fingerprint {fingerprint}")

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        server.close()
        for task in list(connections):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*connections, return_exceptions=True), 5)
        services.executor.shutdown(wait=True, cancel_futures=True)
        services.db.close()
        announce("Vitrine server stopped")


def tls_identity(
    config: ServerConfig, cert: Path | None, key: Path | None
) -> tuple[ssl.SSLContext, str]:
    if (cert is None) != (key is None):
        raise SystemExit("--tls-cert and --tls-key go together: give both or neither.")
    if cert is None or key is None:
        cert, key = tls.ensure_self_signed(prepare_data_dir(config.data_dir))
    return tls.server_context(cert, key), tls.certificate_fingerprint(cert)
