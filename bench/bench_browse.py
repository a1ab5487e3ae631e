"""Browse at 100,000 images: first batch of browse_by_tags, measured from the client, and RSS.

The data directory is filled directly (bench/fill.py: rows, tags, FTS, colours, embeddings,
real encrypted blobs), then the real server.py starts on it with the model weights, so its
memory includes what a real server at that size holds (the vector index among it). One logged-in
`ServerConnection` (the shell's own connection class, over TLS on loopback) sends `Browse`
requests with thumbnails on, as `browse_by_tags TAG` does, and times each until the last frame
of the first batch (20 images) has arrived.

    .venv/bin/python -m bench.bench_browse [--quick] [--images N] [--requests R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.fill import COMMON_TAG, RARE_TAG, fill, start_server
from bench.machine import describe, rss_mib
from bench.stats import percentile
from protocol.base import Request
from protocol.catalog import Batch, Browse, ListingOptions
from protocol.messages import Login, Session
from shell.connection import ServerConnection
from tests.servers import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results" / "bench_browse.json"
TARGET_MS = 100.0


def first_batch(connection: ServerConnection, request: Request) -> tuple[float, int, int]:
    """(ms until the batch's final frame arrived, images received, thumbnail bytes received)."""
    started = time.perf_counter()
    items = thumbs = 0
    for response in connection.stream(request):
        assert isinstance(response, Batch), type(response).__name__
        items += len(response.items)
        thumbs += sum(len(item.thumbnail or b"") for item in response.items)
    return (time.perf_counter() - started) * 1000, items, thumbs


def login(server: ServerProcess, home: Path, name: str, password: str) -> ServerConnection:
    connection = server.connect(home)
    connection.call(Login(id=0, name=name, password=password), Session)
    return connection


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(samples),
        "p95_ms": percentile(samples, 0.95),
        "max_ms": max(samples),
        "samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 images, 50 requests per case")
    parser.add_argument("--images", type=int, default=100_000, help="images filled")
    parser.add_argument("--requests", type=int, default=200, help="requests per case")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.requests = 5_000, 50

    cases: dict[str, list[str]] = {
        f"one common tag ({COMMON_TAG})": [COMMON_TAG],
        f"one rare tag ({RARE_TAG})": [RARE_TAG],
        "two tags, all of (dress cotton)": [COMMON_TAG, "cotton"],
        "no tag (everything visible)": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        filled = fill(home / "server", args.images, buyers=1)
        server, readiness = start_server(filled)
        try:
            connection = login(server, home, filled.buyers[0], filled.password)
            figures: dict[str, dict[str, float]] = {}
            cold_ms = None
            for name, tags in cases.items():
                request = Browse(id=0, tags=tags, options=ListingOptions(limit=20))
                samples, sizes = [], []
                for _ in range(args.requests):
                    ms, items, thumb_bytes = first_batch(connection, request)
                    samples.append(ms)
                    sizes.append((items, thumb_bytes))
                    cold_ms = ms if cold_ms is None else cold_ms
                figures[name] = {
                    **summarise(samples),
                    "images_per_batch": sizes[0][0],
                    "thumbnail_kb_per_batch": sizes[0][1] / 1000,
                }
            rss = rss_mib(server.process.pid) if server.process else float("nan")
            connection.close()
        finally:
            server.stop()

    common = figures[f"one common tag ({COMMON_TAG})"]
    report = {
        "images": args.images,
        "requests_per_case": args.requests,
        "fill_seconds": filled.seconds,
        "tag_counts": {
            COMMON_TAG: filled.tag_counts[COMMON_TAG],
            RARE_TAG: filled.tag_counts[RARE_TAG],
        },
        "cases": figures,
        "first_request_ms": cold_ms,
        "server_rss_mib": rss,
        "search_by_image_ready": readiness.ready,
        "target_ms": TARGET_MS,
        "meets_target": common["p95_ms"] <= TARGET_MS,
        "load_average_1m": os.getloadavg()[0],
        "machine": describe(),
    }
    print(
        f"browse_by_tags first batch (20 images, thumbnails on) at {args.images:,} images, "
        f"{args.requests} requests per case, one client over TLS"
    )
    print(f"{'case':<36} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'images':>7} {'thumb KB':>9}")
    for name, row in figures.items():
        print(
            f"{name:<36} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['max_ms']:>8.1f} "
            f"{row['images_per_batch']:>7d} {row['thumbnail_kb_per_batch']:>9.0f}"
        )
    print(f"first request after start (cold caches): {cold_ms:.1f} ms")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"target: one tag p95 <= {TARGET_MS:.0f} ms: {verdict} ({common['p95_ms']:.1f} ms)")
    print(f"server RSS at {args.images:,} images: {rss:.0f} MiB")
    print(f"fill: {filled.seconds:.1f} s; 1-minute load average: {report['load_average_1m']:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
