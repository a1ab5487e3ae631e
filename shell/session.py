"""The shell's hold on one server: the connection, who is logged in, and getting both back.

A resume token (kept in memory only, never on disk) lets the shell reconnect after the server
went away and carry on as the same user without asking for the password again. A device token
(kept on disk, owner-only, per server address and pinned certificate, and per account) is no
credential by itself: presented with the password at the next login, it keeps the owner from
being refused while strangers guess at the account (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from protocol.base import Request, Response
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import (
    MAX_DEVICE_TOKEN_LENGTH,
    SESSION_LIFETIME_S,
    ChangePassword,
    Login,
    Logout,
    Resume,
    Session,
    UserInfo,
    WhoAmI,
    canonical_username,
)
from protocol.pinning import PinningError
from shell.connection import ConnectionLost, ServerConnection
from util.config import private_directory
from util.files import side_file_lock, write_atomically

R = TypeVar("R", bound=Response)


#: The device tokens' file in the config directory, beside known_servers.
DEVICE_TOKENS_FILE = "device_tokens"
#: The side file `DeviceTokenStore` locks while it rewrites the tokens.
DEVICE_TOKENS_LOCK = "device_tokens.lock"
#: What the server's tokens are made of (unpadded base64url); anything else was not issued by
#: a Vitrine server, and could only get the next login refused.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+")


def acceptable_token(token: str) -> bool:
    """A token the server would read: base64url, no longer than the protocol allows."""
    return len(token) <= MAX_DEVICE_TOKEN_LENGTH and _TOKEN_SHAPE.fullmatch(token) is not None


def server_key(connection: ServerConnection) -> str:
    """Whose tokens these are: the address and the certificate fingerprint it is pinned to.
    Not `Welcome.server_id`, which any server can claim: a server must hold the pinned key of
    the address to be given, or to replace, the tokens of the server there."""
    return f"{connection.server} {connection.fingerprint}"


def _device_token_refused(exc: VitrineError) -> bool:
    """The server could not read the request because of the device token it carried (a
    server whose bound is shorter than this shell's, say): worth asking once without it."""
    return exc.code is ErrorCode.BAD_REQUEST and "device_token" in exc.message


def _fields_unknown(exc: VitrineError) -> bool:
    """A server from before device tokens refused their fields unread, password unchecked."""
    return exc.code is ErrorCode.BAD_REQUEST and "unknown field" in exc.message


class DeviceTokenStore:
    """The device tokens this client was given, by server (`server_key`) and account, in a JSON
    file only its owner can read.

    Losing the file costs nothing but the exemption it gives, so an unreadable or damaged file
    reads as empty and a failed write is ignored: neither may stop a login. A token the server
    could not read is neither kept nor presented, for the same reason.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            server: {a: t for a, t in accounts.items() if isinstance(t, str)}
            for server, accounts in data.items()
            if isinstance(accounts, dict)
        }

    def get(self, server: str, account: str) -> str:
        """The token for `account` on `server`, "" if none (or none the server could read)."""
        token = self._read().get(server, {}).get(account, "")
        return token if acceptable_token(token) else ""

    def put(self, server: str, account: str, token: str) -> None:
        """Read, change and rewrite under a lock: two shells logging in at once (other
        accounts, other servers) would otherwise each rewrite the file they read, and the later
        rename drop the other's token, and with it the owner's exemption from the lockout."""
        if not acceptable_token(token):
            return
        with contextlib.suppress(OSError):
            private_directory(self.path.parent)
            with side_file_lock(self.path.with_name(DEVICE_TOKENS_LOCK)):
                data = self._read()
                data.setdefault(server, {})[account] = token
                write_atomically(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


class ServerLogoutFailed(ConnectionError):
    """The shell has forgotten the session, but the server could not be told to end it.

    A ConnectionError so the shell reports it like any unreachable server (and a script's exit
    status says something did not happen); the logout itself is already done here."""


class ClientSession:
    def __init__(self, connection: ServerConnection, notify: Callable[[str], None]) -> None:
        self.connection = connection
        self.notify = notify
        self.user: str | None = None
        self.admin = False
        self._token: str | None = None
        #: When the held token was issued: the server ends its session SESSION_LIFETIME_S later.
        self._token_since = 0.0
        #: The account the user logged in to, as asked for (canonical): its device token's name.
        self._account: str | None = None

    @property
    def server(self) -> str:
        return self.connection.server

    def ensure_connected(self) -> None:
        """Reconnect (and resume the session) if the connection was lost since the last command."""
        if self.connection.connected:
            return
        was = self.connection.close_reason
        self.connection.connect()
        if self._token is None:
            self.notify(f"Reconnected to {self.server} ({was}).")
            return
        try:
            session = self.connection.call(Resume(id=0, token=self._token), Session)
        except VitrineError as exc:
            self._forget()
            self.notify(
                f"Reconnected to {self.server}, but the session could not be resumed: {exc.message}"
            )
            return
        self.notify(
            f"Reconnected to {self.server} ({was}) and resumed the session as {session.name}."
        )

    def call(self, request: Request, expect: type[R] | None = None) -> R:
        self.ensure_connected()
        return self.connection.call(request, expect)

    def submit(self, request: Request) -> Future[Response]:
        return self.connection.submit(request)

    def submit_all(self, requests: Sequence[Request]) -> list[Future[Response]]:
        return self.connection.submit_all(requests)

    def stream(self, request: Request) -> Iterator[Response]:
        self.ensure_connected()
        return self.connection.stream(request)

    def login(self, name: str, password: str, devices: DeviceTokenStore | None = None) -> Session:
        """With `devices`, present this account's device token and keep the new one."""
        self.ensure_connected()  # the server's address and pinned key name its device tokens
        # The token is filed under the name asked for, never the one the server answers with:
        # a server must not choose which account's token it replaces.
        account = canonical_username(name)
        held = devices.get(server_key(self.connection), account) if devices and account else ""
        remember = devices is not None
        request = Login(
            id=0, name=name, password=password, device_token=held, remember_device=remember
        )
        try:
            session = self.call(request, Session)
        except VitrineError as exc:
            if _fields_unknown(exc):  # ask again as the clients of the server's time did
                session = self.call(Login(id=0, name=name, password=password), Session)
            elif held and _device_token_refused(exc):  # a bad token must not lock the user out
                request = Login(id=0, name=name, password=password, remember_device=remember)
                session = self.call(request, Session)
            else:
                raise
        self._account = account
        return self._adopt(session, devices, account)

    def change_password(
        self, old: str, new: str, devices: DeviceTokenStore | None = None
    ) -> Session:
        """The server revokes every token of the user, the one held here too, and answers with
        a new one: keep it, or the next reconnect could not resume. The change also ends the
        user's device tokens; with `devices`, the new one is kept."""
        account = self._account
        request = ChangePassword(
            id=0, old_password=old, new_password=new, remember_device=devices is not None
        )
        try:
            session = self.call(request, Session)
        except VitrineError as exc:
            if devices is None or not _fields_unknown(exc):
                raise
            # A server from before device tokens refused the request unread: nothing changed.
            session = self.call(ChangePassword(id=0, old_password=old, new_password=new), Session)
        return self._adopt(session, devices, account)

    def _adopt(
        self,
        session: Session,
        devices: DeviceTokenStore | None = None,
        account: str | None = None,
    ) -> Session:
        if devices is not None and account and session.device_token:
            devices.put(server_key(self.connection), account, session.device_token)
        return self._adopt_session(session)

    def _adopt_session(self, session: Session) -> Session:
        self.user, self.admin, self._token = session.name, session.admin, session.resume_token
        self._token_since = time.time()
        return session

    def logout(self) -> None:
        """End the session here whatever happens, then on the server if it can be reached.

        `logout` is for good: a token kept because the server was down (or its identity could
        not be trusted) would silently resume the session at the next command. Raises
        ServerLogoutFailed, after forgetting the token, when the server was not told."""
        name, held, expires = self.user, self._token, self._token_since + SESSION_LIFETIME_S
        try:
            self.call(Logout(id=0))
        except (ConnectionError, ConnectionLost, PinningError) as exc:
            if held is None:
                raise  # no session to end: a plain failure to reach the server
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires))
            # Lost mid-request, the logout may have arrived; a failed connect never sent it.
            told = "may not have been" if isinstance(exc, ConnectionLost) else "was not"
            raise ServerLogoutFailed(
                f"{exc}\nLogged out {name} in this shell only: the server {told} told, and "
                f"ends the session there on its own at {until} (7 days after the login)."
            ) from None
        except VitrineError as exc:
            if exc.code is not ErrorCode.UNAUTHENTICATED:
                raise
        finally:
            self._forget()

    def recheck_login(self) -> None:
        """After an UNAUTHENTICATED answer while logged in, ask whether the server still has
        this connection logged in. A wrong password (login, change_password) leaves it so; a
        logout or a password change on another connection ends it, and the shell must then
        stop offering the user's commands instead of failing every one of them."""
        if self.user is None or not self.connection.connected:
            return
        try:
            self.connection.call(WhoAmI(id=0), UserInfo)
        except VitrineError as exc:
            if exc.code is ErrorCode.UNAUTHENTICATED:
                self._forget()
        except ConnectionLost:
            pass  # the next command reconnects and resumes, or says it cannot

    def _forget(self) -> None:
        self.user, self.admin, self._token, self._account = None, False, None, None
