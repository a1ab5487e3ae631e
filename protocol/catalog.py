"""Image, listing, search and cart messages.

Listings are paged with server-side cursors: the first request returns a `Batch` with up to
`limit` items and a cursor; `More(cursor)` returns the next items. A batch larger than
`STREAM_CHUNK` items is streamed as several `Batch` frames for the same request id, the last one
marked `final`, so no single frame grows with the batch size.

Money is integer cents everywhere on the wire; a client formats it for people.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.base import Request, Response
from protocol.limits import (
    MAX_BATCH,
    MAX_CENTS,
    MAX_COLOUR_SPEC_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_FILENAME_CHARS,
    MAX_ID,
    MAX_IDS_PER_REQUEST,
    MAX_LINE_QUANTITY,
    MAX_ORDER_LINES,
    MAX_QUANTITY,
    MAX_SEARCH_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
)

ImageId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Cents = Annotated[int, msgspec.Meta(ge=0, le=MAX_CENTS)]
Quantity = Annotated[int, msgspec.Meta(ge=0, le=MAX_QUANTITY)]
StockChange = Annotated[int, msgspec.Meta(ge=-MAX_QUANTITY, le=MAX_QUANTITY)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG_CHARS)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=MAX_TAGS)]
Title = Annotated[str, msgspec.Meta(max_length=MAX_TITLE_CHARS)]
Description = Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_CHARS)]
FileName = Annotated[str, msgspec.Meta(max_length=MAX_FILENAME_CHARS)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH)]
SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SEARCH_CHARS)]
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Visibility = Literal["public", "private"]

#: Items per frame when a batch is streamed.
STREAM_CHUNK = 50


class Colour(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One dominant colour of an image: what it is and how much of the picture it covers."""

    r: int
    g: int
    b: int
    hue: float
    saturation: float
    lightness: float
    share: float


class ImageSummary(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """An image as listings show it. `thumbnail` is present only when the request asked for it.

    Fields at their defaults are left off the wire (docs/protocol.md, "Compatibility"): a
    client from before `colours_pending` refuses unknown fields, and the others' defaults are
    what every client fills in for a missing one."""

    id: int
    title: str
    description: str
    filename: str
    tags: list[str]
    price_cents: int
    quantity: int
    owner: str
    visibility: Visibility
    created_at: float
    width: int
    height: int
    palette: list[Colour] = []
    #: The palette is empty because it was not computed yet (the image was stored by a server
    #: run with --no-colours), not because the picture has no colour.
    colours_pending: bool = False
    thumbnail: bytes | None = None
    #: Similarity for search by image (cosine), closeness for search by colour.
    score: float | None = None
    #: For search by colour: the dominant colour that matched.
    match: Colour | None = None


# --- images --------------------------------------------------------------------------------------


class UploadImage(Request):
    filename: FileName
    data: bytes
    title: Title = ""
    description: Description = ""
    tags: Tags = []
    price_cents: Cents = 0
    quantity: Quantity = 0
    private: bool = False


class Uploaded(Response):
    image_id: int
    #: False when this user already had the same content: `image_id` is the existing image.
    created: bool


class UpdateImage(Request):
    image_id: ImageId
    title: Title | None = None
    description: Description | None = None
    price_cents: Cents | None = None
    quantity: Quantity | None = None
    #: Added to the stock as it is when the change is applied (negative takes away), so that a
    #: restock keeps the sales made meanwhile; not with `quantity`.
    add_quantity: StockChange | None = None
    add_tags: Tags = []
    remove_tags: Tags = []
    private: bool | None = None


class DeleteImage(Request):
    image_id: ImageId


class GetImage(Request):
    image_id: ImageId
    with_original: bool = False


class ImageDetails(Response):
    image: ImageSummary
    original: bytes | None = None
    format: str = ""
    byte_size: int = 0


class ImageUpdated(Response):
    image: ImageSummary


# --- listings ------------------------------------------------------------------------------------


class ListingOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What every listing request shares: batch size and whether to send thumbnails."""

    limit: Limit = 20
    thumbnails: bool = True


class Browse(Request):
    tags: Tags = []
    match_any: bool = False
    options: ListingOptions = ListingOptions()


class TextSearch(Request):
    text: SearchText
    options: ListingOptions = ListingOptions()


class Filters(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Filters applied before results are cut to a batch."""

    tags: Tags = []
    min_price_cents: Cents | None = None
    max_price_cents: Cents | None = None
    in_stock: bool = False


class ImageSearch(Request):
    """Search by example: a photo's bytes, or a stored image (left out of its results)."""

    data: bytes | None = None
    image_id: ImageId | None = None
    filters: Filters = Filters()
    options: ListingOptions = ListingOptions()


class ColourSearch(Request):
    """Search by dominant colour: images with a colour near `hue`, best (closeness, share) first."""

    hue: Annotated[float, msgspec.Meta(ge=0, le=360)]
    tolerance: Annotated[float, msgspec.Meta(ge=0, le=180)] = 15.0
    min_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: Optional lightness/saturation bounds that separate e.g. brown from orange, pink from red.
    min_lightness: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    max_lightness: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    min_saturation: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    max_saturation: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    #: The user's COLOR as the shell read it (a name or #rrggbb in lower-case ASCII, a hue in
    #: ASCII digits with the `°` or `deg` it was typed with, e.g. `355°`; other clients may
    #: send it as typed). The server parses it as the shell
    #: does (util.colour_spec): its hue and its lightness/saturation regions (brown vs orange,
    #: pink vs red) replace `hue` and the four bounds above. `tolerance` still applies (the
    #: shell sends the name's band when the user gave none).
    spec: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_COLOUR_SPEC_CHARS)] | None = None
    filters: Filters = Filters()
    options: ListingOptions = ListingOptions()


class More(Request):
    """The next batch of a listing, read now: images deleted or hidden since, or that no
    longer pass the search's filters (price, stock, tags), are left out."""

    cursor: Cursor
    options: ListingOptions = ListingOptions(limit=10)


class Batch(Response, omit_defaults=True):
    """One batch of a listing's items; a long one comes as several frames (`final`).

    `kept` and `unindexed` came after the first clients, which refuse unknown fields: at 0
    (nothing to say) they are left off the wire, as are `cursor` and `final` at their
    defaults, which every client fills in (docs/protocol.md, "Compatibility")."""

    items: list[ImageSummary]
    #: Present while more results remain; pass it to `More`.
    cursor: str | None = None
    #: False on all but the last frame of a streamed batch.
    final: bool = True
    #: On the last batch of a ranked search (text, by image, by colour) that kept only its
    #: best `kept` results while more matched: the listing ends there, but not the matches.
    kept: int = 0
    #: On the first batch of a search by image or by colour while its backfill still runs: how
    #: many images the viewer could see (passing the filters) have no embedding, or no colours,
    #: yet, so this search could not rank them.
    unindexed: int = 0


class ListTags(Request):
    pass


class TagCount(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    count: int


class TagList(Response):
    tags: list[TagCount]


# --- cart and orders -----------------------------------------------------------------------------


class GetImages(Request):
    """Fresh price, stock and visibility for a cart: missing or hidden ids are simply absent."""

    image_ids: Annotated[list[ImageId], msgspec.Meta(max_length=MAX_IDS_PER_REQUEST)]
    thumbnails: bool = False


class Images(Response):
    items: list[ImageSummary]


class CartLine(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_id: ImageId
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE_QUANTITY)]
    #: The unit price the buyer saw; checkout refuses the line if the price has changed since.
    expected_price_cents: Cents | None = None


#: A checkout's idempotency key: random, made by the client before it sends the order; opaque
#: to the server, which only compares it.
CheckoutKey = Annotated[str, msgspec.Meta(min_length=16, max_length=64)]


class Checkout(Request):
    """All lines or none; the buyer's order already placed with the same `key` is the answer."""

    lines: Annotated[list[CartLine], msgspec.Meta(min_length=1, max_length=MAX_ORDER_LINES)]
    #: The client's idempotency key (16 to 64 characters, random, written down before
    #: sending). Sent again by a client that got no answer: when the buyer already has an order
    #: placed with this key, that order is the answer (`placed_earlier`), nothing is checked or
    #: bought, and the lines sent are not compared. Keys are per buyer.
    key: CheckoutKey | None = None


class OrderLine(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_id: int
    title: str
    quantity: int
    unit_price_cents: int
    seller: str = ""
    buyer: str = ""


class Order(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: int
    created_at: float
    total_cents: int
    lines: list[OrderLine]
    buyer: str = ""


class OrderPlaced(Response, omit_defaults=True):
    """`placed_earlier`: the order is the one an earlier Checkout with that `key` placed.

    Left off the wire when false, which is all a client from before it is ever told (it sends
    no key)."""

    order: Order
    #: The order was placed by an earlier Checkout with the same key, not by this one.
    placed_earlier: bool = False


#: Most order lines one `OrderList` page carries: a page ends before the order that would pass
#: this, so no answer grows with a history (a whole one once passed the 32 MiB frame limit).
#: Twice MAX_ORDER_LINES, so a page always has room for one whole order. Worst case (every
#: title 200 four-byte characters, 64-character four-byte names, the largest ints): 1.73 MB.
ORDER_PAGE_LINES = 2 * MAX_ORDER_LINES
OrderId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]


class ListOrders(Request):
    """Paged, newest first: one answer with a whole history once outgrew the frame limit."""

    #: Only orders older than this order id: the previous page's `next_before`.
    before: OrderId | None = None
    #: Most orders in the page (the server also caps it at `Limits.max_batch`).
    limit: Limit = 20


class ListSales(Request):
    """Orders that bought the user's images, newest first, paged like `ListOrders`."""

    before: OrderId | None = None
    limit: Limit = 20


class OrderList(Response):
    #: Newest first: at most `limit` orders and, unless a single order holds more, at most
    #: ORDER_PAGE_LINES lines in all.
    orders: list[Order]
    #: Present while older orders remain: send it as `before` for the next page.
    next_before: int | None = None


REQUESTS: tuple[type[Request], ...] = (
    UploadImage,
    UpdateImage,
    DeleteImage,
    GetImage,
    Browse,
    TextSearch,
    ImageSearch,
    ColourSearch,
    More,
    ListTags,
    GetImages,
    Checkout,
    ListOrders,
    ListSales,
)
RESPONSES: tuple[type[Response], ...] = (
    Uploaded,
    ImageDetails,
    ImageUpdated,
    Batch,
    TagList,
    Images,
    OrderPlaced,
    OrderList,
)
