"""Ingest: 4,000 photos through the real client into a fresh server, against the bare model.

Issue 4's bar: `client.py add_image DIR --tags bench` (a real process, TLS on loopback) into a
fresh server.py with the model weights, timed until every image has its row, its thumbnail and
its embedding (read from the server's SQLite file, not from the client's word). In the same run:

* **bare model**: decode + prepare_input + embed on the same files without any server, with
  `models.embeddings.Embedder` and `models.batcher.EmbeddingBatcher` as bench_model does
  (decoding overlapped with inference, the fastest way bench_model found), once before the
  ingest and once after it; ingest is reported as a fraction of the mean of the two (target
  >= 0.7), so that the machine's speed drifting between them (5-10% on this VM) shows
  instead of biasing the fraction;
* **colour extraction** (target: adds <= 10% to ingest time), measured directly by A/B: half
  the files ingested into fresh servers with and without `--no-colours`, eight runs in an
  order that cancels drift (AB_ORDER), with the spread over its four pairs and the server CPU
  per image the colours add under load; also `extract_palette`'s CPU ms per image measured
  alone, against ingest wall time and server CPU time per image (when the extraction was
  numpy only, these ratios came out at half the A/B: under load each of its small numpy steps
  let go of the GIL and took it back; docs/colours.md, "Speed");
* **the floor**: every server step beside the model (hash, thumbnail, palette, blob writes,
  insert) timed alone, added to the bare model's and the client's CPU per image: the least
  an upload can cost, and so the highest fraction of the bare model that ingest could reach
  with no contention at all (docs/architecture.md, "Bulk ingest");
* **dedup re-upload**: the same folder again, every file already stored, in MB/s (>= 100).

The model runs first, alone; then the server; then the model again. Nothing this run writes
is deleted before its end (see `steps_alone`). The client and the server share the machine's
cores, as they would on a one-box install. Photos are bench_model.make_jpeg (512x512, ~200 KB,
varied content and colour), cached in the temporary directory by bench/fill.py.

    .venv/bin/python -m bench.bench_ingest [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.fill import PASSWORD, default_weights, model_name_for, photo_cache, wait_for_index
from bench.machine import describe, rss_mib
from tests.rows import add_users
from tests.servers import ServerProcess, run_client

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ingest.json"
SUMMARY = re.compile(
    r"(\d+) files?: (\d+) new, (\d+) already present, (\d+) rejected "
    r"\(([\d.]+) MB in ([\d.]+) s: ([\d.]+) files/s, ([\d.]+) MB/s\)"
)
TARGET_SECONDS_4000 = 60.0
TARGET_RATE = 66.0
TARGET_FRACTION = 0.7
TARGET_COLOUR_SHARE = 0.10
TARGET_DEDUP_MBS = 100.0
#: Give up when the counts have not moved for this long after the client finished.
STALL_S = 60.0

T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counts(data_dir: Path, model: str | None) -> dict[str, int]:
    """Rows, rows whose thumbnail is named, rows with an embedding of `model` (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'vitrine.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows, thumbs = conn.execute(
            "SELECT COUNT(*), COUNT(NULLIF(thumb_blob, '')) FROM images WHERE deleted_at IS NULL"
        ).fetchone()
        (embedded,) = conn.execute(
            "SELECT COUNT(*) FROM embeddings e JOIN images i ON i.id = e.image_id "
            "WHERE i.deleted_at IS NULL AND e.model = ?",
            (model or "",),
        ).fetchone()
        return {"rows": rows, "thumbnails": thumbs, "embeddings": embedded}
    finally:
        conn.close()


def bare_model(
    paths: list[Path], weights: str, decoder_counts: tuple[int, ...] = (1, 2), plain: bool = True
) -> dict[str, float]:
    """Decode + prepare + embed on the files, no server: overlapped (with each number of
    decoder threads) and, if `plain`, a plain loop; the best overlapped rate is kept."""
    from bench.bench_model import decode, overlapped
    from models.embeddings import Embedder

    jpegs = [p.read_bytes() for p in paths]
    embedder = Embedder(weights, os.environ.get("VITRINE_CACHE_DIR") or _cache_dir())
    overlapped(jpegs[:32], embedder, 2)  # warm every interpreter size
    out: dict[str, float] = {}
    for decoders in decoder_counts:
        t0, c0 = time.perf_counter(), time.process_time()
        overlapped(jpegs, embedder, decoders)
        seconds = time.perf_counter() - t0
        out[f"overlapped_{decoders}_decoders_img_per_s"] = len(jpegs) / seconds
        out[f"overlapped_{decoders}_decoders_cpu_ms_per_img"] = (
            (time.process_time() - c0) / len(jpegs) * 1000
        )
    if plain:  # a plain loop too, on a slice: the DESIGN table's "~124 img/s" reference
        sample = jpegs[: min(len(jpegs), 400)]
        t0 = time.perf_counter()
        for data in sample:
            embedder.embed(decode(data)[None])
        out["plain_loop_img_per_s"] = len(sample) / (time.perf_counter() - t0)
    best = max(decoder_counts, key=lambda d: out[f"overlapped_{d}_decoders_img_per_s"])
    out["best_decoders"] = best
    out["best_img_per_s"] = out[f"overlapped_{best}_decoders_img_per_s"]
    out["best_cpu_ms_per_img"] = out[f"overlapped_{best}_decoders_cpu_ms_per_img"]
    return out


def _cache_dir() -> str:
    from util.config import default_cache_dir

    return str(default_cache_dir())


def steps_alone(paths: list[Path], workdir: Path) -> dict[str, float]:
    """CPU ms per image of each step the server adds to the bare model, one after another in
    this process, with nothing else running: the floor of what ingest costs beyond decode and
    embedding. (TLS, framing and the event loop are not in it; the client's CPU is measured in
    the run itself.) The same calls as service/ingest.py, on a real blob store and database in
    `workdir`, on the same disk as the server's.

    `workdir` must outlive the ingest runs: on ext4 without a journal (this VM's disk), every
    new inode is checked against the inodes deleted in the last one to six minutes, so deleting
    a thousand files just before an ingest made its blob writes cost twice as much
    (docs/architecture.md, "Bulk ingest")."""
    import secrets

    from models.colours import extract_palette, warm_up
    from repository import images as repo
    from repository.blobstore import BlobStore
    from repository.database import Database
    from service.context import ServerConfig
    from util import images as imaging

    side = ServerConfig().thumbnail_side
    sample = [p.read_bytes() for p in paths[: min(len(paths), 500)]]
    decoded = [imaging.decode_image(data, target=side).image for data in sample]
    warm_up()
    steps: dict[str, float] = {}

    def timed(step: str, work: Callable[[int], T]) -> list[T]:
        c0 = time.process_time()
        out = [work(i) for i in range(len(sample))]
        steps[step] = (time.process_time() - c0) / len(sample) * 1000
        return out

    workdir.mkdir()
    blobs = BlobStore(workdir / "blobs", secrets.token_bytes(32))
    db = Database(workdir / "vitrine.db")
    add_users(db.conn, "bench")
    names = timed("content name (HMAC-SHA256)", lambda i: blobs.name_for(sample[i]))
    thumbs = timed("thumbnail", lambda i: imaging.make_thumbnail(decoded[i], side))
    palettes = timed("palette", lambda i: extract_palette(thumbs[i][0]))
    thumb_names = timed(
        "blob writes (original + thumbnail, fsynced)",
        lambda i: (blobs.put(sample[i]), blobs.put(thumbs[i][1]))[1],
    )
    vector = ("bench", bytes(4 * 1280))

    def insert(i: int) -> int:
        palette = [
            repo.ColourRecord(c.r, c.g, c.b, c.hue, c.saturation, c.lightness, c.share)
            for c in palettes[i]
        ]
        new = repo.NewImage(
            owner_id=1, blob=names[i], thumb_blob=thumb_names[i], filename=f"{i}.jpg",
            title="", description="", price_cents=0, quantity=1, private=False,
            format="JPEG", width=512, height=512, byte_size=len(sample[i]), tags=["bench"],
            palette=palette, embedding=vector,
        )  # fmt: skip
        return repo.insert_image(db.conn, new)

    timed("insert (row, tag, FTS, colours, embedding)", insert)
    db.close()
    return steps


def summary_of(stdout: str) -> dict[str, float]:
    match = SUMMARY.search(stdout)
    if match is None:
        raise RuntimeError("the client printed no summary line:\n" + stdout[-2000:])
    files, new, present, rejected = (int(match.group(n)) for n in range(1, 5))
    mb, seconds, files_s, mb_s = (float(match.group(n)) for n in range(5, 9))
    return {
        "files": files,
        "new": new,
        "present": present,
        "rejected": rejected,
        "mb": mb,
        "seconds": seconds,
        "files_per_s": files_s,
        "mb_per_s": mb_s,
    }


@dataclass
class Ingest:
    """One timed `add_image DIR` into a running server."""

    seconds: float
    complete: bool
    counts: dict[str, int]
    server_cpu_ms: float
    client_cpu_ms: float
    client_seconds: float
    client_summary: dict


def upload_folder(
    server: ServerProcess, folder: Path, n: int, client_home: Path
) -> subprocess.CompletedProcess[str]:
    """`client.py login seller; add_image FOLDER --tags bench`, as a script would run it."""
    return run_client(
        server,
        "login seller",
        f"add_image {folder} --tags bench",
        config_dir=client_home,
        password=PASSWORD,
        timeout=max(600.0, n),
    )


def timed_ingest(
    server: ServerProcess, folder: Path, n: int, model: str | None, client_home: Path
) -> Ingest:
    """Upload `folder` as a new user's images; time it until every row, thumbnail and
    embedding is in the server's database."""
    made = run_client(server, "create_user seller", config_dir=client_home, password=PASSWORD)
    if made.returncode != 0:
        raise RuntimeError(f"create_user failed: {made.stderr[-2000:]}")
    pid = server.process.pid if server.process else 0
    cpu0 = cpu_seconds(pid)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    upload = upload_folder(server, folder, n, client_home)
    client_done = time.perf_counter() - started
    if upload.returncode != 0:
        raise RuntimeError(f"add_image failed:\n{upload.stderr[-3000:]}")
    # Every row, thumbnail and embedding, read from the server's own database.
    want = {"rows": n, "thumbnails": n, "embeddings": n if model else 0}
    last, moved = counts(server.data_dir, model), time.perf_counter()
    while any(last[k] < v for k, v in want.items()):
        if time.perf_counter() - moved > STALL_S:
            break  # stalled: reported as incomplete
        time.sleep(0.1)
        now = counts(server.data_dir, model)
        if now != last:
            last, moved = now, time.perf_counter()
    seconds = time.perf_counter() - started
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (children1.ru_utime + children1.ru_stime) - (
        children0.ru_utime + children0.ru_stime
    )
    return Ingest(
        seconds=seconds,
        complete=all(last[k] >= v for k, v in want.items()),
        counts=last,
        server_cpu_ms=(cpu_seconds(pid) - cpu0) / n * 1000,
        client_cpu_ms=client_cpu / n * 1000,
        client_seconds=client_done,
        client_summary=summary_of(upload.stdout),
    )


#: Colours on (True) and off in an order that cancels a linear drift of the machine's speed
#: (each side's mean position is the same), as four on/off pairs for the spread.
AB_ORDER = (True, False, False, True, False, True, True, False)


def colour_ab(folder: Path, n: int, weights: str | None, model: str | None, home: Path) -> dict:
    """What colour extraction adds to ingest, measured directly: fresh servers with and
    without `--no-colours`, in AB_ORDER; also the server CPU per image it adds under load."""
    env = {"VITRINE_WEIGHTS": weights} if weights else {}
    seconds: dict[bool, list[float]] = {True: [], False: []}
    cpu_ms: dict[bool, list[float]] = {True: [], False: []}
    for run, colours in enumerate(AB_ORDER):
        server = ServerProcess(
            home / f"ab{run}", [] if colours else ["--no-colours"], env=env
        ).start()
        try:
            if weights:
                wait_for_index(server, 300.0)
            done = timed_ingest(server, folder, n, model, home / f"ab-client{run}")
            if not done.complete:
                raise RuntimeError(f"A/B ingest run {run} did not complete: {done.counts}")
            seconds[colours].append(done.seconds)
            cpu_ms[colours].append(done.server_cpu_ms)
        finally:
            server.stop()
    on, off = (sum(seconds[c]) / len(seconds[c]) for c in (True, False))
    pairs = [a / b - 1 for a, b in zip(seconds[True], seconds[False], strict=True)]
    return {
        "images": n,
        "seconds_with": seconds[True],
        "seconds_without": seconds[False],
        "added_share": (on - off) / off,
        "added_share_per_pair": pairs,
        "server_cpu_ms_with": cpu_ms[True],
        "server_cpu_ms_without": cpu_ms[False],
        "added_server_cpu_ms": (sum(cpu_ms[True]) - sum(cpu_ms[False])) / len(cpu_ms[True]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images")
    parser.add_argument("--images", type=int, default=4000, help="photos uploaded")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 200
    n = args.images
    weights = default_weights()
    model = model_name_for(weights) if weights else None

    paths = photo_cache(n)
    total_mb = sum(p.stat().st_size for p in paths) / 1e6
    bare = bare_model(paths, weights) if weights else None
    bare_after = None

    # Everything this run writes stays until its end: deleting files before an ingest would
    # slow the ingest's file creation (see steps_alone).
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        steps = steps_alone(paths, home / "steps")
        palette_ms = steps["palette"]
        folder = home / "photos"
        folder.mkdir()
        for path in paths:  # the same bytes, without copying 800 MB
            try:
                os.link(path, folder / path.name)
            except OSError:
                (folder / path.name).write_bytes(path.read_bytes())
        data_dir = home / "server"
        env = {"VITRINE_WEIGHTS": weights} if weights else {}
        server = ServerProcess(data_dir, env=env).start()
        try:
            readiness = wait_for_index(server, 300.0) if weights else None
            client_home = home / "client"
            first_run = timed_ingest(server, folder, n, model, client_home)
            ingest_s, complete, last = first_run.seconds, first_run.complete, first_run.counts
            server_cpu_ms, client_cpu_ms = first_run.server_cpu_ms, first_run.client_cpu_ms
            client_done, first = first_run.client_seconds, first_run.client_summary
            pid = server.process.pid if server.process else 0
            rss = rss_mib(pid)

            again = upload_folder(server, folder, n, client_home)
            dedup = summary_of(again.stdout)
        finally:
            server.stop()
        if bare:  # again, so that a drift of the machine's speed shows instead of biasing
            bare_after = bare_model(paths, weights, (int(bare["best_decoders"]),), plain=False)
        ab = None
        if not args.quick:  # eight more ingests: too long for the quick form
            half = home / "photos-ab"
            half.mkdir()
            for path in sorted(folder.iterdir())[: n // 2]:
                os.link(path, half / path.name)
            ab = colour_ab(half, n // 2, weights, model, home)

    rate = n / ingest_s
    # The bare model's mean over its runs before and after the ingest.
    measured = [b for b in (bare, bare_after) if b]

    def bare_mean(key: str) -> float:
        return sum(b[key] for b in measured) / len(measured) if measured else 0.0

    model_rate, model_cpu_ms = bare_mean("best_img_per_s"), bare_mean("best_cpu_ms_per_img")
    fraction = rate / model_rate if bare else None
    per_image_ms = ingest_s / n * 1000
    floor_ms = model_cpu_ms + sum(steps.values()) + client_cpu_ms
    report = {
        "images": n,
        "mean_jpeg_kb": total_mb / n * 1000,
        "weights": weights,
        "model_ready_s": readiness.model_seconds if readiness else None,
        "complete": complete,
        "final_counts": last,
        "ingest_seconds": ingest_s,
        "client_process_seconds": client_done,
        "client_summary": first,
        "ingest_img_per_s": rate,
        "server_cpu_ms_per_img": server_cpu_ms,
        "client_cpu_ms_per_img": client_cpu_ms,
        # What survives a busy machine: CPU per image of the bare model over server + client.
        "cpu_fraction_of_bare_model": (
            model_cpu_ms / (server_cpu_ms + client_cpu_ms) if bare else None
        ),
        "server_rss_mib_after": rss,
        "bare_model": bare,
        "bare_model_after_ingest": bare_after,
        "bare_model_img_per_s": model_rate,
        "bare_model_cpu_ms_per_img": model_cpu_ms,
        "fraction_of_bare_model": fraction,
        "steps_alone_cpu_ms_per_img": steps,
        # Bare model + the server's steps alone + the client: the least CPU an upload can
        # cost, and the fraction of the bare model that allows with both cores always busy.
        "floor_cpu_ms_per_img": floor_ms,
        "fraction_ceiling": model_cpu_ms / floor_ms if bare else None,
        "colour_ab": ab,
        "colour_share_of_ingest_wall": palette_ms / per_image_ms,
        "colour_share_of_server_cpu": palette_ms / server_cpu_ms,
        "dedup": dedup,
        "meets": {
            "rate_ge_66": rate >= TARGET_RATE,
            "fraction_ge_0.7": None if fraction is None else fraction >= TARGET_FRACTION,
            "colour_le_10pct": None if ab is None else ab["added_share"] <= TARGET_COLOUR_SHARE,
            "dedup_ge_100MBs": dedup["mb_per_s"] >= TARGET_DEDUP_MBS,
        },
        "load_average_1m": os.getloadavg()[0],
        "machine": describe(),
    }

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("meets" if ok else "MISSES")

    m = report["meets"]
    print(f"{n} JPEGs 512x512, mean {report['mean_jpeg_kb']:.0f} KB ({total_mb:.0f} MB)")
    print(f"{'measure':<52} {'value':>10}  target")
    if not complete:
        print(f"INCOMPLETE after {ingest_s:.1f} s: {last} (wanted {n} of each)")
    if model is None:
        print("no weights (VITRINE_WEIGHTS): ingest measured without embeddings")
    print(
        f"{'ingest: add_image until rows+thumbs+embeddings (s)':<52} {ingest_s:>10.1f}  "
        f"<= {TARGET_SECONDS_4000 * n / 4000:.0f} s for {n}"
    )
    print(
        f"{'ingest rate (img/s)':<52} {rate:>10.1f}  >= {TARGET_RATE:g}: {verdict(m['rate_ge_66'])}"
    )
    if bare:
        after = f", {bare_after['best_img_per_s']:.1f} after" if bare_after else ""
        print(
            f"{'bare model: decode+embed, overlapped, best (img/s)':<52} "
            f"{model_rate:>10.1f}  (mean of {bare['best_img_per_s']:.1f} before{after})"
        )
        plain = bare["plain_loop_img_per_s"]
        print(f"{'bare model: plain loop, one at a time (img/s)':<52} {plain:>10.1f}")
        print(
            f"{'ingest / bare model':<52} {fraction:>10.2f}  >= {TARGET_FRACTION}: "
            f"{verdict(m['fraction_ge_0.7'])}"
        )
    print(f"{'server CPU per image (ms)':<52} {server_cpu_ms:>10.1f}")
    print(f"{'client CPU per image (ms)':<52} {client_cpu_ms:>10.1f}")
    if bare:
        print(
            f"{'bare model CPU / (server + client CPU) per image':<52} "
            f"{report['cpu_fraction_of_bare_model']:>10.2f}  (load-independent view)"
        )
    print("server steps beside the model, each alone (CPU ms per image):")
    for step, ms in steps.items():
        print(f"  {step:<50} {ms:>10.2f}")
    if bare:
        print(
            f"{'floor: bare model + those steps + client (ms)':<52} {floor_ms:>10.1f}  "
            f"(ingest measured {server_cpu_ms + client_cpu_ms:.1f})"
        )
        print(
            f"{'  = at most this fraction of the bare model':<52} "
            f"{report['fraction_ceiling']:>10.2f}  (no contention, both cores always busy)"
        )
    if ab is not None:
        on = " ".join(f"{t:.1f}" for t in ab["seconds_with"])
        off = " ".join(f"{t:.1f}" for t in ab["seconds_without"])
        print(
            f"{'colour extraction adds to ingest time (A/B)':<52} "
            f"{ab['added_share']:>10.1%}  <= 10%: {verdict(m['colour_le_10pct'])}"
        )
        print(f"  {ab['images']} images per run; with colours {on} s, --no-colours {off} s")
        spread = ab["added_share_per_pair"]
        print(f"  per on/off pair: {min(spread):.1%} to {max(spread):.1%}")
        print(
            f"{'colour extraction, server CPU it adds per image (ms)':<52} "
            f"{ab['added_server_cpu_ms']:>10.2f}  (A/B, under load)"
        )
    print(
        f"{'colour CPU / ingest wall time per image':<52} "
        f"{report['colour_share_of_ingest_wall']:>10.1%}  (palette CPU alone, not under load)"
    )
    print(f"{'colour / server CPU per image':<52} {report['colour_share_of_server_cpu']:>10.1%}")
    print(
        f"{'re-upload, all already present (MB/s, client)':<52} {dedup['mb_per_s']:>10.1f}  "
        f">= {TARGET_DEDUP_MBS:g}: {verdict(m['dedup_ge_100MBs'])}"
    )
    print(f"{'re-upload: files present / sent':<52} {dedup['present']:>6d}/{dedup['files']:<4d}")
    print(f"{'server RSS after ingest (MiB)':<52} {rss:>10.0f}")
    print(f"1-minute load average at the end: {report['load_average_1m']:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
