"""A stand-in for the shell's ClientSession in unit tests of commands: a logged-in user, and a
record of the requests a command would have sent. Each test adds the answers it needs."""

from __future__ import annotations

from protocol.base import Request


class RecordingSession:
    user = "alice"
    admin = False
    server = "test:1"

    def __init__(self) -> None:
        self.sent: list[Request] = []

    def ensure_connected(self) -> None:
        pass
