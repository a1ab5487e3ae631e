"""Turning frame bodies into typed messages and back.

Every message module contributes its `REQUESTS` and `RESPONSES`; this module joins them into the
two tagged unions so that a decoder validates a body completely (type, field types, ranges) in
one msgspec call. Anything wrong becomes a `MessageError` that names the request id when it can,
so the server can answer the right request instead of dropping the connection.
"""

from __future__ import annotations

import re
from typing import Any, Union

import msgspec

from protocol import catalog, messages
from protocol.base import Message, Request, Response
from protocol.errors import ErrorCode

_MODULES = (messages, catalog)

REQUEST_TYPES: tuple[type[Request], ...] = tuple(t for m in _MODULES for t in m.REQUESTS)
RESPONSE_TYPES: tuple[type[Response], ...] = tuple(t for m in _MODULES for t in m.RESPONSES)

AnyRequest = Union[REQUEST_TYPES]  # type: ignore[valid-type]  # noqa: UP007
AnyResponse = Union[RESPONSE_TYPES]  # type: ignore[valid-type]  # noqa: UP007


class MessageError(Exception):
    """A frame body that is not a valid message; `request_id` is set when it could be read."""

    def __init__(self, message: str, request_id: int = 0) -> None:
        super().__init__(message)
        self.code = ErrorCode.BAD_REQUEST
        self.message = message
        self.request_id = request_id


class _Envelope(msgspec.Struct):
    """Just enough of a message to answer it when the rest is wrong."""

    id: Any = None
    type: Any = None


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AnyRequest)
_response_decoder = msgspec.msgpack.Decoder(AnyResponse)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def _salvage_id(body: bytes) -> int:
    try:
        envelope = _envelope_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        # A kilobyte of nested arrays is enough to exhaust the recursion limit while the
        # envelope skips over them: that is still only a bad request, without an id.
        return 0
    request_id = envelope.id
    if (
        isinstance(request_id, int)
        and not isinstance(request_id, bool)
        and 0 <= request_id <= 2**53
    ):
        return request_id
    return 0


#: How msgspec says that a body holds a whole message and stray bytes after it (where they start).
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")


def _decode(decoder: msgspec.msgpack.Decoder, body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise MessageError(f"Invalid message: {exc}", _salvage_id(body)) from None
    except msgspec.DecodeError as exc:
        # A whole message with stray bytes after it: its id is readable, so that its refusal
        # answers it (msgspec refuses the whole body, and says where the message ended).
        trailing = _TRAILING.search(str(exc))
        request_id = _salvage_id(body[: int(trailing.group(1))]) if trailing else 0
        raise MessageError(f"Malformed MessagePack: {exc}", request_id) from None
    except RecursionError:
        raise MessageError("Malformed MessagePack: values nested too deeply", 0) from None
    except UnicodeDecodeError as exc:
        # msgspec lets a string that is not UTF-8 escape as this rather than as a DecodeError.
        raise MessageError(
            f"Malformed MessagePack: a string is not valid UTF-8 (byte {exc.start} of it)",
            _salvage_id(body),
        ) from None


def decode_request(body: bytes) -> Request:
    return _decode(_request_decoder, body)


def decode_response(body: bytes) -> Response:
    return _decode(_response_decoder, body)
