"""TLS connection plus login over loopback, and how many logins per second the server sustains.

Each login costs one Argon2id verification (19 MiB, t=2) on the server, by design; this shows what
that design costs. The server is the real `server.py` process, the client the real
`ServerConnection`.

    .venv/bin/python -m bench.bench_login [--quick] [--connections N] [--clients C]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.machine import describe
from bench.stats import percentile
from protocol.messages import CreateUser, Login, Session
from tests.servers import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results" / "bench_login.json"
PASSWORD = "benchmark password"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the test suite")
    parser.add_argument(
        "--connections", type=int, default=100, help="sequential connect+login runs"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for the rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the rate run")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.seconds = 10, 2.0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server").start()
        try:
            first = server.connect(root)
            for index in range(args.clients):
                first.call(CreateUser(id=0, name=f"bench{index}", password=PASSWORD))
            first.close()

            latencies = []
            for _ in range(args.connections):
                started = time.perf_counter()
                connection = server.connect(root)
                connection.call(Login(id=0, name="bench0", password=PASSWORD), Session)
                latencies.append((time.perf_counter() - started) * 1000)
                connection.close()

            def hammer(index: int) -> int:
                connection = server.connect(root)
                count, deadline = 0, time.monotonic() + args.seconds
                while time.monotonic() < deadline:
                    connection.call(Login(id=0, name=f"bench{index}", password=PASSWORD), Session)
                    count += 1
                connection.close()
                return count

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                total = sum(pool.map(hammer, range(args.clients)))
            rate = total / (time.perf_counter() - started)
        finally:
            server.stop()

    figures = {
        "connect_login_ms_p50": statistics.median(latencies),
        "connect_login_ms_p95": percentile(latencies, 0.95),
        "logins_per_s": rate,
        "concurrent_clients": args.clients,
        "machine": describe(),
    }
    print(f"{'measure':<40} {'value':>10}")
    print(f"{'TLS connect + Hello + login, p50 (ms)':<40} {figures['connect_login_ms_p50']:>10.1f}")
    print(f"{'TLS connect + Hello + login, p95 (ms)':<40} {figures['connect_login_ms_p95']:>10.1f}")
    print(f"{f'logins/s with {args.clients} clients':<40} {rate:>10.1f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
