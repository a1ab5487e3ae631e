"""Retrieval quality of the embeddings on clothing-small: P@1 and P@10 per preprocessing variant.

Why: a similarity search that finds the same class less often than the dataset's reference
figure (plain resize, P@1 0.73 / P@10 0.56) is losing information somewhere. This script
measures the reference and a few *general* alternatives on the 100 queries against the 400
gallery photos (cosine, exact search). Nothing here is tuned to the dataset: every variant
has fixed, textbook settings and all figures are reported, good or bad.

    .venv/bin/python bench/eval_quality.py [--weights W] [--dataset D] [--cache-dir C]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.embeddings import (  # noqa: E402
    INPUT_SIZE,
    Embedder,
    centre_crop,
    draft_size,
    l2_normalise,
    prepare_input,
)

DEFAULT_WEIGHTS = ROOT.parent / "shared/models/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
DEFAULT_DATASET = ROOT.parent / "shared/datasets/clothing-small"
RESULTS = ROOT / "bench/results/eval_quality.json"
QE_K = 5  # average query expansion over the top 5, a common textbook setting (not tuned)

REFERENCE = "squash (plain resize, reference)"

Prepare = Callable[[Image.Image], np.ndarray]


# The alternatives to the server's centre crop that this benchmark measures (docs/embeddings.md).
#: Mid-grey is exactly 0 after preprocessing, i.e. "no signal" for the network.
PAD_COLOUR = (128, 128, 128)


def letterbox(
    image: Image.Image, size: int = INPUT_SIZE, fill: tuple[int, int, int] | None = PAD_COLOUR
) -> np.ndarray:
    """Fit the whole image into a ``size`` square without distortion, padding the rest.

    ``fill=None`` pads with the median colour of the image's border, i.e. extends its
    background; it is measured in bench/eval_quality.py as an alternative to a fixed colour.
    """
    rgb = image.convert("RGB")
    if fill is None:
        fill = border_colour(rgb)
    w, h = rgb.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = rgb.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Median RGB of the one-pixel frame around an RGB image (its likely background)."""
    a = np.asarray(image)
    frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    r, g, b = (int(v) for v in np.median(frame, axis=0))
    return r, g, b


def squash(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """Plain resize of the whole image to a square: the dataset's reference preprocessing."""
    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def imagenet_crop(image: Image.Image) -> np.ndarray:
    """The ImageNet evaluation recipe: shorter side to 256, centre 224 crop (87.5%)."""
    w, h = image.size
    side = min(w, h) * INPUT_SIZE / 256
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    out = image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


VARIANTS: dict[str, Prepare] = {
    REFERENCE: squash,
    "centre crop (shorter side)": centre_crop,
    "imagenet crop (256 -> 224)": imagenet_crop,
    "letterbox, grey pad": lambda im: letterbox(im, fill=(128, 128, 128)),
    "letterbox, white pad": lambda im: letterbox(im, fill=(255, 255, 255)),
    "letterbox, border-colour pad": lambda im: letterbox(im, fill=None),
}


def load(path: Path, draft: bool) -> Image.Image:
    """Decode as the server does: EXIF orientation applied, RGB; optionally a JPEG draft."""
    with Image.open(path) as im:
        if draft:
            im.draft("RGB", draft_size(im.size))
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def split(dataset: Path, part: str) -> tuple[list[Path], np.ndarray]:
    files = sorted((dataset / part).glob("*/*.jpg"))
    return files, np.array([f.parent.name for f in files])


def hits_at(scores: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, k: int) -> np.ndarray:
    """Per-query precision at k (same-class share of the k nearest gallery photos)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.mean(g_labels[top] == q_labels[:, None], axis=1)


def paired_stderr(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the mean per-query difference: which gains are more than noise."""
    d = a - b
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def query_expansion(q: np.ndarray, g: np.ndarray, k: int = QE_K) -> np.ndarray:
    """Average query expansion: the query plus its top-k gallery hits, renormalised."""
    top = np.argsort(-(q @ g.T), axis=1)[:, :k]
    return l2_normalise(q + g[top].sum(axis=1))


def centre(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the gallery mean (computable from the store, no labels) and renormalise."""
    mu = g.mean(axis=0, keepdims=True)
    return l2_normalise(q - mu), l2_normalise(g - mu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=os.environ.get("VITRINE_WEIGHTS", DEFAULT_WEIGHTS))
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--cache-dir", default=os.environ.get("VITRINE_CACHE_DIR"))
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(), "vitrine-model-cache")
    embedder = Embedder(args.weights, cache_dir)
    q_files, q_labels = split(args.dataset, "queries")
    g_files, g_labels = split(args.dataset, "gallery")
    if not q_files or not g_files:
        sys.exit(f"no images under {args.dataset}")
    decoded = {d: ([load(f, d) for f in q_files], [load(f, d) for f in g_files]) for d in (0, 1)}

    def embed(images: list[Image.Image], prep: Prepare, flip: bool) -> np.ndarray:
        batch = np.stack([prep(im) for im in images])
        vectors = embedder.embed(batch)
        if flip:  # horizontal-flip test-time augmentation: mean of both views
            vectors = l2_normalise(vectors + embedder.embed(batch[:, :, ::-1].copy()))
        return vectors

    rows: list[dict[str, object]] = []
    reference: dict[int, np.ndarray] = {}

    def record(name: str, q: np.ndarray, g: np.ndarray, t0: float) -> None:
        s = q @ g.T
        p1, p10 = hits_at(s, q_labels, g_labels, 1), hits_at(s, q_labels, g_labels, 10)
        reference.setdefault(1, p1)
        reference.setdefault(10, p10)
        row = {
            "variant": name,
            "p_at_1": float(p1.mean()),
            "p_at_10": float(p10.mean()),
            "delta_p_at_1": float(p1.mean() - reference[1].mean()),
            "delta_p_at_1_stderr": paired_stderr(p1, reference[1]),
            "delta_p_at_10": float(p10.mean() - reference[10].mean()),
            "delta_p_at_10_stderr": paired_stderr(p10, reference[10]),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        print(
            f"{name:<52} {row['p_at_1']:>5.2f} {row['p_at_10']:>6.3f}"
            f"  {row['delta_p_at_1']:>+6.2f} ±{row['delta_p_at_1_stderr']:.2f}"
            f"  {row['delta_p_at_10']:>+7.3f} ±{row['delta_p_at_10_stderr']:.3f}"
        )

    print(f"{'variant':<52} {'P@1':>5} {'P@10':>6}  {'ΔP@1 vs ref (s.e.)':>15}  ΔP@10 (s.e.)")
    probe = decoded[0][0][0]
    default_name = next(
        (n for n, p in VARIANTS.items() if np.array_equal(p(probe), prepare_input(probe))),
        "prepare_input",
    )
    embedded: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}
    for name, prep in VARIANTS.items():
        for flip in (False, True):
            t0 = time.perf_counter()
            q, g = (embed(part, prep, flip) for part in decoded[0])
            embedded[name, flip] = q, g
            record(name + (" + flip TTA" if flip else ""), q, g, t0)
    for base in (REFERENCE, default_name):
        q, g = embedded[base, False]
        t0 = time.perf_counter()
        record(f"{base} + query expansion k={QE_K}", query_expansion(q, g), g, t0)
        record(f"{base} + gallery-mean centring", *centre(q, g), t0)
    t0 = time.perf_counter()
    q, g = (embed(part, prepare_input, False) for part in decoded[1])
    record(f"{default_name} (JPEG draft decode)", q, g, t0)
    print(f"default prepare_input: {default_name}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": str(args.dataset),
        "queries": len(q_files),
        "gallery": len(g_files),
        "default": default_name,
        "results": rows,
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
