"""Fill a fresh data directory with N images directly, then start the real server on it.

Uploading 100,000 photos through the server would take half an hour of model time before any
browse or search figure could be taken, and those figures do not depend on how the rows got
there. So this writes what an upload would have committed, with the repository's own schema
(`repository.database` runs the migrations) and the real encrypted blob store:

* **rows**: owners, titles, descriptions, prices, stock, 2% private, increasing `created_at`;
* **tags** from a fixed vocabulary with skewed frequencies (so some tags are common, some rare),
  and the FTS row of every image (title, description, tags, filename) from `index_row`, as
  an upload's is;
* **colours**: 0-4 dominant colours per image (10% have none), with hues spread over the circle;
* **embeddings**: synthetic unit vectors around a few hundred random centroids (a catalogue
  has groups of look-alike products), stored under the exact model name the server will use,
  so the server indexes them instead of "backfilling" 100,000 images;
* **blobs**: `distinct` real photo-like JPEGs and their real thumbnails, encrypted by
  `BlobStore.put`. Rows share them, which is what keeps a 100,000-image fill to seconds. The
  schema allows one live row per owner and content, so the rows are spread over
  ceil(N / distinct) sellers (a marketplace with many sellers), each holding each photo once.

Palettes and vectors are therefore not those of the row's picture: listings and searches cost
the same either way, and that is all these benchmarks measure.

    from bench.fill import fill, start_server
    filled = fill(Path(tmp) / "server", 100_000, buyers=50)
    server = start_server(filled)          # waits until search by image is ready
"""

from __future__ import annotations

import colorsys
import math
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlite_utils

from models.embeddings import EMBEDDING_DIM
from repository.images import index_row
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = ROOT.parent / "shared/models/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
PASSWORD = "benchmark password"
#: Stock of the images checkout benchmarks buy from: enough that a run never sells out.
BIG_STOCK = 1_000_000
#: Share of the images that carry BIG_STOCK.
BIG_STOCK_SHARE = 0.01
PRIVATE_SHARE = 0.02
NO_COLOUR_SHARE = 0.10
CENTROIDS = 400
#: Noise norm around a centroid: cosine to it is then about 1 / sqrt(1 + 0.8²) = 0.78.
SPREAD = 0.8
PHOTO_DIR = Path(tempfile.gettempdir()) / "vitrine-bench" / "photos-v1"
PHOTO_SEED = 20_261_122
CHUNK = 5000
#: Rows per INSERT statement in sqlite-utils' insert_all (its default is 100); SQLite allows
#: 32,766 bound values a statement, and an images row binds 16.
INSERT_BATCH = 1000
COLOUR_COLUMNS = ("image_id", "rank", "r", "g", "b", "hue", "saturation", "lightness", "share")
FTS_COLUMNS = ("rowid", "title", "description", "tags", "filename")

# Skewed on purpose: the first entries of each list are picked far more often than the last.
CATEGORIES = [
    "dress", "shirt", "shoes", "bag", "jacket", "trousers", "skirt", "hat", "scarf", "belt",
    "watch", "socks", "gloves", "coat", "sweater", "shorts", "sandals", "boots", "tie", "cap",
]  # fmt: skip
MATERIALS = ["cotton", "wool", "leather", "linen", "silk", "denim", "suede", "velvet"]
COLOUR_WORDS = ["red", "blue", "green", "black", "white", "yellow", "pink", "brown", "purple"]
EXTRA_TAGS = ["sale", "new", "vintage", "handmade", "limited"]
ADJECTIVES = ["classic", "light", "warm", "slim", "soft", "bright", "casual", "formal", "summer"]

#: A tag about 1 image in 10 carries, and one about 1 in 200 carries (for browse figures).
COMMON_TAG = "dress"
RARE_TAG = "limited"


@dataclass
class Filled:
    """What a benchmark needs to know about a filled data directory."""

    data_dir: Path
    images: int
    sellers: list[str]
    buyers: list[str]
    password: str
    #: Image ids with BIG_STOCK units, public (for checkout in the load mix).
    stocked_ids: list[int]
    #: Live public image ids (sample query ids from them).
    public_ids: list[int]
    tag_counts: dict[str, int]
    model: str | None
    weights: str | None
    seconds: float
    blobs: int
    notes: list[str] = field(default_factory=list)


def default_weights() -> str | None:
    """VITRINE_WEIGHTS, else the shared file next to the repository, else None (no model)."""
    value = os.environ.get("VITRINE_WEIGHTS")
    if value and Path(value).is_file():
        return value
    return str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else None


def model_name_for(weights: str) -> str:
    """The name the server's Embedder stores next to each vector for these weights.

    It must match exactly, or the server would treat every filled vector as stale and start a
    backfill (start_server checks the log for that and fails loudly).
    """
    from models.embeddings import PREPARE_POLICY, weights_key

    return f"mobilenet_v2_1.0_224/{weights_key(weights)[:16]}/{PREPARE_POLICY}"


def _make_photo(path: Path) -> None:
    from bench.bench_model import make_jpeg

    seed = int(path.stem)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(make_jpeg(np.random.default_rng([PHOTO_SEED, seed])))
    os.replace(tmp, path)


def photo_cache(count: int) -> list[Path]:
    """`count` photo-like 512x512 JPEGs of ~200 KB (bench_model.make_jpeg), made once per machine.

    Making one costs ~60 ms of CPU, so 4,000 cost minutes: they are kept in the temporary
    directory and reused by every benchmark run (photo n is always the same bytes).
    """
    PHOTO_DIR.mkdir(parents=True, exist_ok=True)
    paths = [PHOTO_DIR / f"{n:05d}.jpg" for n in range(count)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(_make_photo, missing, chunksize=8))
    return paths


def _photo(path: Path) -> tuple[bytes, bytes]:
    """One cached photo and the thumbnail the upload path would make of it."""
    from util import images as imaging

    data = path.read_bytes()
    decoded = imaging.decode_image(data, target=256)
    _, thumb = imaging.make_thumbnail(decoded.image, 256)
    return data, thumb


def _palette(rng: np.random.Generator) -> list[tuple[int, int, int, float, float, float, float]]:
    if rng.random() < NO_COLOUR_SHARE:
        return []
    n = int(rng.integers(1, 5))
    shares = np.sort(rng.dirichlet(np.ones(n + 1)))[::-1][:n] * rng.uniform(0.5, 1.0)
    out = []
    for share in shares:
        hue = float(rng.uniform(0, 360))
        sat, light = float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.2, 0.8))
        r, g, b = (round(v * 255) for v in colorsys.hls_to_rgb(hue / 360, light, sat))
        out.append((r, g, b, round(hue, 2), round(sat, 3), round(light, 3), round(float(share), 4)))
    return out


def _skewed(rng: np.random.Generator, words: list[str], size: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, len(words) + 1)
    return rng.choice(len(words), size=size, p=weights / weights.sum())


def fill(
    data_dir: Path,
    images: int,
    *,
    buyers: int = 0,
    distinct: int = 256,
    seed: int = 0,
    weights: str | None = None,
    embeddings: bool = True,
) -> Filled:
    """Write `images` images into a new data directory (see the module docstring)."""
    from repository import accounts
    from repository.blobstore import BlobStore, load_or_create_key
    from repository.database import Database
    from service.auth import hash_password
    from service.data_dir import BLOB_DIR, BLOB_KEY_FILE, DB_FILE, prepare_data_dir

    started = time.perf_counter()
    weights = weights if weights is not None else default_weights()
    model = model_name_for(weights) if (weights and embeddings) else None
    data_dir = prepare_data_dir(Path(data_dir))
    if (data_dir / DB_FILE).exists():
        raise FileExistsError(f"{data_dir} already holds a database: fill a fresh directory")
    distinct = max(1, min(distinct, images))
    rng = np.random.default_rng(seed)

    store = BlobStore(data_dir / BLOB_DIR, load_or_create_key(data_dir / BLOB_KEY_FILE))
    photos = [_photo(path) for path in photo_cache(distinct)]
    blob_names = [(store.put(data), store.put(thumb), len(data)) for data, thumb in photos]
    del photos

    db = Database(data_dir / DB_FILE)
    conn = db.conn
    phc = hash_password(PASSWORD)  # one Argon2id hash reused: every account has this password
    accounts.create_user(conn, "admin", phc)  # the first account is the admin; keep it apart
    n_sellers = math.ceil(images / distinct)
    sellers = [f"seller{i}" for i in range(n_sellers)]
    buyer_names = [f"buyer{i}" for i in range(buyers)]
    now = time.time()
    # Rows go in as dicts through sqlite-utils' batched insert_all, inside one transaction of
    # our own (sqlite-utils keeps an open transaction open); the schema is the server's own.
    rows_db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    rows_db["users"].insert_all(
        {"name": name, "password_hash": phc, "is_admin": 0, "created_at": now}
        for name in sellers + buyer_names
    )
    user_ids = dict(conn.execute("SELECT name, id FROM users"))
    vocabulary = CATEGORIES + MATERIALS + COLOUR_WORDS + EXTRA_TAGS
    rows_db["tags"].insert_all({"name": t} for t in vocabulary)
    tag_id = dict(conn.execute("SELECT name, id FROM tags"))
    centroids = rng.standard_normal((CENTROIDS, EMBEDDING_DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    tag_counts = dict.fromkeys(vocabulary, 0)
    stocked: list[int] = []
    public: list[int] = []
    t0 = now - images  # one upload a second, ending now
    for start in range(0, images, CHUNK):
        n = min(CHUNK, images - start)
        cats = _skewed(rng, CATEGORIES, n)
        mats = _skewed(rng, MATERIALS, n)
        cols = _skewed(rng, COLOUR_WORDS, n)
        rows: list[dict[str, object]] = []
        tag_rows: list[dict[str, object]] = []
        fts_rows: list[dict[str, object]] = []
        colour_rows: list[dict[str, object]] = []
        for k in range(n):
            index = start + k
            image_id = index + 1  # a fresh table hands out 1, 2, 3...
            owner = sellers[index // distinct]
            blob, thumb, size = blob_names[index % distinct]
            tags = [CATEGORIES[cats[k]], MATERIALS[mats[k]], COLOUR_WORDS[cols[k]]]
            if rng.random() < 0.1:
                tags.append(EXTRA_TAGS[int(_skewed(rng, EXTRA_TAGS, 1)[0])])
            if rng.random() < 0.005:
                tags.append(RARE_TAG)
            tags = sorted(set(tags))
            for t in tags:
                tag_counts[t] += 1
            private = rng.random() < PRIVATE_SHARE
            big = not private and rng.random() < BIG_STOCK_SHARE
            quantity = BIG_STOCK if big else int(rng.integers(0, 21))
            if big:
                stocked.append(image_id)
            if not private:
                public.append(image_id)
            title = (
                f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} {COLOUR_WORDS[cols[k]]} "
                f"{MATERIALS[mats[k]]} {CATEGORIES[cats[k]]} {image_id}"
            )
            description = (
                f"A {ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} {CATEGORIES[cats[k]]} in "
                f"{MATERIALS[mats[k]]}, size {int(rng.integers(34, 50))}."
            )
            filename = f"IMG_{image_id:06d}.jpg"
            created = t0 + index
            rows.append(
                {
                    "id": image_id,
                    "owner_id": user_ids[owner],
                    "blob": blob,
                    "thumb_blob": thumb,
                    "filename": filename,
                    "title": title,
                    "description": description,
                    "price_cents": int(rng.integers(100, 50_000)),
                    "quantity": quantity,
                    "private": int(private),
                    "format": "JPEG",
                    "width": 512,
                    "height": 512,
                    "byte_size": size,
                    "created_at": created,
                    "updated_at": created,
                }
            )
            tag_rows.extend({"image_id": image_id, "tag_id": tag_id[t]} for t in tags)
            texts = index_row(title, description, tags, filename)
            fts_rows.append(dict(zip(FTS_COLUMNS, (image_id, *texts), strict=True)))
            colour_rows.extend(
                dict(zip(COLOUR_COLUMNS, (image_id, rank, *colour), strict=True))
                for rank, colour in enumerate(_palette(rng))
            )
        rows_db["images"].insert_all(rows, batch_size=INSERT_BATCH)
        rows_db["image_tags"].insert_all(tag_rows, batch_size=INSERT_BATCH)
        rows_db["images_fts"].insert_all(fts_rows, batch_size=INSERT_BATCH)
        rows_db["image_colours"].insert_all(colour_rows, batch_size=INSERT_BATCH)
        if model is not None:
            which = rng.integers(0, CENTROIDS, n)
            noise = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
            vectors = centroids[which] + noise * (SPREAD / math.sqrt(EMBEDDING_DIM))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors.astype("<f4")
            rows_db["embeddings"].insert_all(
                (
                    {"image_id": start + k + 1, "model": model, "vector": vectors[k].tobytes()}
                    for k in range(n)
                ),
                batch_size=INSERT_BATCH,
            )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return Filled(
        data_dir=data_dir,
        images=images,
        sellers=sellers,
        buyers=buyer_names,
        password=PASSWORD,
        stocked_ids=stocked,
        public_ids=public,
        tag_counts=tag_counts,
        model=model,
        weights=weights,
        seconds=time.perf_counter() - started,
        blobs=2 * distinct,
    )


# --- the server on a filled directory -----------------------------------------------------------

INDEX_READY = re.compile(r"vector index (loaded from disk|rebuilt from the database) in ([\d.]+) s")
MODEL_READY = re.compile(r"image model ready in ([\d.]+) s")
BACKFILL = re.compile(r"backfill: (\d+) images have no embedding")


@dataclass
class Readiness:
    """What the server log said about search by image once it settled."""

    ready: bool
    model_seconds: float | None = None
    index_seconds: float | None = None
    index_how: str = ""
    wall_seconds: float = 0.0
    reason: str = ""


def start_server(
    filled: Filled, *, wait_ready: bool = True, timeout: float = 300.0
) -> tuple[ServerProcess, Readiness]:
    """The real server.py on the filled directory, with the weights; waits for the index.

    Fails if the server starts backfilling the filled rows (the model name did not match): that
    would measure a half-built index under a busy model.
    """
    env = {"VITRINE_WEIGHTS": filled.weights} if filled.weights else {}
    t0 = time.perf_counter()
    server = ServerProcess(filled.data_dir, env=env).start()
    readiness = Readiness(ready=False)
    if not wait_ready or filled.model is None:
        readiness.reason = "no model weights" if filled.model is None else "not waited for"
        return server, readiness
    try:
        readiness = wait_for_index(server, timeout)
    except BaseException:
        server.stop()
        raise
    readiness.wall_seconds = time.perf_counter() - t0
    return server, readiness


def wait_for_index(server: ServerProcess, timeout: float) -> Readiness:
    """Poll the server's log until the vector index is up (or search by image is unavailable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if match := BACKFILL.search(log):
            raise RuntimeError(
                f"the server is backfilling {match.group(1)} filled images: the filled model "
                "name does not match the server's (bench/fill.py model_name_for)"
            )
        if "search by image is unavailable" in log:
            line = next(x for x in log.splitlines() if "search by image is unavailable" in x)
            return Readiness(ready=False, reason=line.strip())
        if match := INDEX_READY.search(log):
            model = MODEL_READY.search(log)
            return Readiness(
                ready=True,
                model_seconds=float(model.group(1)) if model else None,
                index_seconds=float(match.group(2)),
                index_how=match.group(1),
            )
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError("the server exited:\n" + log[-3000:])
        time.sleep(0.2)
    raise TimeoutError(f"search by image not ready after {timeout:.0f} s:\n" + server.log()[-3000:])
