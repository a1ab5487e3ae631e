"""search_by_image: find the products that look most like a photo, or like a stored image.

The listing itself (batches, `more`, --json with its `score` field, the score column, --sheet)
is shell.listing's; this module turns flags into an `ImageSearch`. A local photo is checked
here first (exists, readable, within the server's byte limit, a format the server takes), so
an obvious mistake costs no upload; the server still decodes it with its own limits. Either
side's refusal of the photo reads the same, `PATH: Error (CODE): reason` (see `refusal`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cmd2

from protocol.catalog import ImageSearch, ListingOptions
from protocol.errors import ErrorCode, VitrineError
from shell import listing
from shell.app import BROWSE, CommandFailed, TextArgumentParser, VitrineShell, image_id
from shell.search_filters import add_filter_arguments, describe, filters_from
from shell.text import printable
from util import images as imaging

#: The server's answers that refuse the photo itself (its bytes, size or picture), as opposed to
#: the request or the server's state (UNAVAILABLE, UNAUTHENTICATED, BAD_REQUEST...).
PHOTO_REFUSALS = frozenset({ErrorCode.UNSUPPORTED_IMAGE, ErrorCode.TOO_LARGE})


def refusal(shown: str, code: ErrorCode, message: str) -> str:
    """One line for a refused photo, whichever side refused it. The file is named first, as
    add_image names it (a search's photo was once named only when the client refused it), and
    the error code stays in the `Error (CODE): ` a script finds in every server error."""
    return f"{shown}: Error ({code.value}): {message}"


def client_refusal(shown: str, exc: imaging.ImageRejected) -> str:
    """The client's own check refused the photo: worded with the code the server would give,
    so a script reads the same line whether the check ran here or there."""
    code = ErrorCode.TOO_LARGE if exc.too_large else ErrorCode.UNSUPPORTED_IMAGE
    return refusal(shown, code, exc.message)


class SimilarCommands(cmd2.CommandSet[VitrineShell]):
    DEFAULT_CATEGORY = BROWSE

    search_parser = TextArgumentParser(
        "Find the images that look most like a photo (PATH) or like an image already stored "
        "(--id ID, which is itself left out), best first, with a similarity score (cosine, "
        "1 = identical). Filters apply before the results are cut into batches; `more` "
        "continues the listing.",
        verb="search with",
        noun="photo",
    )
    search_parser.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        completer=cmd2.Cmd.path_complete,
        help="a photo on this computer (JPEG, PNG, WebP, GIF or BMP)",
    )
    search_parser.add_argument(
        "--id",
        dest="image_id",
        type=image_id,
        metavar="ID",
        choices_provider=listing.complete_recent_ids,
        help="search with a stored image instead of a file",
    )
    add_filter_arguments(search_parser)
    listing.add_listing_arguments(search_parser)

    @cmd2.with_argparser(search_parser)
    def do_search_by_image(self, args: argparse.Namespace) -> None:
        shell = self._cmd
        if (args.path is None) == (args.image_id is None):
            raise CommandFailed("Give either a PATH to a photo or --id ID (one of them).")
        filters = filters_from(args)
        data: bytes | None = None
        shown = ""
        if args.path is not None:
            photo = Path(args.path).expanduser()
            shown = printable(str(photo))
            data = self._read_photo(photo, shown)
            what = f"images like {printable(args.path)}"
        else:
            what = f"images like #{args.image_id}"
        if parts := describe(filters):
            what += " (" + ", ".join(parts) + ")"

        def request(options: ListingOptions) -> ImageSearch:
            return ImageSearch(
                id=0, data=data, image_id=args.image_id, filters=filters, options=options
            )

        try:
            listing.start_listing(shell, request, args, what=what)
        except VitrineError as exc:
            if data is None or exc.code not in PHOTO_REFUSALS:
                raise  # not about the file (logged out, no model...): not said of it
            raise CommandFailed(refusal(shown, exc.code, exc.message)) from None

    def _read_photo(self, path: Path, shown: str) -> bytes:
        shell = self._cmd
        shell.session.ensure_connected()
        limits = shell.session.connection.limits
        max_bytes = limits.max_image_bytes if limits else imaging.DEFAULT_MAX_BYTES
        try:
            if not path.exists():
                raise CommandFailed(f"{shown}: no such file.")
            if not path.is_file():
                raise CommandFailed(f"{shown} is not a file.")
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(1024)
                imaging.precheck(head, size, max_bytes=max_bytes)
                return head + f.read()
        except imaging.ImageRejected as exc:
            raise CommandFailed(client_refusal(shown, exc)) from None
        except OSError as exc:
            raise CommandFailed(f"Cannot read {shown}: {exc.strerror or exc}.") from None
