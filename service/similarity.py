"""Search by image: the model's life in the server, embeddings at upload, the vector index, the
backfill of images that have no embedding yet, and the ImageSearch route.

Life of the model (one `SimilarityEngine` per server, in ``Services.extras["similarity"]``):

* ``start`` runs after the server announces that it listens: one background thread loads the
  model (``models.embeddings.Embedder``: a cached TFLite file, converted from the Keras
  weights once per cache directory), then opens the index, then backfills. Nothing of that
  delays start-up or blocks the event loop, and every failure (no weights file, Keras' own
  download failing offline, a broken cache) is caught: the server goes on serving everything
  else and ImageSearch answers UNAVAILABLE with a sentence saying how to provide weights.
* **Uploads while the model loads** wait for it, at most ``UPLOAD_WAIT_S`` (a warm start takes
  well under a second; the first conversion ~10-20 s). Past that, or when the model cannot be
  loaded at all, the image is stored without an embedding and the backfill computes it once a
  model is there: later in this run, or at the next start with weights. Waiting (bounded)
  keeps the common case simple (a bulk upload right after start gets its embeddings in the
  same transaction as its rows) without ever letting a missing model stall uploads.
* **Backfill** finds live images without an embedding of the current model (new ones made
  without weights, or vectors of other weights or another input policy), decodes their stored
  originals exactly as an upload does (same decoder, same draft scale: identical vectors), and
  embeds them through the same batcher, logging progress every ``BACKFILL_LOG_EVERY`` images
  and a final "backfill done" line with count and rate. It runs at start and whenever an
  upload is stored without an embedding while the model is ready.

The index (``repository.vector_index.VectorIndex``) holds the live images' vectors of the
current model. It is loaded from ``<data dir>/vector-index`` when its generation token still
matches the database (model name and a BLAKE2b digest of the live embedded ids,
`repository.embeddings.index_generation`: embeddings are never updated in place), else rebuilt
from the embeddings table; the time is logged. It is
kept in step after each commit: add after an upload's row commits, remove after a delete, both
under one lock with a liveness check in SQL, so a delete racing an add never leaves a deleted
image in the index. Changes that arrive while the index is being built are queued and applied
when it is published. It is saved on a clean shutdown when it changed.

Search: filters (tags all-of, price range, in stock) and visibility apply before the cut.
Without tags, or with tags that most images carry, the index is asked for its best
``POST_FILTER_CANDIDATES`` and those are checked in one SQL query (cheap at any size: an
allowed-id list of 100k rows costs tens of milliseconds to build); when that leaves fewer than
``MAX_RESULTS``, the allowed ids are computed in SQL and the index searches among them only.
Selective tags go straight to the allowed-id path (a walk of the rarest tag's index). The
ranked ids and cosines then go into a listing snapshot: batches, ``More`` and visibility
re-checks come from ``service.listings``.

While the backfill runs, a search can rank only the images already in the index: its first
batch carries ``Batch.unindexed``, about how many images the viewer may see that pass the
filters have no embedding yet (the query's own image and undecodable ones left out). It is a
notice for people, counted in SQL just before the ranking and without the index lock, so
searches never queue behind each other or behind the backfill; what it can be off by is in
`SimilarityEngine.rank_counting`. Once a backfill pass finds nothing left, it is 0 without a
query.

The SQL for the embeddings table is in ``repository.embeddings``, which uses
``repository.images``' visibility rule and write lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.embeddings import EMBEDDING_DIM, prepare_input
from protocol.catalog import ImageSearch
from protocol.errors import ErrorCode, VitrineError
from protocol.limits import MAX_SEARCH_RESULTS
from repository import images as repo
from repository.blobstore import BlobError
from repository.embeddings import (
    BACKFILL_CHUNK,
    count_missing,
    index_generation,
    iter_embeddings,
    live_subset,
    missing_embeddings,
    store_embeddings,
    vector_bytes,
    vector_from,
    visible_vector,
)
from repository.filters import SearchFilters
from service.context import RequestContext, Services
from service.ingest import (
    Analyser,
    Prepared,
    decode_stored,
    decode_upload,
    rejection_error,
)
from service.listings import Ranked, Recheck, checked_filter_tags, open_ranked
from service.registry import Frames, route
from util import config as cfg
from util import images as imaging

if TYPE_CHECKING:
    from models.batcher import EmbeddingBatcher
    from repository.vector_index import VectorIndex

log = logging.getLogger("vitrine.similarity")
# faiss announces at INFO which CPU build it tried; that is noise in a server log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

#: Ranked results a search snapshot holds (batches of 20, then `More`, up to this many).
MAX_RESULTS = MAX_SEARCH_RESULTS
#: Unfiltered candidates checked against the filters in SQL before falling back to allowed ids.
POST_FILTER_CANDIDATES = 640
#: Tags carried by at least this share of the indexed images are post-filtered, not pre-listed.
TAG_POST_FILTER_SHARE = 0.5
#: Longest an upload waits for the model to finish loading before it is stored without one.
UPLOAD_WAIT_S = 30.0
#: Backfill logs its progress every this many images (and at least every BACKFILL_LOG_S).
BACKFILL_LOG_EVERY = 500
BACKFILL_LOG_S = 10.0
INDEX_DIR = "vector-index"
_EXTRA = "similarity"
#: Exceptions that mean a bug in this code rather than a missing or bad model file.
PROGRAMMING_ERRORS = (AttributeError, AssertionError, NameError, TypeError, KeyError, IndexError)

WEIGHTS_HINT = (
    "Start the server with VITRINE_WEIGHTS=/path/to/mobilenet_v2_1.0_224_imagenet_no_top"
    ".weights.h5 (or server.py --weights PATH), or give it internet access so Keras can "
    "download the ImageNet weights; images uploaded meanwhile get their embeddings then."
)


# --- the engine ---------------------------------------------------------------------------------


class SimilarityEngine:
    """The model, the batcher and the index of one server, and the thread that prepares them.

    States: ``loading`` (model or index not ready yet), ``ready``, ``unavailable`` (no model:
    ``reason`` says why). Thread-safe; the event loop only ever awaits it.
    """

    def __init__(
        self,
        services: Services,
        weights: str | None,
        cache_dir: Path,
        index_dir: Path,
    ) -> None:
        self.services = services
        self.weights = weights
        self.cache_dir = cache_dir
        self.index_dir = index_dir
        self.state = "loading"
        self.reason = ""
        self.model_name: str | None = None
        self.batcher: EmbeddingBatcher | None = None
        self.index: VectorIndex | None = None
        self.started_at = time.monotonic()
        #: Set once the model is ready or known to be unavailable.
        self.model_settled = threading.Event()
        self._model_async: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # index mutations + the pending queue
        self._pending: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        self._dirty = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: Images the backfill cannot decode: not retried. Replaced, never mutated (under
        #: `_failed_lock`), so that searches read it without a lock.
        self._failed: frozenset[int] = frozenset()
        self._failed_lock = threading.Lock()
        #: True once a backfill pass left no live image without an embedding (but the ones it
        #: cannot decode) and nothing woke it since; searches then skip counting `unindexed`.
        self._complete = False
        self._thread: threading.Thread | None = None
        self._decoders: concurrent.futures.ThreadPoolExecutor | None = None

    # --- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background; call from the event loop, once it listens."""
        self._loop = asyncio.get_running_loop()
        self._model_async = asyncio.Event()
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="similarity", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the backfill, drain the model's queue, save the index if it changed."""
        self._stop.set()
        self._wake.set()
        # A model loading from the cache settles within a second: wait for it, so that its
        # native code is never running while the interpreter shuts down (a stop right after
        # start then crashed the process with SIGSEGV in CI). A stuck download is left behind.
        if self._thread is not None and self.model_settled.wait(timeout):
            self._thread.join(timeout)
        if self._decoders is not None:
            self._decoders.shutdown(wait=True, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close(timeout)
        if self._thread is not None and self._thread.is_alive():
            return  # still loading (a stuck download): saving now could race it
        with self._lock:
            if self.index is None or not self._dirty or self.model_name is None:
                return
            t0 = time.monotonic()
            try:
                generation = index_generation(self.services.db.conn, self.model_name)
                self.index.save(self.index_dir, generation)
            except Exception:
                # Nothing is lost (the embeddings are in the database), but the next start
                # pays for a rebuild, and a bug here should not pass unseen.
                log.exception("the vector index could not be saved; the next start rebuilds it")
                return
            self._dirty = False
            log.info("vector index saved: %d vectors in %.2f s", len(self.index), _since(t0))

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def wait_model(self, timeout: float) -> bool:
        """Wait (without blocking the loop) until the model is ready; False if it is not."""
        if self.batcher is not None:
            return True
        if self.model_settled.is_set() or self._model_async is None:
            return self.batcher is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._model_async.wait(), timeout)
        return self.batcher is not None

    def _settle_model(self) -> None:
        self.model_settled.set()
        if self._loop is not None and self._model_async is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed: nobody waits
                self._loop.call_soon_threadsafe(self._model_async.set)

    def _run(self) -> None:
        try:
            self._load_model()
        except BaseException as exc:  # anything at all: the server must keep serving
            self.reason = _describe(exc)
            self.state = "unavailable"
            # No weights, a bad file or no network for Keras' download need one line and the
            # hint; a programming error is a bug, and its traceback goes to the log as well.
            log.warning(
                "search by image is unavailable: %s. %s",
                self.reason,
                WEIGHTS_HINT,
                exc_info=isinstance(exc, PROGRAMMING_ERRORS),
            )
            self._settle_model()
            return
        self._settle_model()
        if self._stop.is_set():
            return  # stopping: no index to build
        try:
            self._open_index()
        except Exception as exc:
            self.reason = f"the vector index could not be built ({_describe(exc)})"
            self.state = "unavailable"
            log.exception("search by image is unavailable: the vector index could not be built")
            return
        self.state = "ready"
        self._backfill_loop()

    def _load_model(self) -> None:
        from models.batcher import EmbeddingBatcher
        from models.embeddings import Embedder

        t0 = time.monotonic()
        source = self.weights or "Keras' ImageNet download"
        log.info("loading the image model (weights: %s, cache: %s)", source, self.cache_dir)
        embedder = Embedder(self.weights or None, self.cache_dir)
        self.model_name = embedder.model_name
        self.batcher = EmbeddingBatcher(embedder, max_batch=16)
        log.info(
            "image model ready in %.2f s%s: %s",
            _since(t0),
            " (converted once; cached for later starts)" if embedder.converted else "",
            self.model_name,
        )

    def _open_index(self) -> None:
        from repository.vector_index import IndexFormatError, StaleIndexError, VectorIndex

        assert self.model_name is not None
        conn = self.services.db.conn
        t0 = time.monotonic()
        generation = index_generation(conn, self.model_name)
        try:
            index = VectorIndex.load(self.index_dir, expected_generation=generation)
            how = "loaded from disk"
        except (StaleIndexError, IndexFormatError) as exc:
            log.info("vector index: rebuilding from the database (%s)", exc)
            index = VectorIndex.from_chunks(iter_embeddings(conn, self.model_name))
            how = "rebuilt from the database"
            self._dirty = True
        with self._lock:
            for kind, ids, vectors in self._pending:
                if kind == "add":
                    index.add(ids, vectors)
                else:
                    index.remove(ids)
            self._dirty = self._dirty or bool(self._pending)
            self._pending.clear()
            self.index = index
        stats = index.stats()
        log.info(
            "vector index %s in %.2f s: %d vectors (%s)",
            how,
            _since(t0),
            len(index),
            "approximate IVF" if stats["ann"] else "exact",
        )

    # --- keeping the index in step -----------------------------------------------------------

    def add_live(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Index vectors of images that are still live (checked under the lock that deletes
        take too, so a concurrent delete can never leave its image behind)."""
        with self._lock:
            live = live_subset(self.services.db.conn, ids)
            keep = [n for n, i in enumerate(ids) if int(i) in live]
            if not keep:
                return
            id_arr = np.asarray([int(ids[n]) for n in keep], dtype=np.int64)
            vecs = np.asarray(vectors, dtype=np.float32)[keep]
            if self.index is None:
                self._pending.append(("add", id_arr, vecs))
            else:
                self.index.add(id_arr, vecs)
            self._dirty = True

    def remove(self, ids: Sequence[int]) -> None:
        id_arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        with self._lock:
            if self.index is None:
                self._pending.append(("remove", id_arr, None))
            else:
                self.index.remove(id_arr)
            self._dirty = True

    def wake_backfill(self) -> None:
        with self._lock:
            self._complete = False
            self._wake.set()

    def _store_and_index(self, ids: list[int], vectors: np.ndarray) -> None:
        """Index backfilled vectors, then commit them, then drop from the index the ones not
        committed (images deleted meanwhile, or all of them when the write fails).

        Index first: a search counts as unindexed what has no embedding in the database
        (`rank_counting`, without the index lock), so an image must never be committed but not
        yet indexed, counted by neither. The other way round (indexed, not committed yet) it is
        at worst counted and ranked both. Ranking an image before its row commits is harmless:
        the vector is final, and every result passes the visibility check in SQL. The database
        write holds no index lock; a delete racing it is undone by the second step (the write
        stores live images only) or by the delete's own `remove`."""
        assert self.model_name is not None
        id_arr = np.asarray(ids, dtype=np.int64)
        with self._lock:
            if self.index is None:
                self._pending.append(("add", id_arr, vectors))
            else:
                self.index.add(id_arr, vectors)
            self._dirty = True
        stored: set[int] = set()
        try:
            stored = set(store_embeddings(self.services.db.conn, self.model_name, ids, vectors))
        finally:
            dropped = [i for i in ids if i not in stored]
            if dropped:
                self.remove(dropped)

    def _mark_complete(self) -> None:
        """Nothing is left to backfill, unless an upload woke the backfill meanwhile or an
        image failed for a reason other than its picture (retried at the next pass). Counted
        without the lock: an upload stored without an embedding after the count sets `_wake`
        (`wake_backfill`) before this looks at it, under the lock."""
        (left,) = self.services.db.conn.execute(
            "SELECT COUNT(*) FROM images i WHERE i.deleted_at IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model = ?) "
            "AND i.id NOT IN (SELECT value FROM json_each(?))",
            (self.model_name, json.dumps(list(self._failed))),
        ).fetchone()
        with self._lock:
            if not self._wake.is_set():
                self._complete = left == 0

    # --- backfill ----------------------------------------------------------------------------

    def _backfill_loop(self) -> None:
        self._decoders = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="backfill")
        first = True
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._backfill_pass(first)
            except Exception:
                log.exception("backfill pass failed; it will run again on the next upload")
            first = False
            self._wake.wait()

    def _backfill_pass(self, first: bool) -> None:
        assert self.model_name is not None
        conn = self.services.db.conn
        total = count_missing(conn, self.model_name) - len(self._failed)
        if total <= 0:
            if first:
                log.info("embeddings: every live image has one (%d indexed)", len(self.index or ()))
            self._mark_complete()
            return
        log.info("backfill: %d images have no embedding yet; computing them", total)
        t0 = last_log = time.monotonic()
        done = logged = 0
        after = 0
        while not self._stop.is_set():
            rows = missing_embeddings(conn, self.model_name, after, BACKFILL_CHUNK)
            if not rows:
                break
            after = rows[-1][0]
            rows = [r for r in rows if r[0] not in self._failed]
            ids, vectors = self.embed_stored(rows)
            if ids:
                self._store_and_index(ids, vectors)
            done += len(ids)
            now = time.monotonic()
            if done - logged >= BACKFILL_LOG_EVERY or now - last_log >= BACKFILL_LOG_S:
                logged, last_log = done, now
                log.info(
                    "backfill: %d/%d images embedded (%.0f img/s)", done, total, done / _since(t0)
                )
        if not self._stop.is_set():
            self._mark_complete()
        elapsed = _since(t0)
        failed = f"; {len(self._failed)} could not be decoded" if self._failed else ""
        log.info(
            "backfill done: %d images embedded in %.1f s (%.0f img/s)%s",
            done,
            elapsed,
            done / elapsed,
            failed,
        )

    def _embedding_failed(self, image_id: int, exc: Exception) -> None:
        """A picture that cannot be read or decoded is remembered and not tried again. Anything
        else may be a bug here rather than in the picture: it is logged with its traceback and
        tried again at the next pass, so one bug cannot leave every image without an embedding
        until a restart. While the server stops, nothing is said: the next start tries again."""
        if self._stop.is_set():
            return
        if isinstance(exc, imaging.ImageRejected | BlobError):
            log.warning("image %d cannot be embedded: %s", image_id, _describe(exc))
            with self._failed_lock:
                self._failed = self._failed | {image_id}
        else:
            log.error(
                "image %d could not be embedded; the next backfill tries again",
                image_id,
                exc_info=exc,
            )

    def embed_stored(self, rows: Sequence[tuple[int, str]]) -> tuple[list[int], np.ndarray]:
        """Embed stored images from their originals, decoded exactly as at upload; images that
        cannot be read or decoded are logged and remembered, not retried (_embedding_failed)."""
        batcher, decoders = self.batcher, self._decoders
        assert batcher is not None
        config = self.services.config

        def one(row: tuple[int, str]) -> concurrent.futures.Future[np.ndarray] | None:
            image_id, blob = row
            try:
                decoded = decode_stored(config, self.services.blobs.get(blob))
                return batcher.submit(prepare_input(decoded.image))
            except Exception as exc:
                self._embedding_failed(image_id, exc)
                return None

        futures = [one(r) for r in rows] if decoders is None else list(decoders.map(one, rows))
        ids: list[int] = []
        vectors: list[np.ndarray] = []
        for (image_id, _), future in zip(rows, futures, strict=True):
            if future is None:
                continue
            try:
                vectors.append(future.result())
            except Exception as exc:
                self._embedding_failed(image_id, exc)
                continue
            ids.append(image_id)
        if not vectors:
            return [], np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        return ids, np.stack(vectors)

    # --- ranking -----------------------------------------------------------------------------

    def rank_counting(
        self,
        conn: sqlite3.Connection,
        viewer: int,
        query: np.ndarray,
        filters: SearchFilters,
        exclude: int | None,
        limit: int = MAX_RESULTS,
    ) -> tuple[list[tuple[int, float]], int]:
        """`rank`, and about how many images the viewer may see that pass the filters this
        search could not rank because the backfill has not embedded them yet (`Batch.unindexed`).

        Without that count a search during the backfill answered "143 in all", then 207, then
        399, for the same 400 images. It is a notice for people ("N images are still being
        indexed"), so it is counted first and ranked after, neither under the index lock:
        searches run side by side during the backfill, and uploads and deletes never wait for
        them. Ranked + unindexed therefore is not exact:

        * it can be too high by the images the backfill embedded between the count and the
          ranking (counted, then ranked too): a chunk or two (`BACKFILL_CHUNK`), or images
          deleted or made private in between;
        * it can be too low by uploads whose row and embedding committed but which are not
          indexed yet (`index_stored` runs right after the commit), and by an upload stored
          without an embedding while a finished backfill has not been woken yet: milliseconds,
          at most the uploads in flight.

        The backfill's own images are never missed: it indexes a chunk before committing it
        (`_store_and_index`). Images it cannot decode are left out: they never will be ranked.
        The count says how many images, not results: `limit` still caps what is ranked. Once
        the backfill is done this costs nothing."""
        missing = 0 if self._complete else self._count_unindexed(conn, viewer, filters, exclude)
        return self.rank(conn, viewer, query, filters, exclude, limit), missing

    def _count_unindexed(
        self,
        conn: sqlite3.Connection,
        viewer: int,
        filters: SearchFilters,
        exclude: int | None,
    ) -> int:
        if filters.impossible:
            return 0
        skip = [*self._failed, *([] if exclude is None else [exclude])]
        params: dict[str, object] = {
            "viewer": viewer,
            "model": self.model_name,
            "skip": json.dumps(skip),
        }
        (n,) = conn.execute(
            f"SELECT COUNT(*) FROM images i WHERE {repo.VISIBLE}{filters.sql(params)} "
            "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id "
            "AND e.model = :model) AND i.id NOT IN (SELECT value FROM json_each(:skip))",
            params,
        ).fetchone()
        return int(n)

    def rank(
        self,
        conn: sqlite3.Connection,
        viewer: int,
        query: np.ndarray,
        filters: SearchFilters,
        exclude: int | None,
        limit: int = MAX_RESULTS,
    ) -> list[tuple[int, float]]:
        """The best `limit` (id, cosine) the viewer may see that pass the filters."""
        index = self.index
        assert index is not None
        n = len(index)
        if filters.impossible or not n:
            return []
        selective_tags = bool(filters.tag_ids) and (
            filters.tag_counts[0] < TAG_POST_FILTER_SHARE * n
        )
        if not selective_tags:
            k = min(n, POST_FILTER_CANDIDATES)
            found = index.search(query, k, exclude=exclude)
            ok = filters.passing(conn, viewer, [i for i, _ in found])
            kept = [(i, s) for i, s in found if i in ok]
            # Every vector was a candidate; the query's own image (left out) counts only if it
            # is in the index: one searched by id before its backfill is not.
            exhaustive = len(found) < k or k >= n - (exclude is not None and exclude in index)
            if len(kept) >= limit or exhaustive:
                return kept[:limit]
        allowed = filters.allowed_ids(conn, viewer)
        return index.search(query, limit, allowed=allowed, exclude=exclude)


def _since(t0: float) -> float:
    return max(time.monotonic() - t0, 1e-9)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# --- wiring into the server ---------------------------------------------------------------------


def engine_of(services: Services) -> SimilarityEngine | None:
    return services.extras.get(_EXTRA)


def install(services: Services, weights: str | None, cache_dir: Path | None = None) -> None:
    """Register the engine, the upload analyser and the store/delete hooks (before serving)."""
    engine = SimilarityEngine(
        services,
        weights or None,
        cache_dir or cfg.default_cache_dir(),
        services.config.data_dir / INDEX_DIR,
    )
    services.extras[_EXTRA] = engine
    services.analysers.append(embed_upload)
    services.on_stored.append(index_stored)
    services.on_deleted.append(unindex_deleted)


def start(services: Services) -> None:
    engine = engine_of(services)
    if engine is not None:
        engine.start()


def stop(services: Services) -> None:
    engine = engine_of(services)
    if engine is not None:
        engine.stop()


async def _model_ready(services: Services) -> bool:
    """Whether uploads get an embedding now; waits (bounded) for a model that is loading, and
    when there is none they are stored without one: the backfill computes it later."""
    engine = engine_of(services)
    return engine is not None and await engine.wait_model(UPLOAD_WAIT_S)


def _start_embedding(
    services: Services, prepared: Prepared
) -> concurrent.futures.Future[np.ndarray]:
    """In the decoding worker: the model input from the same pixels, queued for the batcher."""
    engine = engine_of(services)
    assert engine is not None and engine.batcher is not None and prepared.decoded is not None
    return engine.batcher.submit(prepare_input(prepared.decoded.image))


def _keep_embedding(services: Services, prepared: Prepared, vector: np.ndarray) -> None:
    engine = engine_of(services)
    assert engine is not None and engine.model_name is not None
    prepared.embedding = (engine.model_name, vector_bytes(vector))


#: Upload analyser: the embedding of the already decoded picture, batched across uploads.
embed_upload = Analyser(ready=_model_ready, start=_start_embedding, finish=_keep_embedding)


def index_stored(
    services: Services, conn: sqlite3.Connection, image_id: int, new: repo.NewImage
) -> None:
    """After an upload's row committed: index its vector, or have the backfill make one."""
    engine = engine_of(services)
    if engine is None or engine.model_name is None:
        return
    vector = None
    if new.embedding is not None and new.embedding[0] == engine.model_name:
        vector = vector_from(new.embedding[1])
    elif new.copy_analysis_from is not None:
        _, vector, _ = visible_vector(conn, new.owner_id, image_id, engine.model_name)
    if vector is None:
        if engine.batcher is not None:
            engine.wake_backfill()
        return
    engine.add_live([image_id], vector[None, :])


async def unindex_deleted(services: Services, image_id: int) -> None:
    engine = engine_of(services)
    if engine is not None:
        await services.run(engine.remove, [image_id])


# --- the route ----------------------------------------------------------------------------------


def _unavailable(engine: SimilarityEngine | None) -> VitrineError:
    if engine is not None and engine.state == "loading":
        waited = time.monotonic() - engine.started_at
        return VitrineError(
            ErrorCode.UNAVAILABLE,
            f"The image model is still loading (for {waited:.0f} s so far); "
            "try again in a few seconds.",
        )
    # The reason (a path, an exception, a URL) is in the server's log, for whoever runs it;
    # any logged-in user can ask, so the answer names no server internals.
    if engine is not None and engine.batcher is not None:
        return VitrineError(
            ErrorCode.UNAVAILABLE,
            "Search by image is unavailable on this server: its vector index could not be "
            "built. The server's log says why.",
        )
    return VitrineError(
        ErrorCode.UNAVAILABLE,
        "Search by image is unavailable on this server: it has no image model. " + WEIGHTS_HINT,
    )


def _decode_query(data: bytes, services: Services) -> np.ndarray:
    return prepare_input(decode_upload(services.config, data).image)


@route(ImageSearch)
async def image_search(ctx: RequestContext, request: ImageSearch) -> Frames:
    if (request.data is None) == (request.image_id is None):
        raise VitrineError(
            ErrorCode.BAD_REQUEST,
            "Search by image needs either a photo or the id of a stored image (one of them).",
        )
    tags = checked_filter_tags(request.filters)
    services = ctx.services
    engine = engine_of(services)
    if engine is None or not engine.ready or engine.batcher is None:
        raise _unavailable(engine)
    if request.image_id is not None:
        exclude = request.image_id
        try:
            # The stored vector is read in the same executor trip as the ranking.
            return await _open_search(ctx, engine, request, tags, None, exclude)
        except _NotEmbedded as missing:  # not backfilled yet: embed it the way the backfill would
            ids, vectors = await services.run(engine.embed_stored, [(exclude, missing.blob)])
            if not ids:
                raise VitrineError(
                    ErrorCode.INTERNAL,
                    f"The stored picture of image {exclude} cannot be read to search with it; "
                    "the server operator should run `server.py --check`.",
                ) from None
            return await _open_search(ctx, engine, request, tags, vectors[0], exclude)
    data = request.data or b""
    if not data or len(data) > services.config.max_image_bytes:
        try:
            imaging.precheck(data[:1024], len(data), max_bytes=services.config.max_image_bytes)
        except imaging.ImageRejected as exc:
            raise rejection_error(exc) from None
    try:
        model_input = await services.run(_decode_query, data, services)
    except imaging.ImageRejected as exc:
        raise rejection_error(exc) from None
    vector = await engine.batcher.embed_async(model_input)
    return await _open_search(ctx, engine, request, tags, vector, None)


class _NotEmbedded(Exception):
    """The image to search by has no vector of the current model yet."""

    def __init__(self, blob: str) -> None:
        super().__init__(blob)
        self.blob = blob


async def _open_search(
    ctx: RequestContext,
    engine: SimilarityEngine,
    request: ImageSearch,
    tags: list[str],
    vector: np.ndarray | None,
    exclude: int | None,
) -> Frames:
    """Rank by `vector` (or by the stored vector of `exclude` when None) and send the first
    batch, all in one executor trip."""
    model = engine.model_name
    assert model is not None
    viewer = ctx.user.id
    asked = Recheck.of(tags, request.filters)

    def rank(conn: sqlite3.Connection, limit: int) -> Ranked:
        query = vector
        if query is None:
            assert exclude is not None
            visible, stored, blob = visible_vector(conn, viewer, exclude, model)
            if not visible:
                raise VitrineError(ErrorCode.NOT_FOUND, f"There is no image {exclude} you can see.")
            if stored is None:
                raise _NotEmbedded(blob)
            query = stored
        filters = asked.resolve(conn, rarest_first=True)
        ranked, unindexed[0] = engine.rank_counting(conn, viewer, query, filters, exclude, limit)
        return [i for i, _ in ranked], {i: round(float(s), 6) for i, s in ranked}, {}

    unindexed = [0]
    return await open_ranked(
        ctx,
        request.id,
        request.options,
        rank,
        asked,
        keep=MAX_RESULTS,
        unindexed=lambda: unindexed[0],
    )
