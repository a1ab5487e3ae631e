"""Colour names on harder generated scenes than the quality test's: where the rules still fail.

`tests/test_colour_quality.py` generates swatches and produce that the rules must get right
(its figures are a pass/fail test). This generates the scenes they still get wrong, to measure
a change against: produce on white, grey, black and wooden tables, piled on black, or packed
in a crate that fills the frame with a few leaves on top, lit by one light (shaded to a
quarter on the far side), under neutral, warm, cool or dim light, and dark, dusty and pale
swatches on cards or filling the frame. Nothing here goes through the server: it runs the
upload path's decode, thumbnail and palette, then the names a search finds each picture by,
with `bench.colour_names`' helpers.

    .venv/bin/python -m bench.colour_scenes [--seed N ...] [--misses]

Prints precision and recall per name for each seed, then pooled over the seeds: the figures
docs/colour-measurements.md quotes ("Lit colour", "A small thing on a large table", "Shade").
`--misses` lists every wrong or missed picture with its palette.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bench.colour_names import matching_names, upload_palette
from models.colours import PaletteColour
from util.colour_spec import NAMES

HEIGHT, WIDTH = 240, 320
#: linear-light RGB gains of each light at full strength
LIGHTS = {"none": (1.0, 1.0, 1.0), "warm": (1.0, 0.78, 0.5), "cool": (0.8, 0.9, 1.0)}
WOODS = ["#a0703c", "#8b5a2b", "#c19a6b", "#6b4423"]
LEAF = "#3a7d2c"
#: name -> [(body colour, bloom)]: bloom greys the body as on plums and blueberries
PRODUCE: dict[str, list[tuple[str, float]]] = {
    "purple": [("#2d1b33", 0.0), ("#3a1f47", 0.0), ("#4b2a5a", 0.0)],  # aubergines
    "blue": [("#2e3552", 0.25), ("#333c66", 0.3), ("#28304f", 0.2)],  # blueberries
    "red": [("#6b0f1a", 0.0), ("#b3001b", 0.0), ("#c8102e", 0.0), ("#8e1b1b", 0.0)],
    "green": [("#2f3d1c", 0.0), ("#6fa83a", 0.0), ("#4a7a2a", 0.0), ("#8fbf4f", 0.0)],
    "brown": [("#b08a5a", 0.0), ("#6e3b1e", 0.0), ("#8a6a3f", 0.0), ("#5c4033", 0.0),
              ("#c48a4a", 0.0)],  # potatoes, chestnuts, kiwis, coconuts, onions
    "orange": [("#ed7014", 0.0), ("#ff7518", 0.0), ("#f28c28", 0.0)],
    "yellow": [("#f3d35a", 0.0), ("#ffe135", 0.0), ("#e8c33a", 0.0)],
}  # fmt: skip
SWATCHES: dict[str, list[str]] = {
    "pink": ["#f8c8d0", "#f4a6c0", "#e75480", "#ffb6c1"],
    "blue": ["#bcd8f0", "#1e3a8a", "#0b1f4b", "#4a90d9"],
    "green": ["#b8e8c8", "#1b4d2e", "#98c9a3"],
    "purple": ["#d8c8f0", "#4b0082", "#b19cd9"],
    "yellow": ["#fff6b0", "#fada5e"],
    "orange": ["#ffd0a8", "#cc5500"],
    "red": ["#7f0000", "#e32636"],
    "brown": ["#3e2723", "#7b3f00", "#c8a27a"],
    "cyan": ["#b2ebf2", "#007c80"],
}


@dataclass(frozen=True, slots=True)
class Scene:
    name: str
    description: str
    jpeg: bytes


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def _lit(img: np.ndarray, light: str, strength: float) -> np.ndarray:
    """The scene under a light: gains in linear light, or dimmed ("dim")."""
    linear = (np.clip(img, 0, 255) / 255.0) ** 2.2
    if light == "dim":
        linear = linear * (1.0 - 0.7 * strength)
    else:
        linear = linear * (1.0 - strength * (1.0 - np.array(LIGHTS[light])))
    return np.clip(linear ** (1 / 2.2) * 255.0, 0, 255)


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _backdrop(kind: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    if kind == "wood":
        grain = 1 + 0.12 * np.sin(yy / rng.uniform(3, 8) + 2 * np.sin(xx / 40))
        grain += rng.normal(0, 0.03, grain.shape)
        return _rgb(str(rng.choice(WOODS))) * grain[..., None]
    level = {"white": (225, 250), "grey": (90, 170), "black": (10, 35)}[kind]
    noise = {"white": 2, "grey": 3, "black": 2}[kind]
    shape = (HEIGHT, WIDTH, 3)
    return np.full(shape, rng.uniform(*level)) + rng.normal(0, noise, shape)


def _fruit(
    img: np.ndarray, body: np.ndarray, bloom: float, count: int, size: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """`count` round fruit lit from the upper left, each with a white highlight and a shadow
    ring; scattered over the frame when there are many (a pile), centred otherwise."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    spread = (0.05, 0.95) if count > 6 else (0.3, 0.7)
    for _ in range(count):
        cx, cy = rng.uniform(*spread) * WIDTH, rng.uniform(*spread) * HEIGHT
        rx = rng.uniform(*size)
        ry = rx * rng.uniform(0.8, 1.2)
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        far = ((xx - cx + rx * 0.4) / rx) ** 2 + ((yy - cy + ry * 0.4) / ry) ** 2
        shade = 1.15 - 0.55 * np.clip(far, 0, 1.6)
        colour = body * (shade * (1 + rng.normal(0, 0.05, shade.shape)))[..., None]
        if bloom:
            colour = colour * (1 - bloom) + np.array([150, 158, 175]) * bloom * shade[..., None]
        highlight = ((xx - cx + rx * 0.35) / (rx * 0.18)) ** 2 + (
            (yy - cy + ry * 0.35) / (ry * 0.12)
        ) ** 2 <= 1
        colour = np.where(highlight[..., None], 245.0, colour)
        img = np.where(((d > 1) & (d < 1.15))[..., None], img * 0.45, img)
        img = np.where((d <= 1)[..., None], colour, img)
    return img


def produce(body: str, bloom: float, rng: np.random.Generator) -> tuple[str, bytes]:
    kind = str(rng.choice(["white", "white", "wood", "grey", "black", "pile"]))
    if kind == "pile":
        img = _fruit(_backdrop("black", rng), _rgb(body), bloom, 14, (30, 55), rng)
    else:
        count = int(rng.integers(1, 4))
        img = _fruit(_backdrop(kind, rng), _rgb(body), bloom, count, (35, 70), rng)
    light = str(rng.choice(["none", "warm", "warm", "cool", "dim"]))
    img = _lit(img, light, rng.uniform(0.3, 0.8)) + rng.normal(0, 3, img.shape)
    return f"produce {body} on {kind}, {light} light", _jpeg(img, int(rng.integers(70, 93)))


def _leaves(img: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` green leaves lying on the picture (the tops of a crate of fruit)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    for _ in range(count):
        cx, cy = rng.uniform(0.1, 0.9) * WIDTH, rng.uniform(0.1, 0.9) * HEIGHT
        angle, length = rng.uniform(0, np.pi), rng.uniform(15, 30)
        u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / length
        v = ((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)) / (0.4 * length)
        vein = 0.8 + 0.2 * rng.random(u.shape)
        img = np.where((u * u + v * v <= 1)[..., None], _rgb(LEAF) * vein[..., None], img)
    return img


def crate(body: str, bloom: float, rng: np.random.Generator) -> tuple[str, bytes]:
    """Fruit packed to fill the frame, nothing else around them (the gaps are their own
    shadow), with up to three leaves: what a table under a fruit must not be taken for."""
    img = _fruit(
        np.full((HEIGHT, WIDTH, 3), 0.35) * _rgb(body), _rgb(body), bloom, 40, (30, 50), rng
    )
    count = int(rng.integers(0, 4))
    img = _leaves(img, count, rng)
    light = str(rng.choice(["none", "warm", "cool", "dim"]))
    img = _lit(img, light, rng.uniform(0.3, 0.7)) + rng.normal(0, 3, img.shape)
    what = f"produce {body} in a crate, {count} leaves, {light} light"
    return what, _jpeg(img, int(rng.integers(70, 93)))


def swatch(colour: str, rng: np.random.Generator) -> tuple[str, bytes]:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([HEIGHT, WIDTH]).reshape(2, 1, 1)
    gradient = 1 + 0.15 * (xx - 0.5) * rng.uniform(-1, 1) + 0.12 * (yy - 0.5) * rng.uniform(-1, 1)
    painted = _rgb(colour) * gradient[..., None]
    kind = str(rng.choice(["full frame", "card on white", "card on wood"]))
    img = painted
    if kind != "full frame":
        img = _backdrop("white" if kind == "card on white" else "wood", rng)
        card = np.zeros((HEIGHT, WIDTH), dtype=bool)
        card[int(HEIGHT * 0.2) : int(HEIGHT * 0.8), int(WIDTH * 0.25) : int(WIDTH * 0.75)] = True
        img = np.where(card[..., None], painted, img)
    light = str(rng.choice(["none", "warm", "cool", "dim"]))
    img = _lit(img, light, rng.uniform(0.2, 0.6)) + rng.normal(0, 4, img.shape)
    return f"swatch {colour}, {kind}, {light} light", _jpeg(img, int(rng.integers(70, 93)))


def scenes(seed: int) -> Iterator[Scene]:
    """225 pictures: four of each produce colour, three of each swatch, then two crates of each
    produce colour (last, so that the earlier pictures of a seed stay the same draws)."""
    rng = np.random.default_rng(seed)
    for name, bodies in PRODUCE.items():
        for body, bloom in bodies:
            for _ in range(4):
                yield Scene(name, *produce(body, bloom, rng))
    for name, colours in SWATCHES.items():
        for colour in colours:
            for _ in range(3):
                yield Scene(name, *swatch(colour, rng))
    for name, bodies in PRODUCE.items():
        for body, bloom in bodies:
            for _ in range(2):
                yield Scene(name, *crate(body, bloom, rng))


def evaluate(seed: int, misses: bool) -> dict[str, tuple[int, int, int]]:
    """Print one seed's table (and with `misses`, every wrong or missed picture); return
    {name: (returned, right, of that name)} for the pooled table."""
    rows = [(scene, upload_palette(scene.jpeg)) for scene in scenes(seed)]
    names = [set(matching_names(colours)) for _, colours in rows]
    print(f"\nseed {seed}: {len(rows)} pictures")
    counts: dict[str, tuple[int, int, int]] = {}
    wrong: list[str] = []
    for name in NAMES:
        found = [i for i, matched in enumerate(names) if name in matched]
        truth = {i for i, (scene, _) in enumerate(rows) if scene.name == name}
        counts[name] = (len(found), len(truth.intersection(found)), len(truth))
        for i in sorted(set(found) - truth):
            wrong.append(f"{name} returns {rows[i][0].description}: {_show(rows[i][1])}")
        for i in sorted(truth - set(found)):
            wrong.append(f"{name} misses {rows[i][0].description}: {_show(rows[i][1])}")
    _print_table(counts)
    if misses:
        print("\n".join(wrong))
    return counts


def _print_table(counts: dict[str, tuple[int, int, int]]) -> None:
    print("| name | returned | right | of that name | precision | recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (returned, right, of_name) in counts.items():
        precision = right / returned if returned else 1.0
        recall = right / of_name if of_name else 1.0
        print(f"| {name} | {returned} | {right} | {of_name} | {precision:.3f} | {recall:.3f} |")


def _show(colours: list[PaletteColour]) -> str:
    shown = [
        f"{c.hex} hue {c.hue:.0f} L {c.lightness:.2f} S {c.saturation:.2f} {c.share:.0%}"
        for c in colours
    ]
    return "; ".join(shown) or "no colours"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--misses", action="store_true", help="list every wrong or missed picture")
    args = ap.parse_args(argv)
    pooled = dict.fromkeys(NAMES, (0, 0, 0))
    for seed in args.seed:
        for name, counts in evaluate(seed, args.misses).items():
            pooled[name] = tuple(a + b for a, b in zip(pooled[name], counts, strict=True))
    total = sum(of_name for _, _, of_name in pooled.values())
    print(f"\npooled over seeds {', '.join(map(str, args.seed))}: {total} pictures")
    _print_table(pooled)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
