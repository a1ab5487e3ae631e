"""The atheris harness over the frame reader and message decoder runs a bounded number of
iterations cleanly: no input made them raise anything but their own typed errors.

The longer run, and how many iterations it did, is in docs/security.md.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest

from tests.servers import PYTHON, ROOT

RUNS = 20_000


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (it is in requirements.txt; run `make install`)",
)
def test_codec_fuzz_run_is_clean(tmp_path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [
            PYTHON,
            str(ROOT / "fuzz" / "fuzz_codec.py"),
            f"-runs={RUNS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    assert "Uncaught Python exception" not in report
    match = re.search(r"Done (\d+) runs", report)
    assert match is not None, report[-4000:]
    assert int(match.group(1)) >= RUNS
