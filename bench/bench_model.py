"""Bare embedding throughput: JPEG decode + prepare_input + model, without the server.

Why: uploads are bounded by this pipeline, and DESIGN.md's runtime table (~261 img/s for the
converted model on 2 threads, ~124 img/s with decoding in a plain loop) is the bar. This
measures, on generated 512x512 JPEGs of ~200 KB with varied content:

* the model alone per chunk size (why ``Embedder`` runs chunks of 4),
* decoding alone, full-size and with ``Image.draft``,
* decode + prepare + embed in one plain loop, one image and 16 images at a time,
* decoding overlapped with inference: decoder threads feeding ``EmbeddingBatcher``,
* start-up of a fresh process with a warm model cache (no TensorFlow import).

    .venv/bin/python bench/bench_model.py [--quick] [--images N] [--weights W] [--cache-dir C]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.batcher import EmbeddingBatcher  # noqa: E402
from models.embeddings import INPUT_SHAPE, Embedder, draft_size, prepare_input  # noqa: E402

DEFAULT_WEIGHTS = ROOT.parent / "shared/models/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
RESULTS = ROOT / "bench/results/bench_model.json"
SIDE = 512


def make_jpeg(rng: np.random.Generator) -> bytes:
    """A photo-like 512x512 JPEG: gradient, shapes, blur and grain, so sizes resemble photos."""
    base = np.empty((SIDE, SIDE, 3), np.float32)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    for c in range(3):
        a, b, k = rng.uniform(0, 255), rng.uniform(-128, 128), rng.uniform(2, 12)
        base[..., c] = a + b * np.sin(k * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 25))):
        x0, y0 = (int(v) for v in rng.integers(0, SIDE, 2))
        x1, y1 = x0 + int(rng.integers(20, 250)), y0 + int(rng.integers(20, 250))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    grain = rng.normal(0, rng.uniform(20, 34), (SIDE, SIDE, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def decode(data: bytes, draft: bool = True) -> np.ndarray:
    """What the server's upload path does per file before embedding."""
    with Image.open(io.BytesIO(data)) as image:
        if draft:
            image.draft("RGB", draft_size(image.size))
        return prepare_input(image.convert("RGB"))


def rate(n: int, fn: Callable[[], object]) -> tuple[float, float, float]:
    """img/s by the wall clock, seconds, and CPU ms per image (all threads of this process).

    CPU time per image is the figure that survives a busy machine: when other processes take
    the cores, wall-clock rates drop but the work each image costs does not.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / seconds, seconds, cpu / n * 1000


def overlapped(
    jpegs: list[bytes], embedder: Embedder, decoders: int, max_batch: int = 16
) -> list[np.ndarray]:
    """Decoder threads submit to the batcher as each file is ready; inference runs alongside.

    Pillow and the TFLite runtime both release the GIL, so a decoder thread and the batcher's
    worker genuinely run in parallel.
    """
    with (
        EmbeddingBatcher(embedder, max_batch=max_batch) as batcher,
        ThreadPoolExecutor(decoders) as pool,
    ):
        futures: list[Future[np.ndarray]] = list(
            pool.map(lambda data: batcher.submit(decode(data)), jpegs)
        )
        return [f.result() for f in futures]


def warm_start_seconds(weights: str, cache_dir: str) -> float:
    """Wall time for a new process to import the module, load the cached model, embed once."""
    script = (
        "import numpy as np\nfrom models.embeddings import Embedder\n"
        f"e = Embedder({weights!r}, {cache_dir!r})\n"
        "e.embed(np.zeros((1, 224, 224, 3), np.uint8))\n"
        "import sys; assert 'tensorflow' not in sys.modules\n"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images, for a smoke run")
    parser.add_argument("--images", type=int, default=None, help="JPEGs per run (default 400)")
    parser.add_argument("--weights", default=os.environ.get("VITRINE_WEIGHTS", DEFAULT_WEIGHTS))
    parser.add_argument("--cache-dir", default=os.environ.get("VITRINE_CACHE_DIR"))
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    n = args.images or (64 if args.quick else 400)
    cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(), "vitrine-model-cache")

    rng = np.random.default_rng(1)
    jpegs = [make_jpeg(rng) for _ in range(n)]
    mean_kb = sum(map(len, jpegs)) / n / 1000
    t0 = time.perf_counter()
    embedder = Embedder(args.weights, cache_dir)
    load_s = time.perf_counter() - t0
    inputs = np.stack([decode(j) for j in jpegs])
    assert inputs.shape[1:] == INPUT_SHAPE

    rows: list[dict[str, object]] = []

    def report(name: str, images: int, fn: Callable[[], object]) -> None:
        fn_rate, seconds, cpu_ms = rate(images, fn)
        rows.append(
            {
                "case": name,
                "images": images,
                "seconds": round(seconds, 3),
                "img_per_s": round(fn_rate, 1),
                "cpu_ms_per_img": round(cpu_ms, 2),
            }
        )
        print(f"{name:<58} {fn_rate:>8.1f} {cpu_ms:>10.2f}")

    print(f"{n} JPEGs {SIDE}x{SIDE}, mean {mean_kb:.0f} KB; {os.cpu_count()} CPUs")
    print(f"{'case':<58} {'img/s':>8} {'CPU ms/img':>10}")
    embedder.embed(inputs[:8])  # warm every interpreter size once
    for chunk in (1, 2, 4, 8):
        sized = Embedder(args.weights, cache_dir, max_chunk=chunk)
        sized.embed(inputs[:chunk])
        report(f"model only, chunks of {chunk}", n, lambda e=sized: e.embed(inputs))
    report("decode only, full size + prepare_input", n, lambda: [decode(j, False) for j in jpegs])
    report("decode only, Image.draft + prepare_input", n, lambda: [decode(j) for j in jpegs])

    def loop_one() -> None:
        for j in jpegs:
            embedder.embed(decode(j)[None])

    def loop_batched(size: int = 16) -> None:
        for i in range(0, n, size):
            embedder.embed(np.stack([decode(j) for j in jpegs[i : i + size]]))

    report("plain loop: decode+embed one image at a time", n, loop_one)
    report("plain loop: decode 16, embed 16", n, loop_batched)
    report(
        "plain loop, no draft: decode+embed one at a time",
        n,
        lambda: [embedder.embed(decode(j, False)[None]) for j in jpegs],
    )
    for decoders in (1, 2):
        report(
            f"overlapped: {decoders} decoder thread(s) -> EmbeddingBatcher",
            n,
            lambda d=decoders: overlapped(jpegs, embedder, d),
        )
    one_thread = Embedder(args.weights, cache_dir, num_threads=1)
    report(
        "overlapped: 1 decoder thread -> batcher, 1 model thread",
        n,
        lambda: overlapped(jpegs, one_thread, 1),
    )

    check = np.stack(overlapped(jpegs[:8], embedder, 2))
    drift = float(np.abs(check - embedder.embed(inputs[:8])).max())
    startup = warm_start_seconds(str(args.weights), cache_dir)
    print(f"in-process Embedder load (warm cache): {load_s * 1000:.0f} ms")
    print(f"fresh process: import + load + first embed (warm cache): {startup:.2f} s")
    print(f"overlapped vs direct embed, max abs difference: {drift:.2e}")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} (other processes skew this)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "images": n,
        "jpeg_side": SIDE,
        "mean_jpeg_kb": round(mean_kb, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        # Other work on the machine skews every figure; record it next to them.
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "embedder_load_ms_warm": round(load_s * 1000, 1),
        "fresh_process_start_s_warm": round(startup, 3),
        "results": rows,
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
