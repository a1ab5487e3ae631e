"""Handshake, generic replies and account messages.

Other groups of messages live beside this file (one module per area of the product); `codec`
gathers them all into the tagged unions the decoders use.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.base import Name, Password, Request, Response, Token
from protocol.errors import ErrorCode

#: Bumped on any incompatible change to a message; `Hello` refuses a mismatch with a clear message.
PROTOCOL_VERSION = 1


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What the server accepts, sent in `Welcome` so a client can check before it sends."""

    max_frame_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    max_batch: int
    max_in_flight: int
    idle_timeout_s: float


# --- handshake -----------------------------------------------------------------------------------


class Hello(Request):
    protocol: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    client: Annotated[str, msgspec.Meta(max_length=100)] = ""


class Welcome(Response):
    protocol: int
    server_version: str
    limits: Limits
    #: Random, made with the server's data: the same shop whatever its address or certificate.
    server_id: str = ""


# --- generic replies -----------------------------------------------------------------------------


class Ok(Response):
    pass


class Error(Response):
    code: ErrorCode
    message: str
    details: list[str] = []


# --- accounts ------------------------------------------------------------------------------------


class CreateUser(Request):
    name: Name
    password: Password


class Login(Request):
    name: Name
    password: Password


class Resume(Request):
    """Re-attach a session to a new connection without the password (see docs/security.md)."""

    token: Token


class Logout(Request):
    pass


class WhoAmI(Request):
    pass


class ChangePassword(Request):
    """Answered by a `Session` with a new token: every earlier token of the user is revoked,
    this connection's too, and other connections logged in as the user are logged out."""

    old_password: Password
    new_password: Password


class UserInfo(Response):
    name: str
    admin: bool


class Session(Response):
    """Answer to Login, Resume and ChangePassword: who you are now and the token that resumes
    this session."""

    name: str
    admin: bool
    resume_token: str


REQUESTS: tuple[type[Request], ...] = (
    Hello,
    CreateUser,
    Login,
    Resume,
    Logout,
    WhoAmI,
    ChangePassword,
)
RESPONSES: tuple[type[Response], ...] = (Welcome, Ok, Error, UserInfo, Session)
