"""How much dominant-colour extraction adds to ingest, and whether white balance earns its keep.

Colour extraction runs on every upload, beside the embedding; the budget is 10% of the
per-image ingest time. This times it against the part of ingest measurable without the model
(decode + thumbnail) on real photos, and, with --accuracy, measures the white-balance step on
constructed tinted images and on real photos with a synthetic warm cast (docs/colours.md).

    .venv/bin/python -m bench.bench_colours [--quick] [--accuracy] [--sheet out.png]
"""

from __future__ import annotations

import argparse
import colorsys
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.colours import PaletteColour, extract_palette, warm_up  # noqa: E402
from util.colour_spec import hue_distance  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "clothing-small"
RESULTS = ROOT / "bench" / "results" / "bench_colours.json"
THUMB = (256, 256)
# Relative linear-light gains of ~3000 K light against daylight: what "warm shop light" does
# to a camera that does not fully correct it. A cast of strength t uses 1 - t * (1 - WARM).
WARM = np.array([1.0, 0.78, 0.50])


def photos(quick: bool) -> list[Path]:
    files = sorted(DATASET.glob("gallery/*/*.jpg"))
    return files[::10] if quick else files


def decode_thumbnail(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail(THUMB)
    return im


def time_per_item(fn: Callable[[object], object], items: list, repeat: int) -> list[float]:
    """Per-item times in ms, best of `repeat` passes per item (other work shares the cores)."""
    best = [float("inf")] * len(items)
    for _ in range(repeat):
        for i, item in enumerate(items):
            t = time.perf_counter()
            fn(item)
            best[i] = min(best[i], (time.perf_counter() - t) * 1e3)
    return best


def summary(ms: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(ms, n=20)
    return {"mean_ms": statistics.fmean(ms), "median_ms": statistics.median(ms), "p95_ms": qs[-1]}


# --- white-balance accuracy -------------------------------------------------------------


def _to_linear(a: np.ndarray) -> np.ndarray:
    a = a / 255.0
    return np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4)


def _to_srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055) * 255.0


def warm_cast(img: Image.Image, strength: float) -> Image.Image:
    if strength == 0:
        return img
    gains = 1.0 - strength * (1.0 - WARM)
    out = _to_srgb(_to_linear(np.asarray(img, dtype=np.float64)) * gains)
    return Image.fromarray(np.round(out).astype(np.uint8))


def constructed(
    rng: np.random.Generator, backdrop: str, pastel: bool
) -> tuple[Image.Image, list[float]]:
    """One or two shaded garments on a backdrop ('white', 'grey', 'black') or, for 'swatch',
    one colour filling the frame; returns the picture and the true hues."""
    h, w = 192, 256
    a = np.empty((h, w, 3))
    a[:] = {"white": rng.uniform(235, 252), "grey": rng.uniform(140, 200), "black": 15}.get(
        backdrop, 0.0
    )
    hues: list[float] = []
    x = 0
    for j in range(1 if backdrop == "swatch" else int(rng.integers(1, 3))):
        bw = w if backdrop == "swatch" else int(rng.uniform(0.25, 0.45) * w)
        hue = float(rng.uniform(0, 360))
        if j and hue_distance(hue, hues[0]) < 60:
            hue = (hues[0] + 180.0) % 360.0
        light = rng.uniform(0.72, 0.85) if pastel else rng.uniform(0.3, 0.65)
        rgb = np.array(colorsys.hls_to_rgb(hue / 360, light, rng.uniform(0.45, 1.0))) * 255
        shade = np.linspace(0.8, 1.1, h)[:, None, None]
        a[:, x : x + bw] = np.clip(rgb * shade, 0, 255)
        hues.append(hue)
        x += bw + 10
    a += rng.normal(0, 3, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)), hues


def _score(palette: list[PaletteColour], hues: list[float]) -> tuple[list[float], int, int]:
    """Hue errors of the true colours found (within 15 deg, share >= 0.05), and the number of
    reported colours (share >= 0.05) that are none of them (backdrop read as a colour)."""
    errs = []
    for hue in hues:
        d = [hue_distance(c.hue, hue) for c in palette if c.share >= 0.05]
        if d and min(d) <= 15:
            errs.append(min(d))
    false = sum(c.share >= 0.05 and all(hue_distance(c.hue, h) > 25 for h in hues) for c in palette)
    return errs, len(errs), false


def wb_constructed(n: int) -> list[dict]:
    rows = []
    scenes = [("white", False), ("grey", False), ("swatch", False), ("white", True),
              ("black", True)]  # fmt: skip
    for backdrop, pastel in scenes:
        for strength in (0.0, 0.5, 1.0, 1.5):
            for wb in (False, True):
                rng = np.random.default_rng(1234)
                errs: list[float] = []
                found = total = false = 0
                for _ in range(n):
                    img, hues = constructed(rng, backdrop, pastel)
                    pal = extract_palette(warm_cast(img, strength), white_balance=wb)
                    e, f, fa = _score(pal, hues)
                    errs += e
                    found += f
                    total += len(hues)
                    false += fa
                rows.append(
                    {
                        "scene": ("pastel on " if pastel else "on ") + backdrop,
                        "cast": strength,
                        "white_balance": wb,
                        "found": found / total,
                        "mean_hue_error": float(np.mean(errs)) if errs else None,
                        "false_colours_per_image": false / n,
                    }
                )
    return rows


def wb_real(thumbs: list[Image.Image]) -> list[dict]:
    """On real photos: how often the correction fires, what it removes, and how stable the
    palette stays when a warm cast is added (share of the untinted palette's main colours,
    share >= 0.1, still found within 15 deg; mean hue drift of those)."""
    rows = []
    casts = {t: [warm_cast(im, t) for im in thumbs] for t in (0.5, 1.0)}
    for wb in (False, True):
        base = [extract_palette(im, white_balance=wb) for im in thumbs]
        row: dict = {
            "white_balance": wb,
            "images": len(thumbs),
            "empty_palettes": sum(not p for p in base),
            "mean_chromatic_share": float(np.mean([sum(c.share for c in p) for p in base])),
        }
        for t, tinted in casts.items():
            kept = weight = 0.0
            drift: list[float] = []
            for p0, im in zip(base, tinted, strict=True):
                p1 = extract_palette(im, white_balance=wb)
                for c in p0:
                    if c.share < 0.1:
                        continue
                    weight += c.share
                    d = [hue_distance(c.hue, e.hue) for e in p1 if e.share >= 0.05]
                    if d and min(d) <= 15:
                        kept += c.share
                        drift.append(min(d))
            row[f"cast_{t}_kept"] = kept / weight if weight else None
            row[f"cast_{t}_drift_deg"] = float(np.mean(drift)) if drift else None
        rows.append(row)
    return rows


def contact_sheet(paths: list[Path], out: Path) -> None:
    """Photos with their palettes as swatches (width = share), to judge the extractor by eye:
    first row as extracted, second row without backdrop suppression."""
    from PIL import ImageDraw

    cell_w, cell_h, cols = 160, 280, 6
    rows = (len(paths) + cols - 1) // cols
    sheet = Image.new("RGB", (cell_w * cols, cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for i, path in enumerate(paths):
        im = decode_thumbnail(path)
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        small = im.copy()
        small.thumbnail((cell_w - 10, 190))
        sheet.paste(small, (x + 5, y + 2))
        draw.text((x + 5, y + 193), f"#{i} {path.parent.name}", fill="black")
        # top row: as extracted; bottom row: without backdrop suppression, for comparison
        for row, palette in enumerate((extract_palette(im), extract_palette(im, backdrop=False))):
            yy, xx = y + 207 + 36 * row, x + 5
            for c in palette:
                sw = max(3, int((cell_w - 10) * c.share))
                draw.rectangle([xx, yy, xx + sw, yy + 16], fill=(c.r, c.g, c.b), outline="black")
                xx += sw + 1
            label = " ".join(f"{c.hue:.0f}/{c.share:.2f}" for c in palette)
            draw.text((x + 5, yy + 18), label[:40], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 photos, 1 pass, fewer scenes")
    ap.add_argument("--accuracy", action="store_true", help="also measure white balance")
    ap.add_argument("--sheet", type=Path, help="write a contact sheet of 30 photos here")
    args = ap.parse_args(argv)

    files = photos(args.quick)
    if not files:
        print(f"no photos under {DATASET}; nothing to measure", file=sys.stderr)
        return 1
    repeat = 1 if args.quick else 3
    decode_ms = time_per_item(decode_thumbnail, files, repeat)
    thumbs = [decode_thumbnail(p) for p in files]
    warm_up()  # load the compiled kernels first, as the server does at start-up
    colour_ms = time_per_item(extract_palette, thumbs, repeat)
    nowb_ms = time_per_item(lambda im: extract_palette(im, white_balance=False), thumbs, repeat)
    nobd_ms = time_per_item(lambda im: extract_palette(im, backdrop=False), thumbs, repeat)

    stages = {
        "decode+thumbnail": summary(decode_ms),
        "extract_palette": summary(colour_ms),
        "extract_palette (no white balance)": summary(nowb_ms),
        "extract_palette (no backdrop suppression)": summary(nobd_ms),
    }
    ratio = stages["extract_palette"]["mean_ms"] / stages["decode+thumbnail"]["mean_ms"]
    print(f"{len(files)} photos from {DATASET.name}, thumbnails {THUMB[0]} px, best of {repeat}")
    print(f"{'stage':<44}{'mean ms':>9}{'median':>9}{'p95':>9}")
    for name, s in stages.items():
        print(f"{name:<44}{s['mean_ms']:>9.3f}{s['median_ms']:>9.3f}{s['p95_ms']:>9.3f}")
    print(f"extract_palette / (decode+thumbnail) = {ratio:.1%}")
    result: dict = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "photos": len(files),
        "repeat": repeat,
        "stages_ms": stages,
        "colour_over_decode": ratio,
    }

    if args.accuracy:
        n = 60 if args.quick else 200
        print(f"\nwhite balance on constructed scenes ({n} each): found / mean |dh| / false")
        cons = wb_constructed(n)
        for r in cons:
            err = "-" if r["mean_hue_error"] is None else f"{r['mean_hue_error']:.2f}"
            print(f"{r['scene']:<16} cast {r['cast']:.1f} wb={r['white_balance']!s:<5} "
                  f"{r['found']:.3f} {err:>6} {r['false_colours_per_image']:.2f}")  # fmt: skip
        real = wb_real(thumbs)
        print("\nwhite balance on real photos (added warm cast: kept share / drift deg)")
        for r in real:
            print(
                f"wb={r['white_balance']!s:<5} empty {r['empty_palettes']}/{r['images']} "
                f"chromatic share {r['mean_chromatic_share']:.2f} | "
                f"cast 0.5: {r['cast_0.5_kept']:.3f} / {r['cast_0.5_drift_deg']:.2f} | "
                f"cast 1.0: {r['cast_1.0_kept']:.3f} / {r['cast_1.0_drift_deg']:.2f}"
            )
        result["white_balance"] = {"constructed": cons, "real": real}

    if args.sheet:
        contact_sheet(sorted(DATASET.glob("gallery/*/*.jpg"))[::13][:30], args.sheet)
        print(f"\ncontact sheet: {args.sheet}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
