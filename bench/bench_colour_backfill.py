"""The colour backfill after an upgrade: how long until every palette follows the new rule.

Schema step v12 marks every stored palette outdated (docs/colours.md, "A change to extraction
that alters stored palettes needs a schema step too"), so the first start of this version on
an older data directory decodes every original again in one background thread, while searches
use the old colours.
This fills a data directory (bench/fill.py: real encrypted 512x512 JPEGs of ~200 KB, palettes,
embeddings), sets it back to schema version 11, starts the real server.py on it with the model
weights, and reads the backfill's own log line: how many images, in how many seconds.

    .venv/bin/python -m bench.bench_colour_backfill [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tempfile
from pathlib import Path

from bench.fill import fill, start_server
from bench.machine import describe
from service.data_dir import DB_FILE
from tests.rows import rewind_statements

RESULTS = Path(__file__).resolve().parent / "results" / "bench_colour_backfill.json"
DONE = re.compile(r"colour recompute done: (\d+) images in ([\d.]+) s \((\d+) img/s\)")
#: The schema version before the step that marks every palette (repository/migrations.py).
BEFORE_V12 = 11


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images")
    parser.add_argument("--images", type=int, default=20_000, help="images filled")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 2_000

    with tempfile.TemporaryDirectory() as tmp:
        filled = fill(Path(tmp) / "server", args.images)
        conn = sqlite3.connect(filled.data_dir / DB_FILE, isolation_level=None)
        for statement in rewind_statements(BEFORE_V12):  # as a version-11 server left it
            conn.execute(statement)
        conn.close()
        server, _ = start_server(filled, wait_ready=False)
        try:
            line = server.wait_for_log("colour recompute done:", timeout=3600)
        finally:
            server.stop()
    match = DONE.search(line)
    if match is None:
        print(f"no backfill line in the log:\n{line[-2000:]}", file=sys.stderr)
        return 1
    images, seconds, rate = int(match[1]), float(match[2]), int(match[3])
    figures = {
        "images": images,
        "seconds": seconds,
        "images_per_s": rate,
        "minutes_per_100k": 100_000 / max(rate, 1) / 60,
        "machine": describe(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print("colours computed again after an upgrade to schema v12 (server started with the model)")
    print(f"  images recomputed     {images}")
    print(f"  time                  {seconds:.1f} s")
    print(f"  rate                  {rate} images/s, one thread")
    print(f"  at 100,000 images     {figures['minutes_per_100k']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
