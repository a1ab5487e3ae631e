"""The largest file the server accepts must fit both frames it travels in.

`server.LARGEST_IMAGE_BYTES` used to leave room only for the upload's text, so a file near the
limit was stored but its show_image answer (the file again, with the thumbnail, palette and
owner) came out larger than any frame the shell reads: the owner could never download it.
"""

from __future__ import annotations

from protocol import codec, framing
from protocol.catalog import Colour, ImageDetails, ImageSummary, UploadImage
from protocol.limits import (
    MAX_DESCRIPTION_CHARS,
    MAX_FILENAME_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
)
from server import LARGEST_IMAGE_BYTES
from service.context import ServerConfig

#: The widest UTF-8 character, so every text limit is at its largest in bytes.
WIDE = "\U0001f600"
#: A thumbnail is at most 256 px a side; even stored raw it could not pass this.
RAW_THUMBNAIL = bytes(256 * 256 * 3)


def _texts() -> dict[str, object]:
    return {
        "title": WIDE * MAX_TITLE_CHARS,
        "description": WIDE * MAX_DESCRIPTION_CHARS,
        "filename": WIDE * MAX_FILENAME_CHARS,
        "tags": [WIDE * MAX_TAG_CHARS] * MAX_TAGS,
    }


def test_the_largest_upload_fits_one_frame() -> None:
    upload = UploadImage(id=1, data=bytes(LARGEST_IMAGE_BYTES), **_texts())  # type: ignore[arg-type]
    assert len(framing.frame(codec.encode(upload))) <= ServerConfig.max_frame_bytes


def test_show_image_of_the_largest_file_fits_the_frame_the_shell_reads() -> None:
    colour = Colour(r=255, g=0, b=0, hue=0.0, saturation=1.0, lightness=0.5, share=0.25)
    summary = ImageSummary(
        id=2**62,
        owner="o" * 64,
        price_cents=2**53,
        quantity=2**31,
        visibility="private",
        created_at=1.0e9,
        width=2**16,
        height=2**16,
        palette=[colour] * 4,
        thumbnail=RAW_THUMBNAIL,
        score=1.0,
        match=colour,
        **_texts(),  # type: ignore[arg-type]
    )
    answer = ImageDetails(
        id=1, image=summary, original=bytes(LARGEST_IMAGE_BYTES), format="JPEG", byte_size=2**31
    )
    assert ServerConfig.max_frame_bytes <= framing.DEFAULT_MAX_FRAME  # what the shell reads
    assert len(framing.frame(codec.encode(answer))) <= ServerConfig.max_frame_bytes
