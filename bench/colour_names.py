"""Which colour names find which photos of clothing-small, and what a rule change moved.

The labelled photos (tests/test_colour_quality.py) are a fifth of the set and were chosen to be
clear; a change to the colour rules can also add or take away names on the other 380. This
runs the upload path's decode, thumbnail and `extract_palette`, then `best_match` for every
name at the search's default min-share, over every photo, and writes {photo: [names]} as JSON.
Given the JSON of an earlier run, it lists the photos whose names changed, to look at by eye
(docs/colour-measurements.md, "Dark colours"):

    .venv/bin/python -m bench.colour_names /tmp/before.json          # on the old rules
    .venv/bin/python -m bench.colour_names /tmp/after.json --against /tmp/before.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.bench_colours import DATASET
from models.colours import PaletteColour, best_match, extract_palette
from service.context import ServerConfig
from util.colour_spec import DEFAULT_MIN_SHARE, NAMES, parse_colour
from util.images import decode_image, make_thumbnail

QUERIES = {name: parse_colour(name) for name in NAMES}
THUMBNAIL_SIDE = ServerConfig().thumbnail_side


def upload_palette(data: bytes) -> list[PaletteColour]:
    """What the upload path stores for a picture: decode, thumbnail, palette."""
    decoded = decode_image(data, target=THUMBNAIL_SIDE)
    thumbnail, _ = make_thumbnail(decoded.image, THUMBNAIL_SIDE)
    return extract_palette(thumbnail)


def matching_names(palette: list[PaletteColour]) -> list[str]:
    """The colour names a search by name finds this palette by, at the default min-share."""
    return [
        name
        for name, query in QUERIES.items()
        if best_match(palette, query, query.tolerance, DEFAULT_MIN_SHARE)
    ]


def names_per_photo(root: Path) -> dict[str, list[str]]:
    return {
        str(path.relative_to(root)): matching_names(upload_palette(path.read_bytes()))
        for path in sorted(root.glob("*/*/*.jpg"))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write {photo: [names]} as JSON")
    parser.add_argument("--against", type=Path, help="an earlier run's JSON, to list changes")
    args = parser.parse_args(argv)
    if not DATASET.is_dir():
        print(f"{DATASET} is not there", file=sys.stderr)
        return 1
    names = names_per_photo(DATASET)
    args.out.write_text(json.dumps(names, indent=0))
    print(f"{len(names)} photos, {sum(map(bool, names.values()))} with a name; wrote {args.out}")
    if args.against:
        before = json.loads(args.against.read_text())
        changed = [p for p in names if before.get(p) != names[p]]
        for photo in changed:
            print(f"{photo}: {before.get(photo)} -> {names[photo]}")
        print(f"{len(changed)} photos changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
