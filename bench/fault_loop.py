"""Fault loop: SIGKILL the server at random points of a pipelined bulk upload and of a stream of
concurrent checkouts, again and again, and prove after every kill that nothing was lost or
half-written.

After each kill, with the server down:

* `python server.py --check --data-dir DIR` must pass: every row has its blobs and they
  decrypt, no blob is left unreferenced after the start-up sweep, stock and prices are
  non-negative, every order is whole (it has lines and they add up to its total);
* stock equals initial minus sold, per image: `quantity + SUM(order_lines.quantity)` equals the
  stock this script set (the database does not know the initial stock, the script does);
* every order a buyer was told about (an `OrderPlaced` arrived) is in the database, line for
  line: an acknowledged order is never lost.

Then the server restarts and the same upload runs again: it completes, and every file the
killed run had acknowledged is reported present, with the same id.

    .venv/bin/python -m bench.fault_loop [--runs 20] [--quick] [--seed N]

Prints one line per run and a summary (runs, failures), and writes bench/results/fault_loop.json.
Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import describe
from protocol.catalog import CartLine, Checkout, OrderPlaced, Uploaded, UploadImage
from protocol.errors import ErrorCode, VitrineError
from shell.connection import ServerConnection
from tests.servers import PYTHON, ROOT, ServerProcess

RESULTS = Path(__file__).resolve().parent / "results" / "fault_loop.json"
PASSWORD = "fault loop password"
#: Generous bound that turns a hang into a failure; not a performance figure.
HANG_S = 120.0


def jpeg(seed: int) -> bytes:
    """A small random JPEG, different for each seed (the checkout benchmark uses it too)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=80)
    return out.getvalue()


def run_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The real command an operator runs after a crash."""
    return subprocess.run(
        [PYTHON, str(ROOT / "server.py"), "--check", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


@dataclass
class RunResult:
    run: int
    uploads_acknowledged: int
    uploads_total: int
    orders_acknowledged: int
    orders_in_database: int
    reupload_present: int
    reupload_new: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class FaultLoop:
    """One data directory, one server, killed once per run."""

    def __init__(
        self,
        data_dir: Path,
        home: Path,
        *,
        seed: int = 1,
        files_per_run: int = 60,
        buyers: int = 4,
        stocks: tuple[int, ...] = (3, 20, 50_000, 50_000, 50_000, 50_000),
    ) -> None:
        self.home = home
        self.rng = random.Random(seed)
        self.files_per_run = files_per_run
        self.buyer_names = [f"buyer{n}" for n in range(buyers)]
        self.server = ServerProcess(data_dir).start()
        seller = self.connect("seller")
        try:
            self.initial: dict[int, int] = {}
            # Two images sell out early (refusals race the kill too); the others never do.
            for n, stock in enumerate(stocks):
                up = seller.call(
                    UploadImage(
                        id=0,
                        filename=f"stock{n}.jpg",
                        data=jpeg(10_000_000 + n),
                        price_cents=100 + n,
                        quantity=stock,
                    ),
                    Uploaded,
                )
                self.initial[up.image_id] = stock
        finally:
            seller.close()
        for name in self.buyer_names:
            self.connect(name).close()

    def connect(self, name: str) -> ServerConnection:
        return self.server.user_connection(self.home / name, name, PASSWORD)

    # --- one run ---------------------------------------------------------------------------------

    def run_once(self, number: int) -> RunResult:
        datas = [jpeg(number * 1000 + n) for n in range(self.files_per_run)]
        acknowledged, orders = self._kill_mid_work(datas)
        result = RunResult(
            run=number,
            uploads_acknowledged=len(acknowledged),
            uploads_total=len(datas),
            orders_acknowledged=len(orders),
            orders_in_database=0,
            reupload_present=0,
            reupload_new=0,
        )
        check = run_check(self.server.data_dir)
        if check.returncode != 0:
            result.problems.append("server.py --check failed:\n" + check.stdout + check.stderr)
        result.orders_in_database = self._check_stock_and_orders(orders, result.problems)
        self.server.restart()
        self._upload_again(datas, acknowledged, result)
        return result

    def _kill_mid_work(
        self, datas: list[bytes]
    ) -> tuple[dict[int, int], dict[int, list[tuple[int, int]]]]:
        """Start the upload and the checkouts, kill the server at a random point of both.

        Returns the uploads acknowledged (file number -> image id) and the orders acknowledged
        (order id -> [(image id, quantity)])."""
        seller = self.connect("seller")
        buyers = [self.connect(name) for name in self.buyer_names]
        futures: list[Future] = []
        done = threading.Semaphore(0)
        orders: dict[int, list[tuple[int, int]]] = {}
        orders_lock = threading.Lock()
        stop = threading.Event()

        def upload_all() -> None:
            try:
                for n, data in enumerate(datas):
                    future = seller.submit(UploadImage(id=0, filename=f"{n}.jpg", data=data))
                    future.add_done_callback(lambda _f: done.release())
                    futures.append(future)
            except Exception:
                pass  # the server died under us: that is the point

        # Every draw from the seeded generator happens here, before any thread starts, so a
        # seed always names the same kill point and the same shoppers' choices.
        shopper_seeds = [self.rng.random() for _ in buyers]
        # Anywhere in the first three quarters of the upload, so most kills land mid-way.
        kill_after = self.rng.randint(1, max(1, len(datas) * 3 // 4))
        pause_before_kill = self.rng.uniform(0.0, 0.01)

        def shop(index: int, conn: ServerConnection) -> None:
            rng = random.Random(shopper_seeds[index])
            ids = list(self.initial)
            while not stop.is_set():
                chosen = rng.sample(ids, rng.randint(1, 3))
                lines = [CartLine(image_id=i, quantity=rng.randint(1, 3)) for i in chosen]
                try:
                    placed = conn.call(Checkout(id=0, lines=lines), OrderPlaced)
                except VitrineError as exc:
                    if exc.code is ErrorCode.OUT_OF_STOCK:
                        continue
                    return
                except Exception:
                    return  # connection lost: the kill
                with orders_lock:
                    orders[placed.order.id] = [
                        (line.image_id, line.quantity) for line in placed.order.lines
                    ]

        shoppers = [
            threading.Thread(target=shop, args=(i, c), daemon=True) for i, c in enumerate(buyers)
        ]
        for thread in shoppers:
            thread.start()
        uploader = threading.Thread(target=upload_all, daemon=True)
        uploader.start()
        for _ in range(kill_after):
            if not done.acquire(timeout=HANG_S):
                raise RuntimeError("uploads did not progress")
        time.sleep(pause_before_kill)
        self.server.kill()
        stop.set()
        uploader.join(HANG_S)
        for thread in shoppers:
            thread.join(HANG_S)
        acknowledged = {
            n: f.result().image_id
            for n, f in enumerate(futures)
            if f.done() and not f.cancelled() and f.exception() is None
        }
        for conn in (seller, *buyers):
            conn.close()
        return acknowledged, orders

    def _check_stock_and_orders(
        self, acknowledged: dict[int, list[tuple[int, int]]], problems: list[str]
    ) -> int:
        """Stock = initial - sold, and no acknowledged order lost; returns the orders stored."""
        uri = f"file:{self.server.data_dir / 'vitrine.db'}?mode=ro"
        db = sqlite3.connect(uri, uri=True)
        try:
            for image_id, initial in self.initial.items():
                (quantity,) = db.execute(
                    "SELECT quantity FROM images WHERE id = ?", (image_id,)
                ).fetchone()
                (sold,) = db.execute(
                    "SELECT COALESCE(SUM(quantity), 0) FROM order_lines WHERE image_id = ?",
                    (image_id,),
                ).fetchone()
                if quantity < 0 or quantity + sold != initial:
                    problems.append(
                        f"image {image_id}: stock {quantity} + sold {sold} != initial {initial}"
                    )
            for order_id, lines in acknowledged.items():
                stored = db.execute(
                    "SELECT image_id, quantity FROM order_lines WHERE order_id = ? "
                    "ORDER BY line_no",
                    (order_id,),
                ).fetchall()
                if [tuple(row) for row in stored] != lines:
                    problems.append(f"acknowledged order {order_id} is {stored}, not {lines}")
            (count,) = db.execute("SELECT COUNT(*) FROM orders").fetchone()
            return int(count)
        finally:
            db.close()

    def _upload_again(
        self, datas: list[bytes], acknowledged: dict[int, int], result: RunResult
    ) -> None:
        seller = self.connect("seller")
        try:
            futures = [
                seller.submit(UploadImage(id=0, filename=f"{n}.jpg", data=data))
                for n, data in enumerate(datas)
            ]
            again: list[Uploaded] = []
            for n, future in enumerate(futures):
                try:
                    again.append(future.result(timeout=HANG_S))
                except Exception as exc:
                    result.problems.append(f"re-upload of file {n} failed: {exc}")
                    return
        finally:
            seller.close()
        for n, image_id in acknowledged.items():
            if (again[n].image_id, again[n].created) != (image_id, False):
                result.problems.append(
                    f"file {n} was stored as image {image_id} before the kill, but the re-upload "
                    f"answered image {again[n].image_id}, created={again[n].created}"
                )
        result.reupload_present = sum(not r.created for r in again)
        result.reupload_new = sum(r.created for r in again)

    # --- the end ---------------------------------------------------------------------------------

    def finish(self) -> list[str]:
        """Stop the server cleanly and run the check once more, sweep included."""
        self.server.stop()
        check = run_check(self.server.data_dir)
        if check.returncode != 0 or "unreferenced: 0" not in check.stdout:
            return ["final server.py --check failed:\n" + check.stdout + check.stderr]
        return []


def fault_loop(
    runs: int, workdir: Path, *, seed: int = 1, report=print
) -> tuple[list[RunResult], list[str]]:
    """Run the loop; returns each run's result and the final check's problems."""
    loop = FaultLoop(workdir / "server", workdir / "clients", seed=seed)
    results: list[RunResult] = []
    final: list[str] = []
    try:
        for number in range(1, runs + 1):
            result = loop.run_once(number)
            results.append(result)
            report(
                f"run {number:2d}: killed after {result.uploads_acknowledged:2d}/"
                f"{result.uploads_total} uploads and {result.orders_acknowledged:3d} orders; "
                f"re-upload {result.reupload_present} present + {result.reupload_new} new; "
                + ("ok" if result.ok else "FAILED\n  " + "\n  ".join(result.problems))
            )
    finally:
        final = loop.finish()
    return results, final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="kills in a row (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 runs, for a smoke test")
    parser.add_argument("--seed", type=int, default=1, help="random kill points from this seed")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vitrine-fault-") as work:
        results, final = fault_loop(runs, Path(work), seed=args.seed)
    failures = sum(not r.ok for r in results) + (1 if final else 0)
    for problem in final:
        print(problem)
    print()
    print("| runs | failures | uploads killed mid-way | orders acknowledged | seconds |")
    print("| --- | --- | --- | --- | --- |")
    mid_way = sum(r.uploads_acknowledged < r.uploads_total for r in results)
    orders = sum(r.orders_acknowledged for r in results)
    elapsed = time.monotonic() - started
    print(f"| {len(results)} | {failures} | {mid_way} | {orders} | {elapsed:.0f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": describe(),
                "command": "python -m bench.fault_loop " + " ".join(sys.argv[1:] or []),
                "runs": len(results),
                "failures": failures,
                "seed": args.seed,
                "results": [asdict(r) for r in results],
                "final_check_problems": final,
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
