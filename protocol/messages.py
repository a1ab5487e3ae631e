"""Handshake, generic replies and account messages.

Other groups of messages live beside this file (one module per area of the product); `codec`
gathers them all into the tagged unions the decoders use.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.base import (
    USERNAME_RULE,
    USERNAME_RULE_TEXT,
    Name,
    Password,
    Request,
    Response,
    Token,
)
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

#: How long a resume token lasts after the login that made it: the server's default
#: (service.context.ServerConfig) and what the shell tells a user whose logout did not arrive.
SESSION_LIFETIME_S = 7 * 24 * 3600


def canonical_username(name: str) -> str | None:
    """The account a typed name means (names are case-insensitive), None if no account can
    have it: one rule for the server, which enforces it, and the shell, which checks it
    before asking for a password."""
    normalised = name.strip().lower()
    return normalised if USERNAME_RULE.fullmatch(normalised) else None


def invalid_username(shown: str) -> str:
    """The sentence for a name outside the rule; `shown` is the name as the caller quotes it."""
    return f"Invalid user name {shown}: use {USERNAME_RULE_TEXT}."


#: The longest device token the server reads (and the shell keeps): the server's are 86.
MAX_DEVICE_TOKEN_LENGTH = 256
#: A device token as presented, "" for none; bounded like a resume token.
DeviceToken = Annotated[str, msgspec.Meta(max_length=MAX_DEVICE_TOKEN_LENGTH)]


class CreateUser(Request):
    name: Name
    password: Password


class Login(Request, omit_defaults=True):
    """`device_token`: one a `Session` gave this client for this account earlier, which keeps
    the owner's client from being refused for strangers' guesses (docs/security.md); an invalid
    one is treated as none. `remember_device`: answer with a new device token. Both default to
    what a client from before device tokens means and are then left off the wire: a server
    from before them refuses unknown fields, and is asked exactly as its clients asked."""

    name: Name
    password: Password
    device_token: DeviceToken = ""
    remember_device: bool = False


class Resume(Request):
    """Re-attach a session to a new connection without the password (see docs/security.md)."""

    token: Token


class Logout(Request):
    pass


class WhoAmI(Request):
    pass


class ChangePassword(Request, omit_defaults=True):
    """Answered by a `Session` with a new token: every earlier token of the user is revoked,
    this connection's too, and other connections logged in as the user are logged out.
    `remember_device` is left off the wire when false, as `Login`'s fields are."""

    old_password: Password
    new_password: Password
    #: Answer with a device token for the new password (the change ends the earlier ones).
    remember_device: bool = False


class UserInfo(Response):
    name: str
    admin: bool


class Session(Response, omit_defaults=True):
    """Answer to Login, Resume and ChangePassword: who you are now and the token that resumes
    this session.

    `device_token` is sent only to a client that asked for one (`remember_device`), and
    defaults are left off the wire: a client from before the field refuses unknown fields."""

    name: str
    admin: bool
    resume_token: str
    device_token: str = ""


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
