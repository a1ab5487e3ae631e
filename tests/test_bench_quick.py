"""Every benchmark `make bench` runs also runs in its --quick form, and prints its figures.

Why a test: benchmarks are code that nobody runs daily, so they rot (an API changes, an import
moves) and the first sign is a broken `make bench` on release day. This runs each one that
exists, as `make bench` does (`python -m MODULE --quick`, in a subprocess, from the repository
root), and checks only that it exits 0 and prints a table with numbers in it. It never looks
at a duration: timings belong to docs/benchmarks.md, not to pass/fail.

Benchmarks without a quick form (`Benchmark.quick=False`: eval_quality, a fixed-size
evaluation) are left out; test_search_quality runs that evaluation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run_all import BENCHMARKS, Benchmark, available

ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = ROOT.parent / "shared/models/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
#: These cannot run at all without the model weights (the others measure what they can).
NEEDS_WEIGHTS = {"bench.bench_model"}
#: Under pytest's per-test timeout (pyproject: 300 s), so a hang fails with the output.
TIMEOUT_S = 280

QUICK = [b for b in BENCHMARKS if b.quick and available(b)]


def _weights_available() -> bool:
    value = os.environ.get("VITRINE_WEIGHTS")
    return Path(value).is_file() if value else SHARED_WEIGHTS.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", QUICK, ids=[b.module for b in QUICK])
def test_quick_benchmark_runs_and_prints_figures(benchmark: Benchmark) -> None:
    if benchmark.module in NEEDS_WEIGHTS and not _weights_available():
        pytest.skip("no model weights (VITRINE_WEIGHTS or ../shared/models)")
    env = dict(os.environ)
    if "VITRINE_WEIGHTS" not in env and SHARED_WEIGHTS.is_file():
        env["VITRINE_WEIGHTS"] = str(SHARED_WEIGHTS)  # as the Makefile does
    done = subprocess.run(
        [sys.executable, "-m", benchmark.module, "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{benchmark.module} failed:\n{done.stderr[-4000:]}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    figures = [line for line in lines if re.search(r"\d+(\.\d+)?", line)]
    assert len(lines) >= 2, f"{benchmark.module} printed no table:\n{done.stdout}"
    assert figures, f"{benchmark.module} printed no figures:\n{done.stdout}"
    assert "Traceback" not in done.stdout
