"""Property tests of the codec: every message survives a round trip, and no byte string can make
the decoders raise anything but their own typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, framing
from tests.strategies import messages

ALL_TYPES = codec.REQUEST_TYPES + codec.RESPONSE_TYPES


@pytest.mark.parametrize("message_type", ALL_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip(message_type: type, data: st.DataObject) -> None:
    message = data.draw(messages(message_type))
    decode = codec.decode_request if message_type in codec.REQUEST_TYPES else codec.decode_response
    assert decode(codec.encode(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bodies_raise_only_message_errors(body: bytes) -> None:
    for decode in (codec.decode_request, codec.decode_response):
        try:
            decode(body)
        except codec.MessageError as exc:
            assert exc.message
            assert 0 <= exc.request_id <= 2**53


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "id", "name", "password", "protocol", "data"]),
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=8),
            st.binary(max_size=8),
            st.sampled_from([t.__name__ for t in ALL_TYPES]),
        ),
    )
)
def test_random_msgpack_maps_raise_only_message_errors(fields: dict) -> None:
    body = msgspec.msgpack.encode(fields)
    with contextlib.suppress(codec.MessageError):
        codec.decode_request(body)


# Strings that are not UTF-8: an overlong NUL, a lone CESU surrogate, a stray continuation byte,
# a truncated sequence, and bytes that are never UTF-8.
NOT_UTF8 = [b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\xe2\x82", b"\xff\xfe"]


# Where a string sits in a request, and in a response: (type, field, wrapped in a list).
STRING_FIELDS = [
    ("Login", "name", False),
    ("Login", "password", False),
    ("TextSearch", "text", False),
    ("UploadImage", "title", False),
    ("UploadImage", "tags", True),
    ("Error", "message", False),
    ("Error", "details", True),
]


@settings(max_examples=200, deadline=None)
@given(
    where=st.sampled_from(STRING_FIELDS),
    bad=st.sampled_from(NOT_UTF8),
    before=st.text(st.characters(max_codepoint=0x7F), max_size=4),
    request_id=st.integers(min_value=0, max_value=2**53),
)
def test_strings_that_are_not_utf8_raise_message_errors_naming_the_request(
    where: tuple[str, str, bool], bad: bytes, before: str, request_id: int
) -> None:
    """msgspec raises UnicodeDecodeError for these, which the connection loop would not answer."""
    type_name, field, listed = where
    placeholder = "\x01" * (len(before) + len(bad))
    fields = {"type": type_name, "id": request_id, field: [placeholder] if listed else placeholder}
    # The string is the last field: replace its last occurrence, never bytes of the id.
    head, _, tail = msgspec.msgpack.encode(fields).rpartition(placeholder.encode())
    body = head + before.encode() + bad + tail
    decode = codec.decode_response if type_name == "Error" else codec.decode_request
    with pytest.raises(codec.MessageError, match="not valid UTF-8") as caught:
        decode(body)
    assert caught.value.request_id == request_id  # the id comes first, so the answer names it


@settings(max_examples=100, deadline=None)
@given(bad=st.sampled_from(NOT_UTF8), request_id=st.integers(min_value=0, max_value=2**53))
def test_a_type_name_that_is_not_utf8_is_a_message_error(bad: bytes, request_id: int) -> None:
    body = msgspec.msgpack.encode({"id": request_id, "type": "\x01" * len(bad)})
    head, _, tail = body.rpartition(b"\x01" * len(bad))
    body = head + bad + tail
    for decode in (codec.decode_request, codec.decode_response):
        with pytest.raises(codec.MessageError, match="not valid UTF-8"):
            decode(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256), st.integers(min_value=1, max_value=1024))
def test_random_streams_raise_only_frame_errors(stream: bytes, limit: int) -> None:
    async def read_all() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        while await framing.read_frame(reader, limit) is not None:
            pass

    with contextlib.suppress(framing.FrameError):
        asyncio.run(read_all())


def test_length_is_checked_before_the_body() -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", 2**32 - 1))  # no body at all follows
        await framing.read_frame(reader, 1024)

    with pytest.raises(framing.FrameTooLarge):
        asyncio.run(read())


def test_every_message_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    for message_type in ALL_TYPES:
        assert f"### `{message_type.__name__}`" in doc, (
            f"{message_type.__name__} is missing: run scripts/protocol_reference.py --write"
        )
