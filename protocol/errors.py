"""Error codes shared by both ends of the wire.

A code tells a program what went wrong; the sentence that travels with it tells a person what to
do about it. Keeping both in one exception type lets any layer raise an error that reaches the
client unchanged, without a translation table in between.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    TOO_LARGE = "TOO_LARGE"
    UNSUPPORTED_IMAGE = "UNSUPPORTED_IMAGE"
    RATE_LIMITED = "RATE_LIMITED"
    OUT_OF_STOCK = "OUT_OF_STOCK"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class VitrineError(Exception):
    """An error with a wire code and a sentence a person can act on.

    Raised on the server by handlers (and sent as an `Error` message) and on the client when an
    `Error` message arrives, so both sides handle failures the same way.
    """

    def __init__(self, code: ErrorCode, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
