"""Search by image (--id) and by colour at 100,000 images: first batch from the client, RSS, index.

Same fill as bench_browse (bench/fill.py): every image has a synthetic clustered embedding stored
under the server's model name, and 0-4 dominant colours. The real server.py starts with the
weights and builds its vector index from the database; the benchmark reads from its log how long
that took, then restarts it to read how long loading the saved index takes. One logged-in
`ServerConnection` sends:

* `ImageSearch(image_id=...)`, what `search_by_image --id ID` sends, with a different stored
  image each time (each query is a different vector);
* `ColourSearch(hue=...)`, what `search_by_color HUE` sends, hues spread round the circle;

and times each until the final frame of the first batch (20 images, thumbnails on).

    .venv/bin/python -m bench.bench_search [--quick] [--images N] [--requests R]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from bench.bench_browse import first_batch, login, summarise
from bench.fill import fill, start_server, wait_for_index
from bench.machine import describe, rss_mib
from protocol.base import Request
from protocol.catalog import ColourSearch, ImageSearch, ListingOptions
from protocol.errors import VitrineError
from shell.connection import ServerConnection

RESULTS = Path(__file__).resolve().parent / "results" / "bench_search.json"
IMAGE_TARGET_MS = 50.0
COLOUR_TARGET_MS = 20.0
RSS_TARGET_MIB = 1.5 * 1024


def measure(
    connection: ServerConnection, requests: list[Request]
) -> tuple[dict[str, float] | None, str]:
    """Latency figures over `requests`, or (None, why) if the server refuses this search."""
    samples, items = [], []
    for request in requests:
        try:
            ms, count, _ = first_batch(connection, request)
        except VitrineError as exc:
            return None, f"{exc.code.value}: {exc.message}"
        samples.append(ms)
        items.append(count)
    return {**summarise(samples), "mean_images_per_batch": sum(items) / len(items)}, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 images, 50 requests per case")
    parser.add_argument("--images", type=int, default=100_000, help="images filled")
    parser.add_argument("--requests", type=int, default=200, help="requests per case")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.requests = 5_000, 50

    rng = random.Random(7)
    options = ListingOptions(limit=20)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        filled = fill(home / "server", args.images, buyers=1)
        server, built = start_server(filled)
        reloaded = None
        try:
            connection = login(server, home, filled.buyers[0], filled.password)
            by_image = [
                ImageSearch(id=0, image_id=image_id, options=options)
                for image_id in rng.sample(filled.public_ids, args.requests)
            ]
            by_colour = [
                ColourSearch(id=0, hue=round(n * 360 / args.requests, 1) % 360, options=options)
                for n in range(args.requests)
            ]
            rng.shuffle(by_colour)
            image_figures, image_reason = measure(connection, by_image)
            colour_figures, colour_reason = measure(connection, by_colour)
            rss = rss_mib(server.process.pid) if server.process else float("nan")
            connection.close()
            server.stop()  # saves the index: the restart shows what loading it costs
            server.restart()
            if built.ready:
                reloaded = wait_for_index(server, 300.0)
        finally:
            server.stop()

    def meets(figures: dict[str, float] | None, target: float) -> bool | None:
        return None if figures is None else figures["p95_ms"] <= target

    report = {
        "images": args.images,
        "requests_per_case": args.requests,
        "fill_seconds": filled.seconds,
        "search_by_image": image_figures or {"unavailable": image_reason},
        "search_by_color": colour_figures or {"unavailable": colour_reason},
        "index_build_seconds": built.index_seconds,
        "index_build_how": built.index_how,
        "index_load_seconds": reloaded.index_seconds if reloaded else None,
        "index_load_how": reloaded.index_how if reloaded else "",
        "model_load_seconds": built.model_seconds,
        "server_rss_mib": rss,
        "meets": {
            "search_by_image_p95_le_50ms": meets(image_figures, IMAGE_TARGET_MS),
            "search_by_color_p95_le_20ms": meets(colour_figures, COLOUR_TARGET_MS),
            "rss_le_1.5GB": rss <= RSS_TARGET_MIB,
        },
        "load_average_1m": os.getloadavg()[0],
        "machine": describe(),
    }
    print(
        f"first batch (20 images, thumbnails on) at {args.images:,} images, "
        f"{args.requests} requests per case, one client over TLS"
    )
    print(f"{'case':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'target':>8}  verdict")
    for name, figures, reason, target in (
        ("search_by_image --id", image_figures, image_reason, IMAGE_TARGET_MS),
        ("search_by_color HUE", colour_figures, colour_reason, COLOUR_TARGET_MS),
    ):
        if figures is None:
            print(f"{name:<28} unavailable: {reason}")
            continue
        verdict = "meets" if figures["p95_ms"] <= target else "MISSES"
        print(
            f"{name:<28} {figures['p50_ms']:>8.1f} {figures['p95_ms']:>8.1f} "
            f"{figures['max_ms']:>8.1f} {f'<= {target:g}':>8}  {verdict} (p95)"
        )
    if built.ready:
        print(
            f"vector index {built.index_how} in {built.index_seconds:.2f} s at start "
            f"(model ready in {built.model_seconds or 0:.2f} s)"
        )
        if reloaded is not None:
            print(f"after a restart: {reloaded.index_how} in {reloaded.index_seconds:.2f} s")
    else:
        print(f"search by image not ready: {built.reason}")
    verdict = "meets" if rss <= RSS_TARGET_MIB else "MISSES"
    print(f"server RSS at {args.images:,} images: {rss:.0f} MiB (target <= 1536 MiB: {verdict})")
    print(f"fill: {filled.seconds:.1f} s; 1-minute load average: {report['load_average_1m']:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
