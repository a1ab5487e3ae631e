"""JPEGs whose damage libjpeg papers over: a frame header claiming far more pixels than the file
can hold, and a cut file with its end-of-image marker put back."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATASET
from util import images
from util.images import JPEG_MAX_PIXELS_PER_BYTE, ImageRejected, decode_image


def _jpeg(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _photo(width: int = 800, height: int = 600) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photo, not like a flat canvas."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(7)
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    noisy = rgb + rng.integers(-20, 21, rgb.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _declaring(data: bytes, width: int, height: int) -> bytes:
    """The same file with its baseline frame header (SOF0) edited to claim another size."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _refusal(data: bytes, target: int | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, target=target)
    return info.value


def _cut_with_eoi(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


# --- a frame header claiming more than the file holds ------------------------------------------


@pytest.mark.parametrize("target", [None, 256])
def test_a_tiny_jpeg_declaring_a_huge_picture_is_refused_as_damaged(target: int | None) -> None:
    """631 bytes edited to claim 6000x6000 were stored as 36 million grey pixels."""
    data = _declaring(_jpeg(_photo(64, 64), quality=75), 6000, 6000)
    refusal = _refusal(data, target)
    assert refusal.reason == images.CORRUPT
    assert "6000x6000" in refusal.message
    assert f"{len(data):,} bytes" in refusal.message


def test_a_cut_jpeg_declaring_a_huge_picture_is_still_called_truncated() -> None:
    data = _declaring(_jpeg(_photo(64, 64), quality=75), 6000, 6000)
    assert _refusal(data[: len(data) // 2]).reason == images.TRUNCATED


@pytest.mark.parametrize(
    ("mode", "colour"), [("RGB", (255, 255, 255)), ("RGB", (0, 0, 0)), ("L", 128)]
)
@pytest.mark.parametrize(
    "options",
    [
        {"quality": 1, "optimize": True},
        {"quality": 100, "optimize": True, "subsampling": 0},
        {"quality": 100, "progressive": True},
        {"quality": 1, "subsampling": 2},
    ],
)
def test_the_densest_jpegs_pillow_writes_stay_far_above_the_bound(
    mode: str, colour: object, options: dict[str, object]
) -> None:
    """A flat 6000x6000 canvas is the smallest file Pillow writes for its size (256 pixels a
    byte, measured); it must pass with a wide margin, not scrape by."""
    side = 6000
    data = _jpeg(Image.new(mode, (side, side), colour), **options)  # type: ignore[arg-type]
    assert len(data) * JPEG_MAX_PIXELS_PER_BYTE >= 8 * side * side
    decoded = decode_image(data, target=256)
    assert (decoded.width, decoded.height) == (side, side)


# --- a cut file with its end-of-image marker put back ------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 1 / 3, 0.9, 0.99])
@pytest.mark.parametrize("target", [None, 256])
@pytest.mark.parametrize(
    "options",
    [
        {"quality": 90},
        {"quality": 90, "optimize": True, "subsampling": 0},
        {"quality": 90, "restart_marker_rows": 1},
        {"quality": 90, "restart_marker_blocks": 7},
    ],
)
def test_a_cut_baseline_jpeg_with_its_end_marker_put_back_is_truncated(
    fraction: float, target: int | None, options: dict[str, object]
) -> None:
    """libjpeg grey-fills the rest of the picture on meeting the marker and only warns; the
    upload was stored with a flat grey bottom while a plain cut was refused."""
    data = _cut_with_eoi(_jpeg(_photo(), **options), fraction)  # type: ignore[arg-type]
    assert _refusal(data, target).reason == images.TRUNCATED


def test_a_cut_greyscale_jpeg_with_its_end_marker_put_back_is_truncated() -> None:
    data = _cut_with_eoi(_jpeg(_photo().convert("L"), quality=90), 0.5)
    assert _refusal(data).reason == images.TRUNCATED


def _whole_files() -> dict[str, bytes]:
    photo = _photo(517, 333)
    exif = Image.Exif()
    exif[0x0112] = 1
    plain = _jpeg(photo, quality=90)
    files = {
        "plain": plain,
        "optimize": _jpeg(photo, quality=95, optimize=True),
        "q1": _jpeg(photo, quality=1),
        "444": _jpeg(photo, quality=100, subsampling=0),
        "progressive": _jpeg(photo, quality=90, progressive=True),
        "restart blocks 1": _jpeg(photo, quality=90, restart_marker_blocks=1),
        "restart rows 2": _jpeg(photo, quality=90, optimize=True, restart_marker_rows=2),
        "greyscale": _jpeg(photo.convert("L"), quality=90),
        "cmyk": _jpeg(photo.convert("CMYK"), quality=90),
        "exif": _jpeg(photo, quality=90, exif=exif),
        "1x1": _jpeg(photo.crop((0, 0, 1, 1))),
        "17x9": _jpeg(photo.crop((0, 0, 17, 9))),
        "mpo": _jpeg(photo, "MPO", save_all=True, append_images=[_photo(64, 48)]),
        "bytes after the end": plain + b"\x00" * 100,
        "fill bytes before the end": plain[:-2] + b"\xff\xff\xff\xd9",
    }
    thumb = _jpeg(_photo(64, 48))
    # An embedded JPEG (as an EXIF thumbnail is) has its own end marker before the scan's.
    files["jpeg in a comment"] = (
        plain[:2] + b"\xff\xfe" + struct.pack(">H", len(thumb) + 2) + thumb + plain[2:]
    )
    return files


@pytest.mark.parametrize("name", sorted(_whole_files()))
@pytest.mark.parametrize("target", [None, 64])
def test_whole_jpegs_decode_to_the_same_pixels(name: str, target: int | None) -> None:
    data = _whole_files()[name]
    expected = Image.open(io.BytesIO(data))
    if target is not None:
        expected.draft("RGB", (target, target))
    expected.load()
    decoded = decode_image(data, target=target)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(expected.convert("RGB")))


@pytest.mark.skipif(not DATASET.is_dir(), reason="shared clothing dataset not present")
def test_every_dataset_photo_decodes_and_refuses_its_cut_copy() -> None:
    files = sorted(DATASET.glob("gallery/*/*.jpg"))
    assert len(files) >= 100
    for path in files:
        data = path.read_bytes()
        decode_image(data, target=256)
        assert _refusal(_cut_with_eoi(data, 0.5), 256).reason == images.TRUNCATED, path
