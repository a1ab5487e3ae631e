"""The wire's limits, each named once.

`protocol.catalog` builds its message types from these, and the shell and the server import the
same names to refuse early in a sentence ("at most 64 tags per image") rather than let msgspec
refuse the whole message. A limit written as a bare number in two places drifts: the second copy
keeps refusing, or stops refusing, what the wire now allows.
"""

from __future__ import annotations

from typing import Final

#: Ids are JSON-safe integers, so scripts reading `--json` never lose precision.
MAX_ID: Final = 2**53
#: The largest unit price: 100 million, in cents.
MAX_CENTS: Final = 100_000_000_00
#: The largest stock count, and the largest step of a relative stock change.
MAX_QUANTITY: Final = 1_000_000_000
#: The most units of one image in a cart line or an order line.
MAX_LINE_QUANTITY: Final = 1_000_000
#: The most lines in one checkout, and in one cart.
MAX_ORDER_LINES: Final = 500
#: The most ids asked for in one GetImages (a cart's refresh).
MAX_IDS_PER_REQUEST: Final = 500
#: A tag's characters, and the tags one image or one request may carry.
MAX_TAG_CHARS: Final = 64
MAX_TAGS: Final = 64
MAX_TITLE_CHARS: Final = 200
MAX_DESCRIPTION_CHARS: Final = 5000
MAX_FILENAME_CHARS: Final = 1024
#: The most images one listing batch holds (`--batch N`).
MAX_BATCH: Final = 500
MAX_SEARCH_CHARS: Final = 500
#: Results one search ranks and keeps for `More`, for text, image and colour searches alike:
#: nobody pages through hundreds, and the cap bounds the work and the memory per query.
MAX_SEARCH_RESULTS: Final = 500
#: A colour as typed: a name, a hue or a #rrggbb hex.
MAX_COLOUR_SPEC_CHARS: Final = 64
