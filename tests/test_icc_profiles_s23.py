"""Embedded colour profiles (ICC) are applied at decode, so every stage sees sRGB pixels.

QA found Display P3 (iPhone) and Adobe RGB photos read as if their pixels were sRGB: a red of
saturation 0.70 came out 0.55 in the palette and the thumbnail. The profiles here are built
byte by byte (matrix/TRC RGB and grey, a small CMYK lookup table) the way cameras and editors
write them, and the pictures are converted into them with Little CMS (PIL.ImageCms), so a
correct decode gives back the sRGB original. The last test goes through a real server.
"""

from __future__ import annotations

import gc
import io
import logging
import struct
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from models.colours import extract_palette
from protocol.catalog import GetImage, ImageDetails
from tests.servers import ServerProcess
from tests.test_images_server import unique, upload
from util import images
from util.images import decode_image, make_thumbnail

# --- profiles, written as the ICC specification lays them out ----------------------------------


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(*v: float) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(x) for x in v)


def _srgb_curve() -> bytes:
    n = 1024
    vals = []
    for i in range(n):
        c = i / (n - 1)
        lin = c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
        vals.append(round(lin * 65535))
    return b"curv" + bytes(4) + struct.pack(f">I{n}H", n, *vals)


def _desc(name: str) -> bytes:
    text = name.encode() + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)


def _profile(device_class: bytes, space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table = b""
    body = b""
    start = 128 + 4 + 12 * len(tags)
    placed: dict[bytes, tuple[int, int]] = {}
    for sig, data in tags:
        if data in placed:  # shared data (gTRC, bTRC = rTRC), as real profiles do
            table += sig + struct.pack(">II", *placed[data])
            continue
        body += bytes(-(start + len(body)) % 4)
        placed[data] = (start + len(body), len(data))
        table += sig + struct.pack(">II", *placed[data])
        body += data
    total = start + len(body)
    header = (
        struct.pack(">I", total)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + device_class
        + space
        + b"XYZ "
        + bytes(12)
        + b"acsp"
        + b"APPL"
        + bytes(24)  # flags, maker, model, attributes, rendering intent
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def rgb_profile(name: str, r: tuple, g: tuple, b: tuple) -> bytes:
    """A matrix/TRC display profile with sRGB's tone curve, like Apple's Display P3."""
    curve = _srgb_curve()
    return _profile(
        b"mntr",
        b"RGB ",
        [
            (b"desc", _desc(name)),
            (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", _xyz(*r)),
            (b"gXYZ", _xyz(*g)),
            (b"bXYZ", _xyz(*b)),
            (b"rTRC", curve),
            (b"gTRC", curve),
            (b"bTRC", curve),
        ],
    )


# D50-adapted colorants, as in the published profiles.
P3 = rgb_profile(
    "Display P3",
    (0.515102, 0.241196, -0.001053),
    (0.291965, 0.692236, 0.041884),
    (0.157153, 0.066574, 0.784078),
)
ADOBE_RGB = rgb_profile(
    "Adobe RGB (1998)",
    (0.60974, 0.31111, 0.01947),
    (0.20528, 0.62567, 0.06087),
    (0.14919, 0.06322, 0.74457),
)
SRGB_V2 = rgb_profile(
    "sRGB IEC61966-2.1",
    (0.436075, 0.222504, 0.013932),
    (0.385065, 0.716879, 0.097105),
    (0.143080, 0.060617, 0.714173),
)
# A linear-light grey: 50% in the file is 50% light, which sRGB writes as 188.
GREY_LINEAR = _profile(
    b"mntr",
    b"GRAY",
    [
        (b"desc", _desc("Gray linear")),
        (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
        (b"kTRC", b"curv" + bytes(8)),
    ],
)

# A printing profile as a 2x2x2x2 lookup table (lut16, CMYK to XYZ): each ink has its own
# colour and the inks multiply, so pure cyan ink is a muted teal, not Pillow's (0, 255, 255).
INKS = {0: (0.1, 0.55, 0.8), 1: (0.85, 0.1, 0.5), 2: (1.0, 0.9, 0.05), 3: (0.08, 0.08, 0.08)}
SRGB_TO_XYZ_D50 = np.array(
    [[0.436075, 0.385065, 0.143080], [0.222504, 0.716879, 0.060617], [0.013932, 0.097105, 0.714173]]
)


def _cmyk_profile() -> bytes:
    grid = []
    for corner in range(16):  # first input channel varies slowest
        lin = np.ones(3)
        for ink in range(4):
            if corner >> (3 - ink) & 1:
                lin = lin * INKS[ink]
        xyz = SRGB_TO_XYZ_D50 @ lin
        grid += [min(65535, round(v * 32768)) for v in xyz]
    identity = [0, 65535]
    lut = (
        b"mft2"
        + bytes(4)
        + bytes([4, 3, 2, 0])
        + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
        + struct.pack(">HH", 2, 2)
        + struct.pack(">8H", *(identity * 4))
        + struct.pack(f">{len(grid)}H", *grid)
        + struct.pack(">6H", *(identity * 3))
    )
    return _profile(
        b"prtr",
        b"CMYK",
        [(b"desc", _desc("Test press CMYK")), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"A2B0", lut)],
    )


CMYK = _cmyk_profile()
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def into(img: Image.Image, profile: bytes) -> Image.Image:
    """The same colours written in another profile's numbers (what an iPhone or an editor saves)."""
    target = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return ImageCms.profileToProfile(img, SRGB, target, outputMode=img.mode)


RED = (200, 30, 40)


def product(size: tuple[int, int] = (240, 180)) -> Image.Image:
    """A red garment with a pink stripe on a pale backdrop, and a smooth gradient for detail."""
    w, h = size
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = (235, 228, 220)
    arr[h // 6 : h - h // 6, w // 5 : w - w // 5] = RED
    arr[h // 2 - 10 : h // 2 + 10, w // 5 : w - w // 5] = (224, 154, 159)
    arr[: h // 8, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)
    arr[: h // 8, :, 1] = 90
    arr[: h // 8, :, 2] = np.linspace(255, 0, w, dtype=np.uint8)
    return Image.fromarray(arr)


def _mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, int) - np.asarray(b, int)).mean())


def _centre(img: Image.Image) -> tuple[int, ...]:
    return img.getpixel((img.width // 2, img.height // 3))  # type: ignore[return-value]


# --- decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [P3, ADOBE_RGB], ids=["display-p3", "adobe-rgb"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_wide_gamut_photos_decode_to_their_srgb_colours(profile: bytes, fmt: str) -> None:
    original = product()
    kwargs: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    if fmt == "WEBP":
        kwargs = {"lossless": True}
    data = _encode(into(original, profile), fmt, icc_profile=profile, **kwargs)
    reference = decode_image(_encode(original, fmt, **kwargs)).image
    decoded = decode_image(data).image
    assert decoded.mode == "RGB"
    assert _mean_abs(decoded, reference) < 1.5
    assert np.abs(np.subtract(_centre(decoded), RED)).max() <= 3
    ours = extract_palette(make_thumbnail(decoded)[0])
    theirs = extract_palette(make_thumbnail(reference)[0])
    assert abs(ours[0].saturation - theirs[0].saturation) < 0.02
    assert (
        np.abs(
            np.subtract((ours[0].r, ours[0].g, ours[0].b), (theirs[0].r, theirs[0].g, theirs[0].b))
        ).max()
        <= 3
    )


def test_srgb_profiles_are_recognised_without_building_a_transform() -> None:
    original = product()
    plain = decode_image(_encode(original, "JPEG", quality=90)).image
    before = images.TRANSFORMS.builds
    for profile in (SRGB_V2, SRGB.tobytes()):
        tagged = decode_image(_encode(original, "JPEG", quality=90, icc_profile=profile)).image
        assert tagged.tobytes() == plain.tobytes()
    assert images.TRANSFORMS.builds == before


def test_one_transform_per_profile_for_a_batch() -> None:
    data = [_encode(into(product(), P3), "JPEG", quality=90 - i, icc_profile=P3) for i in range(5)]
    images.TRANSFORMS.clear()
    for d in data:
        decode_image(d)
    assert (images.TRANSFORMS.builds, images.TRANSFORMS.hits) == (1, 4)


def test_the_cache_does_not_keep_the_profiles() -> None:
    """Large profiles (a hostile upload's, up to MAX_PROFILE_BYTES) are not held by the cache:
    a first version keyed it on the profile itself, and 16 uploads of 8 MiB profiles held
    200 MB of a server's memory for as long as the entries lived."""
    padded = [P3 + bytes([i]) * (2 * 1024 * 1024) for i in range(8)]
    data = [_encode(product(), "JPEG", quality=90, icc_profile=p) for p in padded]
    del padded
    images.TRANSFORMS.clear()
    gc.collect()
    tracemalloc.start()
    try:
        for d in data:
            decode_image(d)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert images.TRANSFORMS.builds == 8
    assert held < 2 * 1024 * 1024, f"{held:,} bytes still held after decoding"


def test_threads_share_transforms_safely() -> None:
    """Decoding workers run in parallel and share each cached transform (built with NOCACHE)."""
    data = [
        _encode(into(product(), prof), "PNG", icc_profile=prof)
        for prof in (P3, ADOBE_RGB)
        for _ in range(2)
    ] * 8
    serial = [decode_image(d).image.tobytes() for d in data]
    images.TRANSFORMS.clear()
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda d: decode_image(d).image.tobytes(), data))
    assert parallel == serial


@pytest.mark.parametrize(
    "profile",
    [
        P3[:200],  # cut off inside its tag table
        P3[:128] + struct.pack(">I", 7) + bytes(60),  # tags pointing nowhere
        b"\0" * 500,  # no header at all
        P3[:16] + b"GRAY" + P3[20:],  # a grey profile on a colour picture
    ],
    ids=["cut", "bad-tags", "garbage", "wrong-space"],
)
def test_an_unusable_profile_still_decodes_as_srgb(
    profile: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    original = product()
    plain = decode_image(_encode(original, "PNG")).image
    with caplog.at_level(logging.DEBUG, logger="util.images"):
        decoded = decode_image(_encode(original, "PNG", icc_profile=profile)).image
    assert decoded.tobytes() == plain.tobytes()
    notes = [r for r in caplog.records if "colour profile ignored" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO


def test_transparent_product_is_converted_then_put_on_white() -> None:
    shirt = Image.new("RGBA", (120, 160), (0, 0, 0, 0))
    shirt.paste(Image.new("RGBA", (60, 100), (*RED, 255)), (30, 30))
    rgba = into(shirt, P3)
    decoded = decode_image(_encode(rgba, "PNG", icc_profile=P3)).image
    assert decoded.mode == "RGB"
    assert decoded.getpixel((2, 2)) == (255, 255, 255)  # the cut-out background, as before
    assert np.abs(np.subtract(decoded.getpixel((60, 80)), RED)).max() <= 2


def test_palette_png_with_transparency_and_a_profile() -> None:
    flat = Image.new("RGB", (64, 64), (255, 255, 255))
    flat.paste(Image.new("RGB", (32, 32), RED), (16, 16))
    pal = into(flat, P3).quantize(4)
    white = min(range(4), key=lambda i: -sum(pal.getpalette()[3 * i : 3 * i + 3]))  # type: ignore[index]
    decoded = decode_image(_encode(pal, "PNG", transparency=white, icc_profile=P3)).image
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert np.abs(np.subtract(decoded.getpixel((32, 32)), RED)).max() <= 3


def test_grey_photo_is_read_through_its_grey_profile() -> None:
    grey = Image.new("L", (32, 32), 128)
    decoded = decode_image(_encode(grey, "PNG", icc_profile=GREY_LINEAR)).image
    assert decoded.mode == "RGB"
    r, g, b = decoded.getpixel((5, 5))  # type: ignore[misc]
    assert r == g == b and abs(r - 188) <= 2


def test_cmyk_jpeg_is_read_through_its_printing_profile() -> None:
    cyan = Image.new("CMYK", (48, 48), (255, 0, 0, 0))
    data = _encode(cyan, "JPEG", quality=100, icc_profile=CMYK)
    decoded = decode_image(data).image
    expected = ImageCms.profileToProfile(
        Image.new("CMYK", (1, 1), (255, 0, 0, 0)),
        ImageCms.ImageCmsProfile(io.BytesIO(CMYK)),
        SRGB,
        outputMode="RGB",
    ).getpixel((0, 0))
    teal = np.array(INKS[0]) ** (1 / 2.2) * 255  # about (90, 194, 230), not (0, 255, 255)
    assert np.abs(np.subtract(decoded.getpixel((24, 24)), expected)).max() <= 3
    assert np.abs(np.subtract(decoded.getpixel((24, 24)), teal)).max() <= 12


# --- through the server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("icc")).start()
    yield process
    process.stop()


def test_a_display_p3_upload_gets_the_palette_of_its_srgb_twin(
    server: ServerProcess, tmp_path: Path
) -> None:
    conn = server.user_connection(tmp_path / "c", unique("iphone"))
    try:
        original = product((480, 360))
        srgb_data = _encode(original, "JPEG", quality=95)
        p3_data = _encode(into(original, P3), "JPEG", quality=95, icc_profile=P3)
        palettes = []
        for data in (srgb_data, p3_data):
            up = upload(conn, data, filename="dress.jpg")
            details = conn.call(
                GetImage(id=0, image_id=up.image_id, with_original=True), ImageDetails
            )
            assert details.original == data  # the stored original keeps its profile
            palettes.append(details.image.palette)
        srgb_palette, p3_palette = palettes
        assert len(srgb_palette) == len(p3_palette)
        for a, b in zip(srgb_palette, p3_palette, strict=True):
            assert max(abs(a.r - b.r), abs(a.g - b.g), abs(a.b - b.b)) <= 4, (a, b)
            assert abs(a.share - b.share) < 0.03
            assert abs(a.saturation - b.saturation) < 0.03
    finally:
        conn.close()
