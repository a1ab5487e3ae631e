"""The vocabulary of search by colour: what a query and a ranked hit are, and the limits on how
many are kept. Its filters are those of every ranked search (`repository.filters`).

Ranking itself is `repository.colour_table`: every dominant colour in memory, scored with
numpy, only the best candidates looked up in SQL. This module is what that table, the route
(`service.colour_search`) and the tests share; it holds no SQL. The tests' second opinion, a
ranking computed in SQLite that the table must equal to the bit, lives in
`tests/colour_oracle.py`, and is itself held equal to `models.colours.best_match`.

Nothing here knows the wire format or how a COLOR was parsed: the caller passes the hue
intervals, the query hue and tolerance, and the lightness/saturation boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from protocol.limits import MAX_SEARCH_RESULTS

__all__ = [
    "MAX_RESULTS",
    "WANT_GROWTH",
    "WANT_ROOM",
    "ColourHit",
    "HueQuery",
    "LightnessSaturationBox",
    "local_hue",
]

#: Ranked results one search keeps for `more` (a batch of 20, then 10 at a time): colour queries
#: are broad, and the cap is what keeps the work per query bounded.
MAX_RESULTS = MAX_SEARCH_RESULTS
#: The first pass checks this many times `limit` candidates: room for the candidates that
#: visibility, the filters or a second colour of the same image remove. Each further pass
#: checks WANT_GROWTH times more.
WANT_ROOM = 1.25
WANT_GROWTH = 4


class LightnessSaturationBox(Protocol):
    """What `util.colour_spec.LSBox` offers, restated: the storage layer needs only these four
    bounds, not the parser of colour names that defines them."""

    @property
    def l_lo(self) -> float: ...
    @property
    def l_hi(self) -> float: ...
    @property
    def s_lo(self) -> float: ...
    @property
    def s_hi(self) -> float: ...
    @property
    def h_lo(self) -> float | None: ...
    @property
    def h_hi(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class HueQuery:
    """A colour query as the store needs it.

    `ranges` are the closed hue intervals within `tolerance` of `hue`
    (`util.colour_spec.hue_ranges`); `boxes` the lightness/saturation regions (a colour whose
    hue no box covers is accepted; else one covering box must hold it, as in
    `ColourQuery.accepts`).
    """

    hue: float
    tolerance: float
    ranges: Sequence[tuple[float, float]]
    min_share: float = 0.0
    boxes: Sequence[LightnessSaturationBox] = ()


@dataclass(frozen=True, slots=True)
class ColourHit:
    """One ranked image and the dominant colour of it that matched best."""

    image_id: int
    score: float
    rank: int
    hue: float
    saturation: float
    lightness: float
    share: float
    rgb: tuple[int, int, int] = (0, 0, 0)


def local_hue(hue: float, interval: tuple[float, float]) -> float:
    """The query hue, or hue +- 360, whichever lies on the interval's side of 0 degrees: the
    distance to every hue inside the interval is then a plain difference, with no wrapping
    to decide per colour."""
    middle = (interval[0] + interval[1]) / 2.0
    return min((hue - 360.0, hue, hue + 360.0), key=lambda h: abs(h - middle))
