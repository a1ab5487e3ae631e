"""`bench.colour_scenes` keeps working: it is the measure for the next colour-rule change.

Like the quick benchmarks (tests/test_bench_quick.py), it is code nobody runs daily. This runs
one seed and checks that every picture is counted once under its own name and that the
figures are consistent, not what they are: those are measurements, in
docs/colour-measurements.md.
"""

from __future__ import annotations

import re

import pytest

from bench import colour_scenes
from util.colour_spec import NAMES

ROW = re.compile(r"^\| (\w+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", re.M)


def test_every_scene_is_a_jpeg_of_a_known_name() -> None:
    scenes = list(colour_scenes.scenes(seed=11))
    produce = sum(map(len, colour_scenes.PRODUCE.values()))
    assert len(scenes) == (4 + 2) * produce + 3 * sum(map(len, colour_scenes.SWATCHES.values()))
    assert {s.name for s in scenes} <= set(NAMES)
    assert all(s.jpeg.startswith(b"\xff\xd8\xff") for s in scenes)
    # deterministic: the same seed draws the same pictures
    assert [s.jpeg for s in colour_scenes.scenes(seed=11)][:5] == [s.jpeg for s in scenes[:5]]


@pytest.mark.slow
def test_figures_cover_every_name_and_add_up(capsys: pytest.CaptureFixture[str]) -> None:
    assert colour_scenes.main(["--seed", "11", "--misses"]) == 0
    out = capsys.readouterr().out
    one_seed, pooled = out.split("\npooled over seeds 11:")
    rows = {m[1]: [int(m[2]), int(m[3]), int(m[4]), float(m[5]), float(m[6])]
            for m in ROW.finditer(one_seed)}  # fmt: skip
    assert list(rows) == list(NAMES)
    # one seed pooled is that seed
    assert [m.groups() for m in ROW.finditer(pooled)] == [
        m.groups() for m in ROW.finditer(one_seed)
    ]
    pictures = int(re.search(r"seed 11: (\d+) pictures", out)[1])
    assert sum(of_name for _, _, of_name, _, _ in rows.values()) == pictures
    for name, (returned, right, of_name, precision, recall) in rows.items():
        assert right <= min(returned, of_name), name
        assert precision == pytest.approx(right / returned if returned else 1.0, abs=5e-4)
        assert recall == pytest.approx(right / of_name if of_name else 1.0, abs=5e-4)
    # every wrong or missed picture is listed
    listed = len(re.findall(r"^\w+ (returns|misses) ", one_seed, re.M))
    assert listed == sum((r - ok) + (n - ok) for r, ok, n, _, _ in rows.values())
