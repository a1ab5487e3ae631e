"""The shape every wire message shares.

Messages are msgspec Structs in one tagged union: the `type` field names the Struct, so the
decoder picks and validates the right type in one pass, and unknown fields are refused rather
than silently dropped (a typo in a client is a bug worth hearing about).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

import msgspec

#: Request ids are chosen by the client; they only need to be unique among its requests in flight.
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**53)]

#: Bounded texts stop a client from making the server hold or store absurd amounts.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MAX_PASSWORD_LENGTH = 1024
#: A new password's least length: the server's rule (service.auth), which the shell checks
#: before asking for the password a second time.
MIN_PASSWORD_LENGTH = 8
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
#: A new account's name (service.auth, after lowercasing), which the shell checks before asking
#: for a password: a name the server will refuse should not cost the user two password entries.
USERNAME_RULE = re.compile(r"[a-z0-9][a-z0-9._-]{2,31}")
USERNAME_RULE_TEXT = (
    "3 to 32 characters: lowercase letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)


def normalise_password(password: str) -> str:
    """NFC: "é" typed on macOS (decomposed, NFD) and elsewhere (composed) is one password. Here
    so that the server, which hashes and measures this form, and the shell, which checks a new
    password's length and compares it with the old one before sending, count alike."""
    return unicodedata.normalize("NFC", password)


class Message(msgspec.Struct, tag=True, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Base of every frame body."""


class Request(Message):
    """Sent by the client; the server answers with a Response that carries the same id."""

    id: RequestId


class Response(Message):
    """Sent by the server; `id` is the request it answers (0 when the request was unreadable)."""

    id: RequestId
