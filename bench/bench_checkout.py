"""Checkout throughput: orders per second with 20 concurrent clients against the real server.

Every checkout is one `BEGIN IMMEDIATE` transaction (check every line, take the stock, record the
order), so orders are serialised by design; this shows what that design sustains, over real TLS
connections, one per client, each logged in as a different buyer. Three workloads:

* 1 line, spread: each order buys 1 unit of a random image among 50;
* 3 lines, spread: each order buys 1-3 units of 3 random images;
* 1 line, one hot image: every client buys the same image (the worst case for contention).

    .venv/bin/python -m bench.bench_checkout [--quick] [--clients N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.fault_loop import jpeg
from bench.machine import describe
from bench.stats import percentile
from protocol.catalog import CartLine, Checkout, OrderPlaced, Uploaded, UploadImage
from protocol.messages import CreateUser, Login, Session
from shell.connection import ServerConnection
from tests.servers import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results" / "bench_checkout.json"
PASSWORD = "benchmark password"
IMAGES = 50
STOCK = 1_000_000


def login(server: ServerProcess, home: Path, name: str) -> ServerConnection:
    connection = server.connect(home)
    connection.call(CreateUser(id=0, name=name, password=PASSWORD))
    connection.call(Login(id=0, name=name, password=PASSWORD), Session)
    return connection


Cart = Callable[[random.Random], list[CartLine]]


def run(connections: list[ServerConnection], cart: Cart, seconds: float) -> dict[str, float]:
    """All clients check out in a loop for `seconds`; orders/s over the wall time."""
    barrier = threading.Barrier(len(connections) + 1)
    latencies: list[list[float]] = [[] for _ in connections]
    refused = [0] * len(connections)
    stop_at = [0.0]

    def client(index: int) -> None:
        rng = random.Random(index)
        connection = connections[index]
        barrier.wait()
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            try:
                connection.call(Checkout(id=0, lines=cart(rng)), OrderPlaced)
            except Exception:
                refused[index] += 1
                continue
            latencies[index].append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(connections))]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = [value for per_client in latencies for value in per_client]
    return {
        "orders": len(every),
        "refused": sum(refused),
        "orders_per_s": len(every) / elapsed,
        "latency_ms_p50": statistics.median(every) if every else float("nan"),
        "latency_ms_p95": percentile(every, 0.95) if every else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per workload")
    parser.add_argument("--clients", type=int, default=20, help="concurrent buyers")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each workload")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3.0

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = ServerProcess(home / "server").start()
        connections: list[ServerConnection] = []
        try:
            seller = login(server, home, "seller")
            ids = [
                seller.call(
                    UploadImage(
                        id=0,
                        filename=f"{n}.jpg",
                        data=jpeg(n),
                        title=f"item {n}",
                        price_cents=100 + n,
                        quantity=STOCK,
                    ),
                    Uploaded,
                ).image_id
                for n in range(IMAGES)
            ]
            connections = [login(server, home, f"buyer{i}") for i in range(args.clients)]

            def spread_one(rng: random.Random) -> list[CartLine]:
                return [CartLine(image_id=rng.choice(ids), quantity=1)]

            def spread_three(rng: random.Random) -> list[CartLine]:
                return [
                    CartLine(image_id=image, quantity=rng.randint(1, 3))
                    for image in rng.sample(ids, 3)
                ]

            def hot(rng: random.Random) -> list[CartLine]:
                return [CartLine(image_id=ids[0], quantity=1)]

            workloads = {
                "1 line, spread": spread_one,
                "3 lines, spread": spread_three,
                "1 line, one hot image": hot,
            }
            figures = {
                name: run(connections, cart, args.seconds) for name, cart in workloads.items()
            }
            for connection in [seller, *connections]:
                connection.close()
        finally:
            server.stop()

    report = {
        "clients": args.clients,
        "seconds_per_workload": args.seconds,
        "workloads": figures,
        "machine": describe(),
    }
    print(f"checkout with {args.clients} concurrent clients, {args.seconds:g} s per workload")
    header = ("orders/s", "orders", "p50 ms", "p95 ms", "refused")
    print(f"{'workload':<24} {header[0]:>10}" + "".join(f" {h:>8}" for h in header[1:]))
    for name, row in figures.items():
        print(
            f"{name:<24} {row['orders_per_s']:>10.1f} {row['orders']:>8d} "
            f"{row['latency_ms_p50']:>8.1f} {row['latency_ms_p95']:>8.1f} {row['refused']:>8d}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
