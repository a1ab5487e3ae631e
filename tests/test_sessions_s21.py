"""Session 21 session fixes: the sessions table no longer only grows (schema v11 indexes it by
user and by expiry, drops the rows already expired, and each new session deletes a few expired
ones), a connection that keeps talking is logged out when its session expires, and a login
name no account can have is answered as a wrong password without a count in the throttle.

The migration and the purge on a real SQLite file; the expiry over a real TLS connection to
the server's own `Connection` run in this process, since only a `ServerConfig` sets the session
lifetime (a server process would need 7 days); the login handler with real SQLite.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import codec, framing
from protocol.base import Response
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import (
    PROTOCOL_VERSION,
    CreateUser,
    Error,
    Hello,
    Login,
    Resume,
    Session,
    UserInfo,
    WhoAmI,
)
from repository import accounts
from repository.database import Database, migrate
from repository.migrations import MIGRATIONS
from service.accounts import BAD_CREDENTIALS, SESSION_ENDED, create_user, login
from service.app import close_services, open_services
from service.auth import LoginThrottle
from service.connection import Connection
from service.context import SESSION_EXPIRED, ConnectionState, RequestContext, ServerConfig
from service.identity import tls_identity
from tests.rows import database_at

PASSWORD = "correct horse battery"
REVOKE_ALL = "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL"


def _plan(conn: sqlite3.Connection, sql: str, params: tuple) -> str:
    return " / ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def _add_session(conn: sqlite3.Connection, user_id: int, token: bytes, expires_at: float) -> None:
    conn.execute(
        "INSERT INTO sessions (user_id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (user_id, token, expires_at - 3600.0, expires_at),
    )


def _tokens(conn: sqlite3.Connection) -> set[bytes]:
    return {bytes(row[0]) for row in conn.execute("SELECT token_hash FROM sessions")}


def test_v11_indexes_sessions_and_drops_the_expired_ones(tmp_path: Path) -> None:
    conn = database_at(tmp_path / "v10.db", 10)
    user_id = accounts.create_user(conn, "pat", "hash").id
    now = time.time()
    assert "SCAN sessions" in _plan(conn, REVOKE_ALL, (now, user_id))  # what the review found
    _add_session(conn, user_id, b"old", now - 86400.0)
    _add_session(conn, user_id, b"just-gone", now - 1.0)
    _add_session(conn, user_id, b"live", now + 86400.0)

    assert migrate(conn) == len(MIGRATIONS) >= 11
    assert _tokens(conn) == {b"live"}
    assert "USING INDEX sessions_by_user (user_id=?)" in _plan(conn, REVOKE_ALL, (now, user_id))
    purge = "SELECT id FROM sessions WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"
    assert "USING COVERING INDEX sessions_by_expiry (expires_at<?)" in _plan(conn, purge, (now, 16))
    assert migrate(conn) == len(MIGRATIONS)  # and again: nothing left to do
    conn.close()


def test_each_new_session_deletes_a_bounded_number_of_expired_ones(tmp_path: Path) -> None:
    """Oldest first, of any user, never a live or a revoked-but-unexpired one (its revocation
    is what refuses its token until then)."""
    db = Database(tmp_path / "accounts.db")
    conn = db.conn
    pat = accounts.create_user(conn, "pat", "hash").id
    gone = accounts.create_user(conn, "gone", "hash").id  # never logs in again
    now = time.time()
    backlog = accounts.PURGE_PER_SESSION + 4
    for index in range(backlog):
        _add_session(conn, gone, b"expired-%d" % index, now - 1000.0 + index)
    _add_session(conn, gone, b"live", now + 3600.0)
    _add_session(conn, gone, b"revoked", now + 3600.0)
    conn.execute("UPDATE sessions SET revoked_at = ? WHERE token_hash = ?", (now, b"revoked"))

    made = accounts.create_session(conn, pat, b"new", 3600.0, "hash")
    assert made is not None
    session_id, expires_at = made
    assert accounts.session_expires_at(conn, session_id) == pytest.approx(expires_at)
    left = {b"expired-%d" % index for index in range(accounts.PURGE_PER_SESSION, backlog)}
    assert _tokens(conn) == left | {b"live", b"revoked", b"new"}
    # the next logins drain the rest: each deletes more dead rows than it adds
    assert accounts.create_session(conn, pat, b"newer", 3600.0, "hash") is not None
    assert _tokens(conn) == {b"live", b"revoked", b"new", b"newer"}
    db.close()


# --- a live connection past its session's lifetime -----------------------------------------------


class InProcessServer:
    """The server's own `Connection` behind real TLS, on a loop in a thread of this process."""

    def __init__(self, config: ServerConfig) -> None:
        self.services = open_services(config)
        self.ssl_context, _ = tls_identity(config, None)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the in-process server did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await Connection(self.services, reader, writer).serve()

        async def start() -> None:
            self.server = await asyncio.start_server(
                on_connect, "127.0.0.1", 0, ssl=self.ssl_context
            )
            self.port = self.server.sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def on_loop(self, work):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.on_loop(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()
        close_services(self.services)


class RawClient:
    def __init__(self, port: int) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.ids = 0
        self.call(Hello(id=0, protocol=PROTOCOL_VERSION, client="sessions-test"))

    def call(self, request: object) -> Response:
        self.ids += 1
        request.id = self.ids  # type: ignore[attr-defined]
        self.sock.sendall(framing.frame(codec.encode(request)))  # type: ignore[arg-type]
        body = framing.read_frame_blocking(self.sock, framing.DEFAULT_MAX_FRAME)
        assert body is not None, "the server closed the connection"
        return codec.decode_response(body)

    def close(self) -> None:
        self.sock.close()


LIFETIME_S = 3.0


@pytest.fixture
def short_sessions(tmp_path: Path) -> Iterator[InProcessServer]:
    server = InProcessServer(
        ServerConfig(data_dir=tmp_path / "data", session_lifetime_s=LIFETIME_S)
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_connection_that_keeps_talking_is_logged_out_when_its_session_expires(
    short_sessions: InProcessServer,
) -> None:
    client = RawClient(short_sessions.port)
    try:
        assert isinstance(client.call(CreateUser(id=0, name="erin", password=PASSWORD)), UserInfo)
        session = client.call(Login(id=0, name="erin", password=PASSWORD))
        assert isinstance(session, Session)
        assert isinstance(client.call(WhoAmI(id=0)), UserInfo)
        time.sleep(LIFETIME_S + 0.5)  # past the lifetime, on the same connection

        refused = client.call(WhoAmI(id=0))
        assert isinstance(refused, Error)
        assert (refused.code, refused.message) == (ErrorCode.UNAUTHENTICATED, SESSION_EXPIRED)
        assert "log in again" in refused.message
        resumed = client.call(Resume(id=0, token=session.resume_token))
        assert isinstance(resumed, Error) and resumed.message == SESSION_ENDED
        # a new login works, and its session deletes the expired one
        assert isinstance(client.call(Login(id=0, name="erin", password=PASSWORD)), Session)
        assert isinstance(client.call(WhoAmI(id=0)), UserInfo)
        rows = short_sessions.services.db.conn.execute("SELECT COUNT(*) FROM sessions")
        assert rows.fetchone()[0] == 1
    finally:
        client.close()


def test_a_closed_connection_leaves_no_expiry_timer_behind(tmp_path: Path) -> None:
    """Sessions last a week: a timer per closed connection kept until then would pile up."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        state = ConnectionState(peer="10.0.0.1")
        state.start(accounts.User(1, "pat", "hash", False), 1)
        state.expire_at(time.time() + 7 * 86400.0)
        (timer,) = [handle for handle in loop._scheduled if not handle.cancelled()]  # type: ignore[attr-defined]
        del state  # the connection closed without a logout
        gc.collect()
        assert timer.cancelled()

    asyncio.run(scenario())


# --- login names no account can have ------------------------------------------------------------


def test_a_name_no_account_can_have_is_a_failed_login_that_is_not_counted(tmp_path: Path) -> None:
    """It gets the wrong password's answer, but no count in the throttle: made-up names
    sprayed from one address neither refuse its owner's login nor fill the throttle."""
    services = open_services(ServerConfig(data_dir=tmp_path / "data"))
    services.throttle = LoginThrottle(base_delay=0.001, max_delay=0.001, peer_limit=3)

    async def answer(name: str, password: str = PASSWORD) -> VitrineError:
        ctx = RequestContext(services, ConnectionState(peer="10.0.0.7"))
        with pytest.raises(VitrineError) as caught:
            await login(ctx, Login(id=0, name=name, password=password))
        return caught.value

    async def scenario() -> None:
        ctx = RequestContext(services, ConnectionState(peer="10.0.0.1"))
        await create_user(ctx, CreateUser(id=0, name="owner", password=PASSWORD))
        wrong = await answer("owner", "not the password")
        for name in ["ab", "x" * 33, "bad name", "-dash", "naïve", "a;drop", "owner!"] * 3:
            refused = await answer(name)
            assert (refused.code, refused.message) == (wrong.code, wrong.message)
            assert refused.message == BAD_CREDENTIALS
        # the one wrong password so far is the peer's only count: two more are still answered
        for _ in range(2):
            assert (await answer("owner", "not the password")).message == BAD_CREDENTIALS
        assert (await answer("owner", "not the password")).code is ErrorCode.RATE_LIMITED
        # the one rule: the name as the shell and sign-up read it
        owner = RequestContext(services, ConnectionState(peer="10.0.0.1"))
        assert (await login(owner, Login(id=0, name="  OWNER ", password=PASSWORD))).name == "owner"

    try:
        asyncio.run(scenario())
    finally:
        close_services(services)
