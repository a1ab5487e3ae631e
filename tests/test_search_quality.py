"""Search quality on the shared dev set, through the real client and server.

The 400 gallery photos of `../shared/datasets/clothing-small` are uploaded with
`client.py add_image` (untagged: the class never helps the search), then each of the 100
query photos is searched with `search_by_image PATH --json --batch 10`. A result counts as
right when the gallery file it came from is in the query's class. Plain MobileNetV2 reaches
P@1 0.73 and P@10 0.56 on this set; the issue asks for at least 0.70 and 0.53.

Needs VITRINE_WEIGHTS and the dataset; skipped (with the reason) without them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, ServerProcess, run_client

DATASET = ROOT.parent / "shared" / "datasets" / "clothing-small"
PASSWORD = "correct horse battery"
MIN_P1 = 0.70
MIN_P10 = 0.53

pytestmark = pytest.mark.slow


def _weights() -> str:
    value = os.environ.get("VITRINE_WEIGHTS", "")
    if not value or not Path(value).is_file():
        pytest.skip(f"VITRINE_WEIGHTS={value!r} is not a weights file: no model to measure")
    if not (DATASET / "gallery").is_dir() or not (DATASET / "queries").is_dir():
        pytest.skip(f"the dev set is not at {DATASET}")
    return value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    weights = _weights()
    process = ServerProcess(
        tmp_path_factory.mktemp("quality-server"), env={"VITRINE_WEIGHTS": weights}
    ).start()
    yield process
    process.stop()


def _classes(part: str) -> list[Path]:
    return sorted(p for p in (DATASET / part).iterdir() if p.is_dir())


def test_precision_of_search_by_image(server: ServerProcess, tmp_path: Path) -> None:
    home = tmp_path / "shopper"
    started = time.monotonic()
    commands = ["create_user quality", "login quality"]
    commands += [f'add_image "{folder}" --json' for folder in _classes("gallery")]
    done = run_client(server, *commands, config_dir=home, password=PASSWORD, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    class_of: dict[int, str] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            assert result["outcome"] in ("new", "present"), result
            class_of[int(result["id"])] = Path(result["path"]).parent.name
    gallery_files = sum(1 for f in (DATASET / "gallery").rglob("*.jpg"))
    assert len(class_of) >= gallery_files - 5  # identical files share one id
    uploaded = time.monotonic()

    queries = [
        (folder.name, photo)
        for folder in _classes("queries")
        for photo in sorted(folder.glob("*.jpg"))
    ]
    searches = [f'search_by_image "{photo}" --json --batch 10' for _, photo in queries]
    done = run_client(
        server, "login quality", *searches, config_dir=home, password=PASSWORD, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 10 * len(queries), done.stderr[-3000:]
    p1 = p10 = 0.0
    for n, (label, _) in enumerate(queries):
        results = lines[10 * n : 10 * n + 10]
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        hits = [class_of[int(r["id"])] == label for r in results]
        p1 += hits[0]
        p10 += sum(hits) / 10
    p1 /= len(queries)
    p10 /= len(queries)
    print(
        f"\nclothing-small through client and server: P@1 = {p1:.2f}, P@10 = {p10:.3f} "
        f"({len(queries)} queries, {len(class_of)} gallery images; upload "
        f"{uploaded - started:.0f} s, queries {time.monotonic() - uploaded:.0f} s)"
    )
    assert p1 >= MIN_P1
    assert p10 >= MIN_P10
