"""A server killed with SIGKILL mid-upload restarts consistent, and re-running completes it.

`server.py --check` is the judge: every row has its blobs and they decrypt, no blob is kept
that no row names, stock is non-negative, orders are whole, the text index matches.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
from concurrent.futures import Future
from pathlib import Path

from protocol.catalog import UploadImage
from tests.servers import PYTHON, ROOT, ServerProcess
from tests.test_images_server import jpeg, upload, upload_many

FILES = 150
KILL_AFTER = 30


def run_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--check", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigkill_during_pipelined_bulk_upload(server: ServerProcess, tmp_path: Path) -> None:
    datas = [jpeg(seed, (400, 300)) for seed in range(9000, 9000 + FILES)]
    conn = server.user_connection(tmp_path / "c", "seller")
    futures: list[Future] = []
    done = threading.Semaphore(0)

    def submit_all() -> None:
        try:
            for n, data in enumerate(datas):
                future = conn.submit(UploadImage(id=0, filename=f"{n}.jpg", data=data))
                future.add_done_callback(lambda _f: done.release())
                futures.append(future)
        except Exception:
            pass  # the server died under us: that is the point

    sender = threading.Thread(target=submit_all, daemon=True)
    sender.start()
    for _ in range(KILL_AFTER):
        assert done.acquire(timeout=60), "uploads did not progress"
    server.kill()
    sender.join(30)
    acknowledged = {
        n: f.result().image_id
        for n, f in enumerate(futures)
        if f.done() and not f.cancelled() and f.exception() is None
    }
    assert KILL_AFTER <= len(acknowledged) < FILES, "the kill must land mid-upload"
    conn.close()

    server.restart()
    check = run_check(server.data_dir)  # read-only while the server runs
    assert check.returncode == 0, check.stdout + check.stderr
    assert "unreferenced: 0" in check.stdout

    conn = server.user_connection(tmp_path / "c2", "seller")
    try:
        again = upload_many(conn, datas)
    finally:
        conn.close()
    for n, image_id in acknowledged.items():
        assert (again[n].image_id, again[n].created) == (image_id, False)
    assert len({r.image_id for r in again}) == FILES
    assert sum(not r.created for r in again) >= len(acknowledged)

    server.stop()
    check = run_check(server.data_dir)  # with the server stopped: the start-up sweep too
    assert check.returncode == 0, check.stdout + check.stderr
    assert "swept 0 unreferenced blobs" in check.stdout
    assert f"live images: {FILES}" in check.stdout


def test_restart_sweeps_orphans_and_check_reports_missing_blobs(
    server: ServerProcess, tmp_path: Path
) -> None:
    conn = server.user_connection(tmp_path / "c", "seller")
    try:
        kept = upload(conn, jpeg(1, (80, 60)))
        assert kept.created
    finally:
        conn.close()
    server.stop()
    blobs = server.data_dir / "blobs"
    orphan_name = secrets.token_hex(32)
    orphan = blobs / orphan_name[:2] / orphan_name
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    leftover = blobs / orphan_name[:2] / f".{orphan_name}.0123456789abcdef.tmp"
    leftover.write_bytes(b"half written")

    server.restart()
    assert not orphan.exists() and not leftover.exists()
    server.stop()
    assert run_check(server.data_dir).returncode == 0

    # A blob that a row needs goes missing: the check says so and fails.
    stored = [p for p in blobs.rglob("*") if p.is_file()]
    assert len(stored) == 2  # the original and its thumbnail
    stored[0].unlink()
    check = run_check(server.data_dir)
    assert check.returncode == 1
    assert "blob unusable" in check.stdout and "NOT consistent" in check.stdout
