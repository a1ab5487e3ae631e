"""Safe image decoding shared by the client (pre-upload checks) and the server (ingest).

Every byte that reaches this module is untrusted. The policy, in order of cost:

1. cheap checks on the raw bytes (empty, too many bytes, magic number) so most junk never
   reaches a decoder, and the client can refuse a file before uploading it;
2. Pillow opens the header with a one-format whitelist (the sniffed one), so no other plugin's
   parser ever sees the data and the file name is never consulted;
3. the declared dimensions are checked against our own pixel and side limits *before* any pixel
   is decoded, which is what stops decompression bombs (Pillow's global MAX_IMAGE_PIXELS is left
   alone: it is process-wide and its threshold is not ours);
4. an animated format's container is checked for its end (GIF trailer, PNG ``IEND``, RIFF size)
   by walking its block headers: Pillow decodes only the first frame, so a cut in a later frame
   would otherwise go unnoticed; a JPEG far too small for the size it declares is refused;
5. the whole image is decoded (truncation is an error, LOAD_TRUNCATED_IMAGES is never set), and
   anything Pillow raises on malformed data becomes an ``ImageRejected`` with a reason code. A
   baseline JPEG's end-of-image marker is withheld from libjpeg (see ``_without_eoi``) so that a
   cut file with the marker added back is refused as truncated rather than grey-filled.
6. an embedded colour profile (ICC) that is not sRGB is applied, so every caller (thumbnail,
   embedding, palette) sees sRGB pixels; a profile that cannot be used is ignored, as before.

Only Pillow and numpy are imported so the client stays light (never TensorFlow).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

try:  # Pillow built without Little CMS has no ImageCms; pictures then decode as before.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - every supported build has it
    ImageCms = None  # type: ignore[assignment]

_log = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
DEFAULT_MAX_BYTES: Final = 25 * MIB
DEFAULT_MAX_PIXELS: Final = 40_000_000
# No product photo is wider or taller than this; a longer side is a crafted or broken file
# (a 1 x 39,999,999 strip passes the pixel limit but is useless and slow to thumbnail).
DEFAULT_MAX_SIDE: Final = 30_000

# PNG text and colour-profile chunks (XMP, comments, iCCP) are decompressed by Pillow while it
# reads the header. Its defaults, 1 MiB a chunk and 64 MiB in all, refused real photos whose
# XMP (Photoshop's document history) inflates past 1 MiB, as "damaged". We raise the per-chunk
# limit and lower the total: a hostile file can make one decode hold at most 32 MiB of text plus
# one 16 MiB chunk in flight, less than the 64 MiB (+1) Pillow's defaults allowed. The settings
# are process-wide, which is what we want: every decode in the client and server comes here.
PNG_MAX_TEXT_CHUNK: Final = 16 * MIB
PNG_MAX_TEXT_MEMORY: Final = 32 * MIB
PngImagePlugin.MAX_TEXT_CHUNK = PNG_MAX_TEXT_CHUNK
PngImagePlugin.MAX_TEXT_MEMORY = PNG_MAX_TEXT_MEMORY

ACCEPTED_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})

# A JPEG smaller than one byte per this many declared pixels cannot hold its picture (see
# ``_jpeg_too_small`` for the measurements behind the number).
JPEG_MAX_PIXELS_PER_BYTE: Final = 4096

# Reason codes carried by ImageRejected. They are stable strings so the server can map them to
# wire errors (TOO_LARGE for "too_large" and "too_many_pixels", UNSUPPORTED_IMAGE for the rest)
# and tests can assert them.
EMPTY: Final = "empty"
TOO_LARGE: Final = "too_large"
NOT_AN_IMAGE: Final = "not_an_image"
UNSUPPORTED_FORMAT: Final = "unsupported_format"
TRUNCATED: Final = "truncated"
CORRUPT: Final = "corrupt"
TOO_MANY_PIXELS: Final = "too_many_pixels"
BAD_DIMENSIONS: Final = "bad_dimensions"
TOO_MUCH_METADATA: Final = "too_much_metadata"
REASONS: Final = frozenset(
    {
        EMPTY,
        TOO_LARGE,
        NOT_AN_IMAGE,
        UNSUPPORTED_FORMAT,
        TRUNCATED,
        CORRUPT,
        TOO_MANY_PIXELS,
        BAD_DIMENSIONS,
        TOO_MUCH_METADATA,
    }
)

THUMBNAIL_FORMAT: Final = "JPEG"
_THUMBNAIL_QUALITY: Final = 80
_WHITE: Final = (255, 255, 255)


class ImageRejected(ValueError):
    """A file that will not be stored, with a stable code and a sentence for a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def too_large(self) -> bool:
        """Whether the file is refused for its size (bytes or pixels) rather than for not being
        an image we take: the server answers TOO_LARGE for these, UNSUPPORTED_IMAGE for the
        rest, and the shell's own check words its refusals with the same code."""
        return self.reason in (TOO_LARGE, TOO_MANY_PIXELS)

    def __repr__(self) -> str:
        return f"ImageRejected({self.reason!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """The decoded picture plus the facts about the original that the catalogue records.

    ``width``/``height`` are the full-resolution dimensions as a person sees them (orientation
    applied), even when ``image`` was decoded at a reduced scale for speed.
    """

    image: Image.Image
    format: str
    width: int
    height: int


# --- header sniffing --------------------------------------------------------------------------

_BMP_DIB_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS: Final = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
_SIMPLE_MAGIC: Final = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"%PDF-", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xffO\xffQ", "JPEG2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL"),
    (b"\xff\x0a", "JXL"),
    (b"qoif", "QOI"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"gimp xcf", "XCF"),
    (b"v/1\x01", "EXR"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
)


def sniff_format(data: bytes) -> str | None:
    """Name the image format from the first bytes, or None if it is not a picture we know.

    Cheap enough for the client to run on the first few KB of every file before uploading.
    The result may be a format we refuse (``"TIFF"``, ``"SVG"``, ...): compare it with
    ``ACCEPTED_FORMATS``. It never decodes anything and never looks at a file name.
    """
    head = bytes(data[:1024])
    for magic, name in _SIMPLE_MAGIC:
        if head.startswith(magic):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 18:
        # "BM" alone is two ASCII letters; the DIB header size pins it down to a real bitmap.
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "BMP"
        return None
    if head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12])
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<") and b"<svg" in text:
        return "SVG"
    return None


def precheck(head: bytes, size: int, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Refuse a file from its size and first bytes alone; return the accepted format name.

    The client calls this before uploading (so a person learns at once that a TIFF or an empty
    file will not go), and ``decode_image`` calls it first so the answers agree.
    """
    if size <= 0:
        raise ImageRejected(EMPTY, "The file is empty (0 bytes); choose the actual photo file.")
    if size > max_bytes:
        said, limit = _human(size), _human(max_bytes)
        if said == limit:  # "25.0 MiB, over the 25.0 MiB limit" reads as a contradiction
            said, limit = f"{size:,} bytes", f"{max_bytes:,}-byte"
        raise ImageRejected(
            TOO_LARGE,
            f"The file is {said}, over the {limit} limit; export it smaller or at a lower quality.",
        )
    fmt = sniff_format(head)
    if fmt is None:
        raise ImageRejected(
            NOT_AN_IMAGE,
            "The file is not an image (its content is not JPEG, PNG, WebP, GIF or BMP, "
            "whatever its name says).",
        )
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRejected(
            UNSUPPORTED_FORMAT,
            f"{fmt} images are not accepted; convert it to JPEG, PNG, WebP, GIF or BMP.",
        )
    return fmt


# --- decoding ---------------------------------------------------------------------------------


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    target: int | None = None,
) -> DecodedImage:
    """Decode untrusted bytes into an RGB picture, or raise ImageRejected for a bad file.

    Only what the decoder raises on the file's bytes becomes ImageRejected. MemoryError and
    errors in our own conversion code propagate unchanged: turning them into "your file is
    damaged" would hide a bug and make callers (the embedding backfill) give up on a good file.

    ``target`` is the smallest side the caller will need (e.g. the thumbnail size). For JPEG it
    lets libjpeg decode at 1/2, 1/4 or 1/8 scale, never below ``target`` on either side, which
    is several times faster than a full decode followed by a resize. The whole file is still
    read and entropy-decoded, so truncation is still detected.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone in the process relaxed Pillow globally; we would silently accept half images.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    if target is not None and target < 1:
        raise ValueError("target must be a positive number of pixels")
    fmt = precheck(data, len(data), max_bytes=max_bytes)
    scan = _jpeg_first_scan(data) if fmt == "JPEG" else None
    try:
        img = Image.open(io.BytesIO(_without_eoi(data, scan)), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit fires in open(), before the size can be read: its message has it.
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise _bomb(None, max_pixels, int(pixels.group(1)) if pixels else None) from None
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow raises many types on hostile headers (SyntaxError, struct.error, ...).
        raise _decoder_error(fmt, exc, data) from None
    width, height = img.size
    if width * height > max_pixels:
        raise _bomb((width, height), max_pixels)
    if width < 1 or height < 1 or width > max_side or height > max_side:
        raise ImageRejected(
            BAD_DIMENSIONS,
            f"The image declares an impossible size ({width}x{height} pixels); "
            f"each side must be between 1 and {max_side} pixels.",
        )
    if fmt == "JPEG" and len(data) * JPEG_MAX_PIXELS_PER_BYTE < width * height:
        raise _jpeg_too_small(data, scan, width, height)
    if fmt in _CONTAINER_CUT and _CONTAINER_CUT[fmt](data):
        raise _truncated(fmt)
    try:
        if target is not None and fmt == "JPEG":
            img.draft("RGB", (target, target))
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb((width, height), max_pixels) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _decoder_error(fmt, exc, data) from None
    quarter_turn = _apply_orientation(img)
    # Outside any try: the pixels are in memory, so a failure here is ours, not the file's.
    rgb = to_rgb(to_srgb(img))
    if quarter_turn:
        width, height = height, width
    return DecodedImage(image=rgb, format=fmt, width=width, height=height)


def _apply_orientation(img: Image.Image) -> bool:
    """Rotate/flip in place per EXIF; return True if width and height swapped.

    A broken EXIF block is not a reason to refuse a photo whose pixels decode fine, so any
    failure here leaves the picture as stored.
    """
    try:
        orientation = img.getexif().get(0x0112, 1)
        ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception:
        _log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return False
    return orientation in (5, 6, 7, 8)


# --- colour profiles --------------------------------------------------------------------------

#: A profile larger than this is not applied. Real printing (CMYK) profiles are at most a few
#: MiB; a bigger one is junk that Little CMS would still have to parse.
MAX_PROFILE_BYTES: Final = 8 * MIB
#: Distinct profiles whose transforms are kept. A shop's photos come from a handful of
#: cameras and editors (Display P3, Adobe RGB, one or two printing profiles); a printing
#: transform holds up to about 1 MiB of tables.
_TRANSFORM_CACHE_SIZE: Final = 16

_SRGB_NAME: Final = re.compile(r"(?<![a-z])srgb(?![a-z])")
#: The profile colour spaces (ICC header bytes 16-19) we convert, and the image modes each
#: applies to. Other pairs (a grey profile on a colour picture, 16-bit grey) are ignored.
_PROFILE_MODES: Final = {
    b"RGB ": frozenset({"RGB", "RGBA", "RGBa", "P", "PA"}),
    b"GRAY": frozenset({"L", "LA", "La"}),
    b"CMYK": frozenset({"CMYK"}),
}


def to_srgb(img: Image.Image) -> Image.Image:
    """Apply the picture's embedded colour profile, so that its pixels mean sRGB colours.

    A phone's Display P3 photo or an editor's Adobe RGB export read as sRGB looks duller (a
    red of saturation 0.70 read as 0.55), and the thumbnail, the palette (documented as sRGB)
    and the embedding would all inherit that. Pictures without a profile, or whose profile
    says sRGB (most camera JPEGs), are returned unchanged at the cost of a dictionary lookup
    or a header read. A profile that cannot be used (damaged, too large, or for another kind
    of picture than this one) is ignored, as before this conversion existed: a bad profile is
    no reason to refuse pixels that decoded fine. The result may keep an alpha channel, for
    ``to_rgb`` to composite as usual.
    """
    profile = img.info.get("icc_profile")
    if not profile or ImageCms is None:
        return img
    problem = _profile_problem(profile, img.mode)
    if problem is None and _is_srgb(profile):
        return img
    if problem is None:
        source, in_mode, out_mode, alpha = _transform_input(img, profile[16:20])
        built = TRANSFORMS.get(profile, in_mode, out_mode)
        if isinstance(built, str):
            problem = built
        else:
            try:
                # In place where the modes allow: a 40 MP picture is not held twice.
                if in_mode == out_mode:
                    built.apply_in_place(source)
                    converted = source
                else:
                    converted = built.apply(source)
            except MemoryError:
                raise
            except (ImageCms.PyCMSError, ValueError, OSError) as exc:
                problem = f"applying it failed ({exc})"
            else:
                if alpha is not None:
                    converted.putalpha(alpha)
                return converted
    _log.info("colour profile ignored, pixels read as sRGB: %s", problem)
    return img


def _profile_problem(profile: bytes, mode: str) -> str | None:
    """Why the profile cannot be applied to a picture of this mode, judged from its header."""
    if len(profile) > MAX_PROFILE_BYTES:
        return f"the profile is {len(profile):,} bytes, over the {MAX_PROFILE_BYTES:,} limit"
    if len(profile) < 132 or profile[36:40] != b"acsp":
        return "the profile is damaged (no ICC header)"
    space = bytes(profile[16:20])
    modes = _PROFILE_MODES.get(space)
    if modes is None:
        return f"profiles of colour space {space!r} are not supported"
    if mode not in modes:
        return f"a {space.decode('latin-1').strip()} profile does not fit a {mode} picture"
    return None


def _is_srgb(profile: bytes) -> bool:
    """Whether an RGB profile names itself sRGB (its description, as Little CMS reads it).

    Reading the profile costs about 1.5 microseconds; building a transform to learn that it
    changes nothing would cost far more. A profile that says sRGB but is not is read as sRGB,
    which is what every viewer that shortcuts the same way shows too; "linear" sRGB variants
    are not skipped. One Little CMS cannot read is not sRGB, and `_build_transform` says why.
    """
    if profile[16:20] != b"RGB ":
        return False
    try:
        text = ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.profile_description or ""
    except (ImageCms.PyCMSError, ValueError, OSError, TypeError):
        return False
    text = text.lower()
    return bool(_SRGB_NAME.search(text)) and "linear" not in text


def _transform_input(
    img: Image.Image, space: bytes
) -> tuple[Image.Image, str, str, Image.Image | None]:
    """The picture in a mode Little CMS takes, the transform's modes, and an alpha to put back.

    Palette and keyed-transparency pictures become RGBA first (a colour key would no longer
    match once the colours change); a grey picture's alpha is set aside, since the transform
    turns grey into RGB.
    """
    if space == b"CMYK":
        return img, "CMYK", "RGB", None
    if space == b"GRAY":
        if img.mode == "L" and "transparency" not in img.info:
            return img, "L", "RGB", None
        grey = img.convert("LA")
        return grey.getchannel("L"), "L", "RGB", grey.getchannel("A")
    if img.mode == "RGBA":
        return img, "RGBA", "RGBA", None
    if img.mode in ("RGBa", "PA") or "transparency" in img.info:
        return img.convert("RGBA"), "RGBA", "RGBA", None
    return (img if img.mode == "RGB" else img.convert("RGB")), "RGB", "RGB", None


#: A built conversion to sRGB (`PIL.ImageCms.ImageCmsTransform`).
Transform: TypeAlias = "ImageCms.ImageCmsTransform"


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _build_transform(profile: bytes, in_mode: str, out_mode: str) -> Transform | str:
    """The transform from this profile to sRGB, or why none could be built.

    Built with NOCACHE: Little CMS keeps a one-pixel cache in each transform that concurrent
    ``cmsDoTransform`` calls would race on; without it one transform is safe to share between
    the decoding threads.
    """
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.ImageCmsTransform(
            source,
            _srgb_profile(),
            in_mode,
            out_mode,
            ImageCms.Intent.PERCEPTUAL,
            flags=ImageCms.Flags.NOCACHE,
        )
    except MemoryError:
        raise
    except (ImageCms.PyCMSError, ValueError, OSError, TypeError) as exc:
        return f"the profile is damaged or unreadable ({exc})"


class TransformCache:
    """The last few profiles' transforms (or why each failed, so a batch of photos with one
    broken profile does not parse it again for each), keyed by the profile's digest alone.

    Not `functools.lru_cache` over the profile: its key would keep every profile's bytes, up
    to MAX_PROFILE_BYTES each, for as long as the entry lives (a review held 200 MB of a
    server's memory with 16 uploads of 8 MiB profiles). Two threads missing the same profile
    at once may both build it; the second simply replaces the first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.builds = self.hits = 0
        self._entries: OrderedDict[tuple[bytes, str, str], Transform | str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, profile: bytes, in_mode: str, out_mode: str) -> Transform | str:
        key = (hashlib.blake2b(profile, digest_size=16).digest(), in_mode, out_mode)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
        built = _build_transform(profile, in_mode, out_mode)
        with self._lock:
            self.builds += 1
            self._entries[key] = built
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return built

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.builds = self.hits = 0


TRANSFORMS: Final = TransformCache(_TRANSFORM_CACHE_SIZE)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB, compositing transparency onto white.

    White, because product photos with cut-out backgrounds are meant to sit on a light page,
    and Pillow's plain convert("RGB") would turn transparent pixels black or into whatever
    colour the hidden pixels happen to hold.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert clips 16-bit values at 255 (almost everything turns white).
        arr = np.asarray(img, dtype=np.float64 if mode == "I" else np.uint16)
        arr = np.clip(arr, 0, 65535).astype(np.uint32)
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBa", "La"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("P", "PA", "L", "LA", "RGB", "RGBA", "1") and (
        mode in ("PA", "LA", "RGBA") or "transparency" in img.info
    ):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _bomb(
    size: tuple[int, int] | None, max_pixels: int, pixels: int | None = None
) -> ImageRejected:
    if size:
        declared = f" declares {size[0]}x{size[1]} pixels and"
    elif pixels:
        declared = f" declares {pixels:,} pixels and"
    else:
        declared = ""
    return ImageRejected(
        TOO_MANY_PIXELS,
        f"The image{declared} exceeds the {max_pixels:,}-pixel limit (a decompression bomb "
        "or an oversized scan); resize it and try again.",
    )


# What Pillow's plugins are known to raise on malformed data. Anything else is still turned into
# a rejection (the decoder parses hostile bytes, and a crash there must not become a 500), but it
# is logged with its traceback so a Pillow regression or a misuse of ours can be found.
_EXPECTED_DECODER_ERRORS: Final = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ZeroDivisionError,
)


def _decoder_error(fmt: str, exc: Exception, data: bytes) -> ImageRejected:
    if not isinstance(exc, _EXPECTED_DECODER_ERRORS):
        _log.warning(
            "Pillow raised an unexpected %s decoding a %s file; rejecting it as damaged",
            type(exc).__name__,
            fmt,
            exc_info=exc,
        )
    return _corrupt(fmt, exc, data)


def _corrupt(fmt: str, exc: BaseException, data: bytes) -> ImageRejected:
    said = str(exc)
    if "MAX_TEXT" in said:  # Pillow names its own limits: PngImagePlugin.MAX_TEXT_CHUNK/MEMORY
        return ImageRejected(
            TOO_MUCH_METADATA,
            f"The {fmt} file carries more metadata (text, XMP or a colour profile) than the "
            f"{PNG_MAX_TEXT_CHUNK // MIB} MiB a chunk, {PNG_MAX_TEXT_MEMORY // MIB} MiB in all "
            "allowed; export it again without the metadata.",
        )
    if "truncated" in said.lower() or isinstance(exc, EOFError) or _short_riff(fmt, data):
        if fmt == "JPEG" and _jpeg_headers_make_no_sense(data):
            # Ran out of data, but what came before was not a JPEG's headers either: garbage
            # behind a JPEG signature, which downloading it again will not fix.
            return _damaged(fmt)
        return _truncated(fmt)
    return _damaged(fmt)


def _truncated(fmt: str) -> ImageRejected:
    return ImageRejected(
        TRUNCATED,
        f"The {fmt} file is truncated (it ends before the picture does); "
        "copy or download it again.",
    )


def _damaged(fmt: str) -> ImageRejected:
    return ImageRejected(
        CORRUPT,
        f"The {fmt} file is damaged and cannot be decoded; re-export it from the original.",
    )


def _short_riff(fmt: str, data: bytes) -> bool:
    """WebP's decoder only says "failed"; its RIFF header says how long the file should be."""
    return fmt == "WEBP" and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _gif_cut(data: bytes) -> bool:
    """Whether the GIF stops before its trailer (0x3B) in a way that loses picture data.

    Walks the block and sub-block headers only (no LZW decoding): a cut inside any block is a
    cut; a clean end without a trailer is one only after two or more frames, since a still
    whose trailer alone is missing is whole (some encoders omit it). Anything after the trailer
    (a GIFAR's archive) is not looked at.
    """
    n = len(data)
    if n < 13:
        return True
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while pos < n:
        block = data[pos]
        if block == 0x3B:
            return False
        if block == 0x21:  # extension: introducer, label, sub-blocks
            pos += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            if pos + 10 > n:
                return True
            flags = data[pos + 9]
            pos += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            frames += 1
        else:
            return False  # not a block: damage, for the decoder to judge, not a cut
        while True:
            if pos >= n:
                return True
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    return pos > n or frames > 1


def _png_cut(data: bytes) -> bool:
    """Whether the PNG stops inside a chunk, or (animated: an ``acTL`` chunk) before ``IEND``.

    Chunk headers only, 8 bytes each, so an APNG's later frames (``fdAT``), which Pillow does
    not decode to open the first one, are covered at almost no cost.
    """
    n = len(data)
    pos = 8
    animated = False
    while pos + 8 <= n:
        kind = data[pos + 4 : pos + 8]
        if kind == b"IEND":
            return False
        animated = animated or kind == b"acTL"
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return pos != n or animated


def _webp_cut(data: bytes) -> bool:
    return _short_riff("WEBP", data)


#: Container checks by format. JPEG and BMP have none: their one picture is decoded whole.
_CONTAINER_CUT: Final = {"GIF": _gif_cut, "PNG": _png_cut, "WEBP": _webp_cut}


def _jpeg_headers_make_no_sense(data: bytes) -> bool:
    """Whether the segments before the image data are not a JPEG's: a marker that is no marker,
    a length under 2, or an APPn segment without the ASCII name every writer puts there
    ("JFIF", "Exif", "ICC_PROFILE", "MPF"...). Only asked of a file the decoder already
    refused, to word the refusal, so an odd but valid file never meets it."""
    n = len(data)
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return False
        if marker < 0xC0 and marker != 0x01:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return True
        if 0xE0 <= marker <= 0xEF and length >= 6:
            name = data[pos + 4 : pos + 8]
            if len(name) == 4 and not _looks_like_a_segment_name(name):
                return True
        pos += 2 + length
    return False


def _jpeg_too_small(data: bytes, scan: _JpegScan | None, width: int, height: int) -> ImageRejected:
    """The refusal for a JPEG under one byte per ``JPEG_MAX_PIXELS_PER_BYTE`` declared pixels.

    Such a file is damage (an edited or corrupted frame header) and an amplification: 631 bytes
    claiming 6000x6000 made the server decode and hold 36 million grey pixels. Huffman coding
    spends at least one bit on every 8x8 block (its DC code), so a Huffman-coded picture needs
    one byte per 512 pixels; the bound sits 8 times under that. Measured with Pillow 13
    (libjpeg-turbo): the densest file it writes is a flat white, black or grey canvas, baseline
    with ``optimize=True``, at 256 pixels a byte (a DC code and an end-of-block, 2 bits a
    block), the same at 6000x6000 and 10000x10000, quality 1 or 100, "L" or RGB, 4:4:4 or
    4:2:0, progressive or not: 16 times under the bound. The 500 clothing-small photos reach
    at most 21 pixels a byte (a margin of about 200). Only arithmetic coding, which Pillow
    cannot write and browsers cannot show, goes lower, and only for a flat canvas (``cjpeg
    -arithmetic`` fits 6000x6000 grey in 208 bytes); such a canvas is refused too, since it is
    no product photo and exempting arithmetic coding would leave the amplification open.

    A file with no end-of-image marker after its first scan was cut (the ordinary truncation
    refusal); one that has it, complete yet far too small, declares a size it does not hold.
    """
    if data.rfind(b"\xff\xd9") < (scan.start if scan else 2):
        return _truncated("JPEG")
    return ImageRejected(
        CORRUPT,
        f"The JPEG file declares {width}x{height} pixels but is only {len(data):,} bytes, far "
        "too few to hold a picture that size: the file is damaged; re-export it from the "
        "original.",
    )


class _JpegScan(NamedTuple):
    """What the segments before a JPEG's first scan say about how its picture is coded."""

    frame: int  # the SOFn marker: 0xC0 baseline, 0xC2 progressive, 0xC9 arithmetic...
    frame_components: int
    scan_components: int
    start: int  # offset of the scan's entropy-coded data


def _jpeg_first_scan(data: bytes) -> _JpegScan | None:
    """The frame and first scan headers, or None when the segments before them are not plainly
    laid out (junk between them, a cut, no frame header): callers then leave the file to the
    decoder's own checks."""
    n = len(data)
    pos = 2
    frame = frame_components = 0
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers carry no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            return None
        if marker == 0xDA:
            if not frame or length < 3:
                return None
            return _JpegScan(frame, frame_components, data[pos + 4], pos + 2 + length)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and length >= 8:
            frame, frame_components = marker, data[pos + 9]
        pos += 2 + length
    return None


#: Zero bytes put where a baseline JPEG's end-of-image marker was. libjpeg's Huffman decoder
#: reads up to 8 bytes ahead of the bits it uses (a 64-bit bit buffer): all 500 clothing-small
#: photos decode with 8 and fail with 6. 64 leaves a margin of 8; the cost is that a cut in
#: the last few dozen 8x8 blocks, which the zeros fill, goes unnoticed.
_EOI_PADDING: Final = bytes(64)


def _without_eoi(data: bytes, scan: _JpegScan | None) -> bytes:
    """The bytes to give libjpeg: for a single-scan Huffman sequential JPEG (baseline or
    extended, what cameras and Pillow write by default), everything before its last
    end-of-image marker, then ``_EOI_PADDING``; any other file unchanged.

    On meeting a marker before the last block, libjpeg fills the rest of the picture with flat
    grey and only warns ("premature end of data segment"), a warning Pillow discards and does
    not expose (nor the bytes its decoder used). So a file cut short with ``FF D9`` added back
    (which is also what LOAD_TRUNCATED_IMAGES does) was stored with a grey bottom while a
    plain cut was refused. Without the marker, a decoder short of data waits for more and
    Pillow raises "image file is truncated"; a whole file needs no more than its own bytes and
    the padding (Pillow's decoder ends once every row is out, without waiting for the marker).

    It costs no second decode, only a walk of the header segments and one ``rfind``: about 0.03 ms
    against about 0.65 ms to decode a 512x512 photo at thumbnail scale. The marker taken is
    the last in the file: with anything after the picture (an MPO's second image, a trailer)
    it is not the picture's own, which then stays and the file decodes as before. In sequential
    coding every component is in exactly one scan, so a first scan holding all of them is the
    only one; that is read from its header, not by searching the scan data.

    Not covered, and decoded as before: progressive and multi-scan files (libjpeg reads them to
    the marker before giving the first row), arithmetic coding (its decoder cannot wait for
    data).
    """
    if (
        scan is None
        or scan.frame not in (0xC0, 0xC1)
        or scan.scan_components != scan.frame_components
    ):
        return data
    end = data.rfind(b"\xff\xd9")
    if end < scan.start:
        return data
    return data[:end] + _EOI_PADDING


def _looks_like_a_segment_name(name: bytes) -> bool:
    """Four printable ASCII bytes, or two or three ended by a NUL ("MPF\\0")."""
    end = name.find(0)
    text = name if end < 0 else name[:end]
    return (end < 0 or end >= 2) and all(32 <= byte < 127 for byte in text)


def _human(n: int) -> str:
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


# --- thumbnails -------------------------------------------------------------------------------


def make_thumbnail(image: Image.Image, max_side: int = 256) -> tuple[Image.Image, bytes]:
    """Shrink to fit ``max_side`` (never enlarge) and encode it for listings.

    The returned image is kept by the caller for the colour step, so the palette is of exactly
    the pixels the buyer sees (the embedding takes its own input from the decoded picture).
    JPEG at quality 80 is used because it encodes several times faster than WebP at this size
    (0.2 ms against 4-10 ms measured at 256x256 q80), and the terminal renderers all read it.
    ``reducing_gap=1.0`` lets Pillow box-reduce by an integer factor before the bicubic pass:
    about half the cost of a full bicubic resample, with an RMS difference of ~2/255 from
    Lanczos, invisible at thumbnail size.
    """
    if max_side < 1:
        raise ValueError("max_side must be positive")
    rgb = image if image.mode == "RGB" else to_rgb(image)
    w, h = rgb.size
    scale = max_side / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        thumb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=1.0)
    else:
        thumb = rgb.copy()
    buf = io.BytesIO()
    thumb.save(buf, THUMBNAIL_FORMAT, quality=_THUMBNAIL_QUALITY, optimize=False)
    return thumb, buf.getvalue()
