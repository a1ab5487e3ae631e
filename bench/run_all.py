"""`make bench`: run every benchmark and rewrite docs/benchmarks.md with what they printed.

Each benchmark is a module of this package that prints a table of its figures and writes JSON to
bench/results/. This runner adds what a reader needs to trust a figure: the exact command, the
machine, the date and the target it is measured against.

    .venv/bin/python -m bench.run_all [--quick] [--only NAME ...] [--no-write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.machine import describe

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Benchmark:
    module: str
    title: str
    targets: str
    #: Whether it accepts --quick (every benchmark should; eval_quality is a fixed-size eval).
    quick: bool = True


BENCHMARKS = [
    Benchmark(
        "bench.bench_login",
        "Connection and login (issue 2)",
        "Reported: TLS connect + login latency, logins per second.",
    ),
    Benchmark(
        "bench.bench_ingest",
        "Ingest (issues 3, 4, 5)",
        "4,000 JPEGs of ~200 KB in ≤ 60 s (≥ 66 img/s); ≥ 0.7 of the bare model's "
        "throughput; colour extraction adds ≤ 10% to ingest time (A/B); re-upload of stored "
        "files ≥ 100 MB/s.",
    ),
    Benchmark(
        "bench.bench_browse",
        "Browse at 100,000 images (issue 3)",
        "First batch of browse_by_tags with one tag ≤ 100 ms from the client; RSS reported.",
    ),
    Benchmark(
        "bench.bench_search",
        "Search by image and by colour at 100,000 images (issues 4, 5)",
        "search_by_image --id first batch ≤ 50 ms (p50, p95 reported); search_by_color "
        "first batch ≤ 20 ms; server RSS ≤ 1.5 GB.",
    ),
    Benchmark(
        "bench.bench_ann",
        "Approximate index at 1,000,000 vectors (issue 4)",
        "≤ 5 ms per query with recall@10 ≥ 0.95 against exact search.",
    ),
    Benchmark(
        "bench.bench_model",
        "Bare model throughput (issue 4)",
        "Reference for ingest: decode + embedding without the server.",
    ),
    Benchmark(
        "bench.eval_quality",
        "Search quality on clothing-small (issue 4)",
        "P@1 ≥ 0.70 and P@10 ≥ 0.53 (plain MobileNetV2: 0.73 / 0.56).",
        quick=False,
    ),
    Benchmark(
        "bench.bench_colours",
        "Colour extraction (issue 5)",
        "Extraction adds ≤ 10% to per-image ingest time.",
    ),
    Benchmark(
        "bench.bench_colour_backfill",
        "Colour backfill after an upgrade (issue 5)",
        "Reported: how long until every palette follows the new rule after schema v12 marks "
        "them outdated (20,000 images; minutes at 100,000 projected).",
    ),
    Benchmark(
        "bench.bench_checkout",
        "Checkout (issue 6)",
        "Reported: orders per second with 20 concurrent clients.",
    ),
    Benchmark(
        "bench.load",
        "Load: 50 clients, mixed operations (issue 7)",
        "Zero errors, p99 < 500 ms, RSS flat over the second half of the run (mean RSS of "
        "the 4th quarter at most max(10 MiB, 2%) above the 3rd).",
    ),
]


def available(benchmark: Benchmark) -> bool:
    return (ROOT / (benchmark.module.replace(".", "/") + ".py")).exists()


def run(benchmark: Benchmark, quick: bool) -> tuple[str, int, float, str]:
    command = [sys.executable, "-m", benchmark.module]
    if quick and benchmark.quick:
        command.append("--quick")
    shown = " ".join([".venv/bin/python", *command[1:]])
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    output = result.stdout.strip() or "(no output)"
    if result.returncode != 0:
        output += (
            f"\n\nFAILED with exit status {result.returncode}:\n{result.stderr.strip()[-3000:]}"
        )
    return shown, result.returncode, elapsed, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark in its short form")
    parser.add_argument(
        "--only", nargs="*", default=None, help="module names to run, e.g. bench_login"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only, keep docs/benchmarks.md"
    )
    args = parser.parse_args(argv)

    machine = describe()
    sections = []
    failures = 0
    for benchmark in BENCHMARKS:
        if args.only and benchmark.module.split(".")[-1] not in args.only:
            continue
        if not available(benchmark):
            print(f"-- {benchmark.module}: not written yet, skipped", flush=True)
            continue
        print(f"-- {benchmark.module} ...", flush=True)
        command, status, elapsed, output = run(benchmark, args.quick)
        failures += status != 0
        print(output, flush=True)
        sections.append(
            f"## {benchmark.title}\n\n"
            f"- Command: `{command}`\n"
            f"- Target: {benchmark.targets}\n"
            f"- Took {elapsed:.0f} s{' (quick form)' if args.quick and benchmark.quick else ''}\n\n"
            f"```text\n{output}\n```\n"
        )

    if not args.no_write:
        mode = " in quick mode (smaller sizes: not the figures to compare with targets)"
        header = (
            "# Benchmarks\n\n"
            "Written by `make bench` (`.venv/bin/python -m bench.run_all`); do not edit by hand.\n"
            f"Machine: {machine['cores']} cores, {machine['memory']} memory, {machine['cpu']}, "
            f"Python {machine['python']}. Run on {machine['date']}"
            f"{mode if args.quick else ''}.\n\n"
        )
        DOC.write_text(header + "\n".join(sections))
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
