"""Which handler answers which request type, and what it needs first.

Handler modules register themselves with `@route(RequestType)`; the connection loop looks the
request's type up here. Keeping the table in one place means the permission rule (login
required unless a route says otherwise) is applied by the loop, never forgotten by a handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from protocol.base import Request, Response


@dataclass(frozen=True, slots=True)
class Frames:
    """A reply already framed and encoded, written as it is: listings build and encode their
    batches in the executor, next to the query, so the event loop (which every connection
    shares) only writes bytes."""

    data: bytes


Reply = Response | Frames
Handler = Callable[[Any, Any], Awaitable[Reply]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Route:
    handler: Handler
    needs_login: bool
    #: Runs alone: the loop waits for requests in flight and reads nothing new until it is done.
    #: Used where a request changes who the connection is (login, logout).
    exclusive: bool


ROUTES: dict[type[Request], Route] = {}


def route(
    request_type: type[Request], *, needs_login: bool = True, exclusive: bool = False
) -> Callable[[H], H]:
    def register(handler: H) -> H:
        if request_type in ROUTES:
            raise RuntimeError(f"{request_type.__name__} has two handlers")
        ROUTES[request_type] = Route(handler, needs_login, exclusive)
        return handler

    return register
