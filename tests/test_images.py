"""Hostile and odd images: every rejection reason, orientation, colour modes, draft decoding."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from util import images
from util.images import (
    ACCEPTED_FORMATS,
    REASONS,
    DecodedImage,
    ImageRejected,
    decode_image,
    make_thumbnail,
    precheck,
    sniff_format,
)

# --- helpers ------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A noisy RGB picture, so encoders produce realistic, non-trivial streams."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims the given size: what a decompression bomb looks like."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reason_of(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason in REASONS
    assert info.value.message.endswith(".")  # a full sentence for a person
    return info.value.reason


def near(pixel: tuple[int, ...], expected: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


# --- each rejection reason ----------------------------------------------------------------------


def test_empty_file_is_rejected() -> None:
    assert reason_of(b"") == images.EMPTY


def test_text_file_named_jpg_is_not_an_image() -> None:
    # decode_image never sees a file name: only the content decides.
    data = b"Dear customer,\nthis is a text file that someone saved as photo.jpg.\n" * 20
    assert reason_of(data) == images.NOT_AN_IMAGE


def test_random_bytes_are_not_an_image() -> None:
    assert reason_of(bytes(range(256)) * 8) == images.NOT_AN_IMAGE


def test_over_byte_limit_is_rejected_before_decoding() -> None:
    data = encode(photo(), "JPEG")
    assert reason_of(data, max_bytes=len(data) - 1) == images.TOO_LARGE
    assert isinstance(decode_image(data, max_bytes=len(data)), DecodedImage)


def test_over_default_byte_limit() -> None:
    data = b"\xff\xd8\xff" + b"\x00" * images.DEFAULT_MAX_BYTES
    assert reason_of(data) == images.TOO_LARGE


def test_one_byte_over_the_limit_says_so_in_bytes() -> None:
    """It read "The file is 25.0 MiB, over the 25.0 MiB limit"."""
    limit = images.DEFAULT_MAX_BYTES
    with pytest.raises(ImageRejected) as over:
        precheck(b"\xff\xd8\xff", limit + 1, max_bytes=limit)
    assert "The file is 26,214,401 bytes, over the 26,214,400-byte limit" in over.value.message
    with pytest.raises(ImageRejected) as far_over:
        precheck(b"\xff\xd8\xff", 3 * limit, max_bytes=limit)
    assert "The file is 75.0 MiB, over the 25.0 MiB limit" in far_over.value.message


def test_tiff_is_unsupported() -> None:
    assert reason_of(encode(photo(), "TIFF")) == images.UNSUPPORTED_FORMAT


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>',
        b'\xef\xbb\xbf  <svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>',
    ],
)
def test_svg_is_unsupported(data: bytes) -> None:
    assert reason_of(data) == images.UNSUPPORTED_FORMAT


def test_heic_is_unsupported() -> None:
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert reason_of(data) == images.UNSUPPORTED_FORMAT


def test_unsupported_message_names_the_format() -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(encode(photo(), "TIFF"))
    assert "TIFF" in info.value.message


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("target", [None, 64])
def test_truncated_jpeg_is_rejected(fraction: float, progressive: bool, target: int | None) -> None:
    data = encode(photo(640, 480), "JPEG", quality=90, progressive=progressive)
    cut = data[: int(len(data) * fraction)]
    assert reason_of(cut, target=target) == images.TRUNCATED


@pytest.mark.parametrize("size", [(640, 480), (512, 512), (333, 517)])
@pytest.mark.parametrize("cut", [3, 16, 256, 4096])
@pytest.mark.parametrize("target", [32, 100, 256])
def test_draft_decode_still_detects_lost_tail_bytes(
    size: tuple[int, int], cut: int, target: int
) -> None:
    # Reduced-scale decoding still entropy-decodes every block, so losing even the last few
    # bytes of scan data is caught. (A file missing only its 2-byte end marker holds the whole
    # picture; libjpeg may accept it, which is harmless.)
    data = encode(photo(*size), "JPEG", quality=90)
    assert reason_of(data[:-cut], target=target) == images.TRUNCATED


def test_truncated_files_never_load_partially() -> None:
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP"])
def test_truncated_other_formats_are_rejected(fmt: str) -> None:
    img = photo()
    data = encode(img.convert("P") if fmt == "GIF" else img, fmt)
    assert reason_of(data[: len(data) * 2 // 3]) == images.TRUNCATED


def test_corrupt_header_is_rejected() -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 40
    assert reason_of(data) == images.CORRUPT


def test_a_bug_in_our_conversion_is_not_blamed_on_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The backfill marks a CORRUPT image as failed for good: our own bug must surface as itself.
    def broken(img: Image.Image) -> Image.Image:
        raise TypeError("bug in to_rgb")

    monkeypatch.setattr(images, "to_rgb", broken)
    with pytest.raises(TypeError, match="bug in to_rgb"):
        decode_image(encode(photo(), "PNG"))


@pytest.mark.parametrize("where", ["open", "load"])
def test_memory_error_is_not_a_damaged_file(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    if where == "open":
        monkeypatch.setattr(images.Image, "open", out_of_memory)
    else:
        monkeypatch.setattr(images.ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(MemoryError):
        decode_image(encode(photo(), "PNG"))


def test_unexpected_decoder_error_is_rejected_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The decoder parses hostile bytes, so an odd exception from it is still a rejection, but
    # one that leaves a traceback in the log.
    def odd(*args: object, **kwargs: object) -> None:
        raise RuntimeError("odd decoder failure")

    monkeypatch.setattr(images.ImageFile.ImageFile, "load", odd)
    with caplog.at_level("WARNING", logger="util.images"):
        assert reason_of(encode(photo(), "PNG")) == images.CORRUPT
    [record] = [r for r in caplog.records if r.name == "util.images"]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_expected_decoder_error_is_rejected_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="util.images"):
        assert reason_of(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 40) in (
            images.CORRUPT,
            images.TRUNCATED,
        )
    assert not [r for r in caplog.records if r.name == "util.images"]


def test_decompression_bomb_declaring_huge_size_is_rejected() -> None:
    # 100,000 x 100,000: beyond Pillow's own hard limit too, which fires before the size can
    # be read; the sentence still says what the file declares.
    assert reason_of(png_declaring(100_000, 100_000)) == images.TOO_MANY_PIXELS
    with pytest.raises(images.ImageRejected) as caught:
        images.decode_image(png_declaring(100_000, 100_000))
    assert "declares 10,000,000,000 pixels" in str(caught.value)


def test_bomb_over_our_limit_but_under_pillows_is_rejected_before_decoding() -> None:
    # 8,000 x 8,000 = 64 MP: Pillow would happily allocate it; our 40 MP limit refuses it.
    assert reason_of(png_declaring(8_000, 8_000)) == images.TOO_MANY_PIXELS


def test_bomb_in_pillows_warning_band_is_rejected_even_if_warnings_are_errors() -> None:
    # 12,000 x 12,000 = 144 MP: Pillow warns (not errors) at open.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reason_of(png_declaring(12_000, 12_000)) == images.TOO_MANY_PIXELS


def test_real_highly_compressible_image_over_pixel_limit() -> None:
    data = encode(Image.new("L", (400, 400)), "PNG")
    assert len(data) < 2_000  # tiny file, many pixels
    assert reason_of(data, max_pixels=100_000) == images.TOO_MANY_PIXELS
    assert decode_image(data, max_pixels=160_000).image.size == (400, 400)


def test_absurd_dimensions_are_rejected() -> None:
    data = encode(Image.new("L", (35_000, 1)), "PNG")
    assert reason_of(data) == images.BAD_DIMENSIONS
    assert reason_of(png_declaring(0, 10)) in (images.BAD_DIMENSIONS, images.CORRUPT)


def test_each_reason_has_a_distinct_helpful_message() -> None:
    cases = {
        images.EMPTY: b"",
        images.NOT_AN_IMAGE: b"hello world, not a picture",
        images.UNSUPPORTED_FORMAT: encode(photo(), "TIFF"),
        images.TOO_MANY_PIXELS: png_declaring(9_000, 9_000),
    }
    messages = set()
    for reason, data in cases.items():
        with pytest.raises(ImageRejected) as info:
            decode_image(data)
        assert info.value.reason == reason
        messages.add(info.value.message)
    assert len(messages) == len(cases)


# --- accepted formats, modes and orientation ----------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(ACCEPTED_FORMATS))
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    img = photo(64, 48)
    data = encode(img.convert("P") if fmt == "GIF" else img, fmt)
    decoded = decode_image(data)
    assert decoded.format == fmt
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (64, 48)
    assert (decoded.width, decoded.height) == (64, 48)


def _orientation_jpeg(orientation: int) -> bytes:
    # 80x40: left half red, right half blue.
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (40, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("target", [None, 10])
def test_exif_orientation_6_is_applied(target: int | None) -> None:
    decoded = decode_image(_orientation_jpeg(6), target=target)
    img = decoded.image
    # Orientation 6 means "rotate 90 degrees clockwise to display": the left (red) half ends up
    # on top, the right (blue) half at the bottom, and the picture is now portrait.
    assert (decoded.width, decoded.height) == (40, 80)
    assert img.width < img.height
    w, h = img.size
    assert near(img.getpixel((w // 2, h // 8)), (255, 0, 0))
    assert near(img.getpixel((w // 2, h * 7 // 8)), (0, 0, 255))


def test_exif_orientation_3_is_applied() -> None:
    img = decode_image(_orientation_jpeg(3)).image
    assert img.size == (80, 40)
    assert near(img.getpixel((10, 20)), (0, 0, 255))
    assert near(img.getpixel((70, 20)), (255, 0, 0))


def test_no_orientation_leaves_pixels_alone() -> None:
    img = decode_image(_orientation_jpeg(1)).image
    assert near(img.getpixel((10, 20)), (255, 0, 0))


def test_rgba_transparency_is_composited_on_white() -> None:
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # transparent black
    img.paste((255, 0, 0, 255), (0, 0, 10, 20))
    img.paste((0, 0, 255, 128), (10, 0, 20, 20))  # half-transparent blue
    for fmt in ("PNG", "WEBP"):
        out = decode_image(encode(img, fmt, lossless=True) if fmt == "WEBP" else encode(img, fmt))
        assert out.image.getpixel((2, 2)) == (255, 0, 0)
        assert near(out.image.getpixel((15, 10)), (127, 127, 255), tol=3)


def test_fully_transparent_png_is_white_not_black() -> None:
    out = decode_image(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"))
    assert out.image.getpixel((4, 4)) == (255, 255, 255)


def test_palette_with_transparent_index_is_composited_on_white() -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))
    for fmt in ("PNG", "GIF"):
        out = decode_image(encode(img, fmt, transparency=0)).image
        assert out.getpixel((1, 1)) == (255, 255, 255)
        assert out.getpixel((8, 8)) == (0, 255, 0)


def test_greyscale_with_alpha_is_composited() -> None:
    img = Image.new("LA", (6, 6), (0, 0))
    img.paste((0, 255), (0, 0, 3, 6))
    out = decode_image(encode(img, "PNG")).image
    assert out.getpixel((1, 1)) == (0, 0, 0)
    assert out.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel_become_rgb(mode: str) -> None:
    img = Image.new(mode, (8, 8), 255)
    out = decode_image(encode(img, "PNG")).image
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK")
    out = decode_image(encode(img, "JPEG", quality=95))
    assert out.image.mode == "RGB"
    assert near(out.image.getpixel((8, 8)), (255, 0, 0))


def test_16_bit_greyscale_keeps_its_tones() -> None:
    arr = np.full((10, 10), 32768, dtype=np.uint16)
    arr[0, 0] = 65535
    arr[9, 9] = 0
    out = decode_image(encode(Image.fromarray(arr), "PNG")).image
    assert near(out.getpixel((5, 5)), (128, 128, 128), tol=2)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((9, 9)) == (0, 0, 0)


def test_16_bit_rgb_png_decodes() -> None:
    # Pillow cannot write 16-bit RGB, so build the stream by hand: 2x1 pixels, white and black.
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    raw = b"\x00" + b"\xff" * 6 + b"\x00" * 6
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    out = decode_image(data).image
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 0)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (12, 12), c).convert("P") for c in [(255, 0, 0), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert near(decode_image(data).image.getpixel((6, 6)), (255, 0, 0), tol=5)


def test_format_comes_from_content_not_guesswork() -> None:
    # A PNG is a PNG whatever the caller believes; the decoder is limited to the sniffed format.
    assert decode_image(encode(photo(), "PNG")).format == "PNG"


# --- draft (reduced-scale) decoding --------------------------------------------------------------


@pytest.mark.parametrize("target", [64, 100, 256, 300, 2000])
def test_draft_decode_is_never_smaller_than_target(target: int) -> None:
    data = encode(photo(1024, 768), "JPEG", quality=85)
    decoded = decode_image(data, target=target)
    w, h = decoded.image.size
    assert (decoded.width, decoded.height) == (1024, 768)
    assert min(w, h) >= min(target, 768)
    assert w / h == pytest.approx(1024 / 768, rel=0.02)


def test_draft_decode_actually_reduces_work() -> None:
    data = encode(photo(1024, 768), "JPEG", quality=85)
    reduced = decode_image(data, target=256).image
    full = decode_image(data).image
    assert full.size == (1024, 768)
    assert reduced.width < full.width
    assert reduced.size == (512, 384)  # libjpeg scales by 1/2 here: 1/4 would go below 256


def test_target_is_ignored_for_non_jpeg() -> None:
    data = encode(photo(400, 300), "PNG")
    assert decode_image(data, target=64).image.size == (400, 300)


def test_draft_decode_matches_full_decode_visually() -> None:
    img = Image.new("RGB", (512, 512), (200, 30, 30))
    img.paste((20, 40, 220), (256, 0, 512, 512))
    data = encode(img, "JPEG", quality=90)
    small = decode_image(data, target=128).image
    assert near(small.getpixel((10, 10)), (200, 30, 30), tol=10)
    assert near(small.getpixel((small.width - 10, 10)), (20, 40, 220), tol=10)


# --- thumbnails ---------------------------------------------------------------------------------


def test_thumbnail_fits_and_keeps_aspect() -> None:
    thumb, data = make_thumbnail(photo(1000, 500), max_side=256)
    assert thumb.size == (256, 128)
    assert thumb.mode == "RGB"
    again = decode_image(data)
    assert again.image.size == thumb.size
    assert again.format in ACCEPTED_FORMATS


def test_thumbnail_never_enlarges() -> None:
    thumb, data = make_thumbnail(photo(100, 80), max_side=256)
    assert thumb.size == (100, 80)
    assert decode_image(data).image.size == (100, 80)


def test_thumbnail_of_non_rgb_input() -> None:
    thumb, _ = make_thumbnail(Image.new("RGBA", (300, 300), (0, 0, 0, 0)), max_side=30)
    assert thumb.mode == "RGB"
    assert thumb.getpixel((5, 5)) == (255, 255, 255)


# --- sniffing and precheck (the client side) ----------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(ACCEPTED_FORMATS | {"TIFF"}))
def test_sniff_format_on_real_files(fmt: str) -> None:
    img = photo(32, 32)
    data = encode(img.convert("P") if fmt == "GIF" else img, fmt)
    assert sniff_format(data[:64]) == fmt


def test_sniff_format_rejects_lookalikes() -> None:
    assert sniff_format(b"BMW is a car brand, not a bitmap.") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_format(b"") is None


def test_precheck_agrees_with_decode() -> None:
    data = encode(photo(), "TIFF")
    with pytest.raises(ImageRejected) as pre:
        precheck(data[:4096], len(data))
    with pytest.raises(ImageRejected) as full:
        decode_image(data)
    assert pre.value.reason == full.value.reason
    assert precheck(encode(photo(), "WEBP")[:64], 10_000) == "WEBP"


# --- fuzzing ------------------------------------------------------------------------------------

_SEEDS = [
    encode(photo(24, 16, seed=1), "JPEG", quality=80),
    encode(photo(24, 16, seed=2), "JPEG", quality=80, progressive=True),
    encode(photo(24, 16, seed=3), "PNG"),
    encode(photo(24, 16, seed=4).convert("P"), "GIF"),
    encode(photo(24, 16, seed=5), "WEBP"),
    encode(photo(24, 16, seed=6), "BMP"),
    encode(Image.new("RGBA", (9, 7), (1, 2, 3, 4)), "PNG"),
    _orientation_jpeg(6),
]


def _check_outcome(data: bytes, target: int | None) -> None:
    try:
        out = decode_image(data, target=target, max_pixels=1_000_000)
    except ImageRejected as exc:
        assert exc.reason in REASONS
        return
    assert out.image.mode == "RGB"
    assert out.format in ACCEPTED_FORMATS
    assert out.width * out.height <= 1_000_000


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=4096), st.sampled_from([None, 8, 256]))
def test_random_bytes_only_ever_raise_image_rejected(data: bytes, target: int | None) -> None:
    _check_outcome(data, target)


@_FUZZ
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10_000),
    st.sampled_from([None, 8, 256]),
)
def test_mutated_images_only_ever_raise_image_rejected(
    seed: bytes, edits: list[tuple[int, int]], cut: int, target: int | None
) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    _check_outcome(bytes(data[: max(1, len(data) - cut % len(data))]), target)
