"""Image, search and cart messages (filled in by the catalogue work; see docs/protocol.md)."""

from __future__ import annotations

from protocol.base import Request, Response

REQUESTS: tuple[type[Request], ...] = ()
RESPONSES: tuple[type[Response], ...] = ()
