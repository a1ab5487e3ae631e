"""Embeddings for live images that have none of the current model, computed in the background.

Images uploaded while the server had no model (no weights, or one still loading past
``service.similarity.UPLOAD_WAIT_S``), and vectors of other weights or another input policy,
would otherwise stay out of search by image for good. The backfill finds them, decodes their
stored originals exactly as an upload does (same decoder, same draft scale: identical vectors),
and embeds them through the same batcher, logging progress every ``BACKFILL_LOG_EVERY`` images
and a final "backfill done" line with count and rate (ending "stopped: the next start goes on"
when the server stopped it midway). It runs at start and whenever an upload is stored without
an embedding while the model is ready.

It is not a thread of its own, as the colour backfill is (`service.colour_backfill`): it needs
the model and the index first, so the engine's thread (`service.similarity`) runs it once both
are ready, and the engine's stop ends it. What it shares with the engine is small: the model's
batcher, the index (it indexes a chunk before committing it, `_store_and_index`) and the stop
event. Searches read what it knows: which images it cannot decode (`failed`) and whether it
has reached every image (`complete`), to say how many they could not rank
(`service.image_search.rank_counting`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from models.embeddings import EMBEDDING_DIM, prepare_input
from repository.blobstore import BlobError
from repository.embeddings import (
    BACKFILL_CHUNK,
    count_missing,
    live_subset,
    missing_embeddings,
    store_embeddings,
)
from service.ingest import decode_stored
from util import images as imaging

if TYPE_CHECKING:
    from service.similarity import SimilarityEngine

log = logging.getLogger("vitrine.similarity")

#: Backfill logs its progress every this many images (and at least every BACKFILL_LOG_S).
BACKFILL_LOG_EVERY = 500
BACKFILL_LOG_S = 10.0


class EmbeddingBackfill:
    """The backfill of one engine: its passes, and what it learnt that searches need.

    Thread-safe: `wake` comes from uploads, `embed_stored` from searches by the id of an image
    not embedded yet, `failed` and `complete` are read by searches without a lock.
    """

    def __init__(self, engine: SimilarityEngine, stop: threading.Event) -> None:
        self.engine = engine
        self._stop = stop
        self._wake = threading.Event()
        #: Guards replacing `failed`, and `complete` with `_wake`.
        self._lock = threading.Lock()
        #: Images the backfill cannot decode: not retried. Replaced, never mutated (under
        #: `_lock`), so that searches read it without a lock.
        self.failed: frozenset[int] = frozenset()
        #: True once a backfill pass left no live image without an embedding (but the ones it
        #: cannot decode) and nothing woke it since; searches then skip counting `unindexed`.
        self.complete = False
        self._decoders: concurrent.futures.ThreadPoolExecutor | None = None

    def wake(self) -> None:
        """An upload was stored without an embedding while the model is ready: embed it."""
        with self._lock:
            self.complete = False
            self._wake.set()

    def interrupt(self) -> None:
        """Let a loop waiting for uploads see the (engine's) stop."""
        self._wake.set()

    def close(self) -> None:
        """Drop the decodes not started yet (after the engine's thread stopped)."""
        if self._decoders is not None:
            self._decoders.shutdown(wait=True, cancel_futures=True)

    def run(self) -> None:
        """Pass after pass until the engine stops: one now, then one per wake."""
        self._decoders = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="backfill")
        first = True
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._pass(first)
            except Exception:
                log.exception("backfill pass failed; it will run again on the next upload")
            first = False
            self._wake.wait()

    def _pass(self, first: bool) -> None:
        engine = self.engine
        assert engine.model_name is not None
        conn = engine.services.db.conn
        self._forget_deleted()
        total = count_missing(conn, engine.model_name, self.failed)
        if total <= 0:
            if first:
                log.info(
                    "embeddings: every live image has one (%d indexed)", len(engine.index or ())
                )
            self._mark_complete()
            return
        log.info("backfill: %d images have no embedding yet; computing them", total)
        t0 = last_log = time.monotonic()
        done = logged = 0
        after = 0
        finished = False
        while not self._stop.is_set():
            rows = missing_embeddings(conn, engine.model_name, after, BACKFILL_CHUNK)
            if not rows:
                finished = True
                break
            after = rows[-1][0]
            rows = [r for r in rows if r[0] not in self.failed]
            ids, vectors = self.embed_stored(rows)
            if ids:
                self._store_and_index(ids, vectors)
            done += len(ids)
            now = time.monotonic()
            if done - logged >= BACKFILL_LOG_EVERY or now - last_log >= BACKFILL_LOG_S:
                logged, last_log = done, now
                log.info(
                    "backfill: %d/%d images embedded (%.0f img/s)", done, total, done / since(t0)
                )
        if finished:
            self._mark_complete()
        elapsed = since(t0)
        failed = f"; {len(self.failed)} could not be decoded" if self.failed else ""
        # A stop (the server shutting down) ends the pass early: said as the colour backfill
        # says it, or the line would claim that every image has its embedding.
        stopped = "" if finished else " (stopped: the next start goes on)"
        log.info(
            "backfill done: %d images embedded in %.1f s (%.0f img/s)%s%s",
            done,
            elapsed,
            done / elapsed,
            failed,
            stopped,
        )

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
        engine = self.engine
        assert engine.model_name is not None
        engine.add(np.asarray(ids, dtype=np.int64), vectors)
        stored: set[int] = set()
        try:
            stored = set(store_embeddings(engine.services.db.conn, engine.model_name, ids, vectors))
        finally:
            dropped = [i for i in ids if i not in stored]
            if dropped:
                engine.remove(dropped)

    def _mark_complete(self) -> None:
        """Nothing is left to backfill, unless an upload woke the backfill meanwhile or an
        image failed for a reason other than its picture (retried at the next pass). Counted
        without the lock: an upload stored without an embedding after the count sets `_wake`
        (`wake`) before this looks at it, under the lock."""
        assert self.engine.model_name is not None
        left = count_missing(self.engine.services.db.conn, self.engine.model_name, self.failed)
        with self._lock:
            if not self._wake.is_set():
                self.complete = left == 0

    def _forget_deleted(self) -> None:
        """Drop from `failed` the images deleted since they failed: held until a restart, they
        cost memory for nothing and were counted in "backfill done: ... N could not be
        decoded". A deleted image never comes back, so it never needs its id again."""
        failed = self.failed
        if not failed:
            return
        gone = failed - live_subset(self.engine.services.db.conn, list(failed))
        if gone:
            with self._lock:
                self.failed = self.failed - gone

    def _embedding_failed(self, image_id: int, exc: Exception) -> None:
        """A picture that cannot be read or decoded is remembered and not tried again. Anything
        else may be a bug here rather than in the picture: it is logged with its traceback and
        tried again at the next pass, so one bug cannot leave every image without an embedding
        until a restart. While the server stops, nothing is said: the next start tries again."""
        if self._stop.is_set():
            return
        if isinstance(exc, imaging.ImageRejected | BlobError):
            log.warning("image %d cannot be embedded: %s", image_id, describe(exc))
            with self._lock:
                self.failed = self.failed | {image_id}
        else:
            log.error(
                "image %d could not be embedded; the next backfill tries again",
                image_id,
                exc_info=exc,
            )

    def embed_stored(self, rows: Sequence[tuple[int, str]]) -> tuple[list[int], np.ndarray]:
        """Embed stored images from their originals, decoded exactly as at upload; images that
        cannot be read or decoded are logged and remembered, not retried (_embedding_failed)."""
        batcher, decoders = self.engine.batcher, self._decoders
        assert batcher is not None
        services = self.engine.services
        config = services.config

        def one(row: tuple[int, str]) -> concurrent.futures.Future[np.ndarray] | None:
            image_id, blob = row
            try:
                decoded = decode_stored(config, services.blobs.get(blob))
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


def since(t0: float) -> float:
    """Seconds since `t0` (monotonic), never 0: log lines divide by it for a rate."""
    return max(time.monotonic() - t0, 1e-9)


def describe(exc: BaseException) -> str:
    """An exception in one short line, for a log line or the reason the model is unavailable."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
