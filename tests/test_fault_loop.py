"""A short fault loop in CI: three SIGKILLs at random points of a pipelined bulk upload and of
concurrent checkouts, each followed by `server.py --check`, a stock audit (initial - sold), the
acknowledged orders, a restart and a re-upload that completes. `python -m bench.fault_loop`
runs the full 20; its result is in docs/security.md."""

from __future__ import annotations

from pathlib import Path

from bench.fault_loop import fault_loop

RUNS = 3


def test_three_kills_in_a_row_leave_a_consistent_store(tmp_path: Path) -> None:
    lines: list[str] = []
    results, final = fault_loop(RUNS, tmp_path, seed=7, report=lines.append)
    assert len(results) == RUNS
    for result in results:
        assert result.ok, "\n".join(lines)
        assert result.reupload_present >= result.uploads_acknowledged
        assert result.reupload_present + result.reupload_new == result.uploads_total
        assert result.orders_in_database >= result.orders_acknowledged
    assert final == [], final
    # The kills really landed in the middle of the work, not after it.
    assert any(r.uploads_acknowledged < r.uploads_total for r in results), "\n".join(lines)
    assert sum(r.orders_acknowledged for r in results) > 0, "\n".join(lines)
