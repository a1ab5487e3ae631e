"""Benchmark of repository.vector_index: exact vs ANN latency, recall@10, build/save/load, memory.

Synthetic data stands in for MobileNetV2 embeddings: a normalised Gaussian mixture with a
hierarchy (super-clusters, clusters of ~20) plus a shared low-rank component, tuned so that a
query's 10th neighbour is close to its 1st (cosines ~0.52 vs ~0.47), which makes recall hard
rather than trivially 1.0.

    .venv/bin/python -m bench.bench_ann            # 100k and 1M (about 10 minutes)
    .venv/bin/python -m bench.bench_ann --quick    # 20k and 50k, well under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from repository.vector_index import DEFAULT_EXACT_THRESHOLD, EMBEDDING_DIM, VectorIndex

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ann.json"


def synthetic(n: int, seed: int, dim: int = EMBEDDING_DIM, chunk: int = 65_536) -> np.ndarray:
    """Clustered, normalised vectors; generated in chunks so 1M x 1280 needs no temporaries."""
    rng = np.random.default_rng(seed)
    clusters = max(8, n // 20)
    supers = max(4, clusters // 100)
    centres = rng.standard_normal((supers, dim), dtype=np.float32)[
        rng.integers(0, supers, clusters)
    ]
    centres += rng.standard_normal((clusters, dim), dtype=np.float32) * np.float32(0.5)
    basis = rng.standard_normal((64, dim), dtype=np.float32) * np.float32(0.15)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, clusters, m)]
        x += rng.standard_normal((m, 64), dtype=np.float32) @ basis
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.7)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def latency(index: VectorIndex, queries: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """Wall time, and the calling thread's CPU time: on a shared 2-core machine the wall time
    includes waiting for other processes, the CPU time is the search's own cost."""
    times, cpu, results = [], [], []
    for q in queries:
        cpu0 = time.thread_time()
        res, dt = timed(index.search, q, 10, **kwargs)
        cpu.append((time.thread_time() - cpu0) * 1000)
        times.append(dt * 1000)
        results.append([i for i, _ in res])
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "results": results,
    }


def recall(got: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(g) & set(t)) for g, t in zip(got, truth, strict=True))
    return hits / max(1, sum(len(t) for t in truth))


def sweep_exact(sizes: list[int], n_queries: int) -> list[dict[str, Any]]:
    """Exact latency by size: where it crosses the budget is where the ANN must take over."""
    data = synthetic(max(sizes) + n_queries, seed=7)
    queries = data[-n_queries:]
    rows = []
    for n in sizes:
        index = VectorIndex.from_arrays(np.arange(n, dtype=np.int64), data[:n], exact_threshold=n)
        lat = latency(index, queries)
        rows.append(
            {
                "n": n,
                "exact_p50_ms": lat["p50_ms"],
                "exact_p95_ms": lat["p95_ms"],
                "exact_cpu_p50_ms": lat["cpu_p50_ms"],
            }
        )
        del index
    return rows


def bench_size(n: int, n_queries: int, n_exact: int, persist: bool) -> dict[str, Any]:
    rss0 = rss_mb()
    data, t_gen = timed(synthetic, n + n_queries, 1)
    queries = data[n:].copy()
    ids = np.arange(1, n + 1, dtype=np.int64)
    index, t_build = timed(VectorIndex.from_arrays, ids, data[:n], exact_threshold=0)
    del data  # from here on the only float copy is the index's own
    out: dict[str, Any] = {"n": n, "generate_s": t_gen, "build_s": t_build, **index.stats()}
    out["rss_index_mb"] = rss_mb() - rss0

    ann = latency(index, queries)
    exact = latency(index, queries[:n_exact], exact=True)
    out.update(
        ann_p50_ms=ann["p50_ms"],
        ann_p95_ms=ann["p95_ms"],
        ann_cpu_p50_ms=ann["cpu_p50_ms"],
        exact_p50_ms=exact["p50_ms"],
        exact_p95_ms=exact["p95_ms"],
        exact_cpu_p50_ms=exact["cpu_p50_ms"],
        recall_at_10=recall(ann["results"][:n_exact], exact["results"]),
        recall_queries=n_exact,
    )
    rng = np.random.default_rng(3)
    for share in (0.5, 0.1, 0.01):
        allowed = np.sort(rng.choice(ids, max(5, int(n * share)), replace=False))
        f_ann = latency(index, queries[:n_exact], allowed=allowed)
        f_exact = latency(index, queries[:n_exact], allowed=allowed, exact=True)
        key = f"filter_{share:g}"
        out[key] = {
            "allowed": len(allowed),
            "p50_ms": f_ann["p50_ms"],
            "p95_ms": f_ann["p95_ms"],
            "cpu_p50_ms": f_ann["cpu_p50_ms"],
            "recall_at_10": recall(f_ann["results"], f_exact["results"]),
        }
    tiny = latency(index, queries[:n_exact], allowed=rng.choice(ids, 5, replace=False))
    out["filter_5_ids_p50_ms"] = tiny["p50_ms"]

    if persist:
        tmp = Path(tempfile.mkdtemp(prefix="bench_ann_"))
        try:
            _, out["save_s"] = timed(index.save, tmp, "bench")
            out["saved_mb"] = sum(p.stat().st_size for p in tmp.iterdir()) / 2**20
            del index
            loaded, out["load_s"] = timed(VectorIndex.load, tmp, "bench", exact_threshold=0)
            out["loaded_recall_check"] = loaded.search(queries[0], 10) is not None
            del loaded
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the index sizes")
    parser.add_argument("--queries", type=int, default=None, help="queries per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([20_000, 50_000] if args.quick else [100_000, 1_000_000])
    n_queries = args.queries or (50 if args.quick else 200)
    sweep_sizes = [5_000, 10_000, 20_000] if args.quick else [5_000, 10_000, 20_000, 50_000]

    sweep = sweep_exact(sweep_sizes, n_queries)
    print(f"exact search by size (threshold in use: {DEFAULT_EXACT_THRESHOLD})")
    print(f"{'n':>9} {'p50 ms':>8} {'p95 ms':>8} {'cpu p50':>8}")
    for row in sweep:
        print(
            f"{row['n']:>9} {row['exact_p50_ms']:>8.2f} {row['exact_p95_ms']:>8.2f} "
            f"{row['exact_cpu_p50_ms']:>8.2f}"
        )

    runs = []
    for n in sizes:
        n_exact = min(n_queries, 100)  # exact at 1M is ~0.2 s a query: 100 keeps it near a minute
        run = bench_size(n, n_queries, n_exact, persist=n <= 200_000)
        runs.append(run)
        print(json.dumps(run, indent=None, default=float), file=sys.stderr)

    print()
    head = (
        f"{'n':>9} {'nlist':>6} {'nprobe':>6} {'build s':>8} {'ANN p50':>8} {'ANN p95':>8} "
        f"{'ANN cpu':>8} {'exact p50':>9} {'exact p95':>9} {'exact cpu':>9} {'recall@10':>9} "
        f"{'idx RSS MB':>10}"
    )
    print(head)
    for r in runs:
        print(
            f"{r['n']:>9} {r['nlist']:>6} {r['nprobe']:>6} {r['build_s']:>8.1f} "
            f"{r['ann_p50_ms']:>8.2f} {r['ann_p95_ms']:>8.2f} {r['ann_cpu_p50_ms']:>8.2f} "
            f"{r['exact_p50_ms']:>9.2f} {r['exact_p95_ms']:>9.2f} {r['exact_cpu_p50_ms']:>9.2f} "
            f"{r['recall_at_10']:>9.3f} {r['rss_index_mb']:>10.0f}"
        )
    print()
    print(
        f"{'n':>9} {'filter':>8} {'allowed':>8} {'p50 ms':>8} {'p95 ms':>8} {'cpu p50':>8} "
        f"{'recall@10':>9}"
    )
    for r in runs:
        for share in (0.5, 0.1, 0.01):
            f = r[f"filter_{share:g}"]
            print(
                f"{r['n']:>9} {share:>8g} {f['allowed']:>8} {f['p50_ms']:>8.2f} "
                f"{f['p95_ms']:>8.2f} {f['cpu_p50_ms']:>8.2f} {f['recall_at_10']:>9.3f}"
            )
        print(f"{r['n']:>9} {'5 ids':>8} {5:>8} {r['filter_5_ids_p50_ms']:>8.2f}")
    print()
    for r in runs:
        if "load_s" in r:
            print(
                f"n={r['n']}: rebuild from arrays {r['build_s']:.1f} s, save {r['save_s']:.1f} s, "
                f"load {r['load_s']:.2f} s, on disk {r['saved_mb']:.0f} MB"
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "bench_ann",
                "command": "python -m bench.bench_ann" + (" --quick" if args.quick else ""),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "exact_threshold": DEFAULT_EXACT_THRESHOLD,
                "exact_sweep": sweep,
                "runs": runs,
            },
            indent=2,
            default=float,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
