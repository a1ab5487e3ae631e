"""Search by image's engine: the model's life in the server, the vector index kept in step with
uploads and deletes, and the upload hooks that feed them.

One `SimilarityEngine` per server, in ``Services.extras["similarity"]``. The route that searches
with it is `service.image_search`; the backfill its thread runs is `service.embedding_backfill`.

* ``start`` runs after the server announces that it listens: one background thread loads the
  model (``models.embeddings.Embedder``: a cached TFLite file, converted from the Keras
  weights once per cache directory), then opens the index, then backfills. Nothing of that
  delays start-up or blocks the event loop, and every failure (no weights file, Keras' own
  download failing offline, a broken cache) is caught: the server goes on serving everything
  else and ImageSearch answers UNAVAILABLE with a sentence fitting the cause (`model_failure`):
  how to provide weights when Keras' download failed, to fix the file given when it is the
  file's fault, and that the server's log says why otherwise.
* **Uploads while the model loads** wait for it, at most ``UPLOAD_WAIT_S`` (a warm start takes
  well under a second; the first conversion ~10-20 s). Past that, or when the model cannot be
  loaded at all, the image is stored without an embedding and the backfill computes it once a
  model is there: later in this run, or at the next start with weights. Waiting (bounded)
  keeps the common case simple (a bulk upload right after start gets its embeddings in the
  same transaction as its rows) without ever letting a missing model stall uploads.

The index (``repository.vector_index.VectorIndex``) holds the live images' vectors of the
current model. It is loaded from ``<data dir>/vector-index`` when its generation token still
matches the database (model name and a BLAKE2b digest of the live embedded ids,
`repository.embeddings.index_generation`: embeddings are never updated in place), else rebuilt
from the embeddings table; the time is logged. A saved file that fails its checksum, or that the
disk cannot read, is logged as a WARNING naming it, and rebuilt over. It is
kept in step after each commit: add after an upload's row commits, remove after a delete, both
under one lock with a liveness check in SQL, so a delete racing an add never leaves a deleted
image in the index. Changes that arrive while the index is being built are queued and applied
when it is published. It is saved on a clean shutdown when it changed.

The SQL for the embeddings table is in ``repository.embeddings``, which uses
``repository.images``' visibility rule and write lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import socket
import sqlite3
import threading
import time
import urllib.error
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from models.embeddings import prepare_input
from repository import images as repo
from repository.embeddings import (
    index_generation,
    iter_embeddings,
    live_subset,
    vector_bytes,
    vector_from,
    visible_vector,
)
from service.context import Services
from service.embedding_backfill import EmbeddingBackfill, describe, since
from service.ingest import Analyser, Prepared
from util import config as cfg

if TYPE_CHECKING:
    from models.batcher import EmbeddingBatcher
    from repository.vector_index import VectorIndex

log = logging.getLogger("vitrine.similarity")
# faiss announces at INFO which CPU build it tried; that is noise in a server log.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

#: Longest an upload waits for the model to finish loading before it is stored without one.
UPLOAD_WAIT_S = 30.0
INDEX_DIR = "vector-index"
_EXTRA = "similarity"
#: Why a save of the vector index fails when the disk, not this code, is at fault: a full
#: disk or quota, a read-only or forbidden directory, a file where the directory should be.
DISK_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EISDIR,
    }
)
_UNSAVED = "the vector index could not be saved; the next start rebuilds it"
#: Exceptions that mean a bug in this code rather than a missing or bad model file.
PROGRAMMING_ERRORS = (AttributeError, AssertionError, NameError, TypeError, KeyError, IndexError)

WEIGHTS_HINT = (
    "Start the server with VITRINE_WEIGHTS=/path/to/mobilenet_v2_1.0_224_imagenet_no_top"
    ".weights.h5 (or server.py --weights PATH), or give it internet access so Keras can "
    "download the ImageNet weights; images uploaded meanwhile get their embeddings then."
)


#: Whose a failed model load is, for the advice given with it (`SimilarityEngine.model_failure`,
#: set where the failure is caught; `service.image_search` words its answer by it): "" while
#: nothing failed, "download" when no weights were given and Keras' download of them failed,
#: "cached download" when no weights were given and the file Keras downloaded earlier (into
#: its cache) cannot be loaded, "weights file" when the file given is missing, unreadable or
#: not these weights, "other" for anything else.
ModelFailure = Literal["", "download", "cached download", "weights file", "other"]


class FailureAdvice(NamedTuple):
    """What to say of a failed model load, to each of the two who read about it. Any logged-in
    user can ask for a search by image, so `answer` names no server internals (no path, no
    exception) and points at the log; the log is for whoever runs the server, so `log_hint`,
    which follows the failure's own description there, may name a file (``{path}``)."""

    answer: str
    log_hint: str


_UNAVAILABLE = "Search by image is unavailable on this server: "
#: The advice for each `ModelFailure`, side by side so that the log and the client never
#: disagree about whose failure it was. Each wording exists because another one sent an
#: operator the wrong way (session 22): advice to set VITRINE_WEIGHTS given to one who had set
#: it, advice to fetch weights given for a broken TensorFlow, and "the log says why" for a
#: partial download Keras trusts at every start.
FAILURE_ADVICE: dict[ModelFailure, FailureAdvice] = {
    # No weights were given and Keras' download of them failed (offline).
    "download": FailureAdvice(
        answer=_UNAVAILABLE + "it has no image model. " + WEIGHTS_HINT,
        log_hint=WEIGHTS_HINT,
    ),
    # The operator gave weights: which file, and why it failed, is for the log.
    "weights file": FailureAdvice(
        answer=_UNAVAILABLE + "it was started with weights for its image model "
        "(VITRINE_WEIGHTS=... or --weights), but they could not be loaded. The server's log "
        "says why; whoever runs the server should fix or replace that file and restart it.",
        log_hint="The weights file given with VITRINE_WEIGHTS (or --weights) could not be "
        "loaded: it must be an existing, readable mobilenet_v2_1.0_224_imagenet_no_top"
        ".weights.h5; fix or replace it and restart the server. Images uploaded meanwhile get "
        "their embeddings then.",
    ),
    # Internet access would not help: Keras trusts the partial file it kept.
    "cached download": FailureAdvice(
        answer=_UNAVAILABLE + "the model weights Keras downloaded earlier are damaged. The "
        "server's log names the file to delete (the next start downloads it again); whoever "
        "runs the server can instead start it with "
        "VITRINE_WEIGHTS=/path/to/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5.",
        log_hint="The ImageNet weights Keras downloaded earlier, {path}, are damaged (a "
        "download cut short leaves a partial file, which Keras does not check): delete that "
        "file so that the next start downloads them again, or start the server with "
        "VITRINE_WEIGHTS=/path/to/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5 (or "
        "server.py --weights PATH). Images uploaded meanwhile get their embeddings then.",
    ),
    # Neither the file's fault nor the download's (TensorFlow's import, memory, a bug), with
    # weights given or not: advice to replace the file or to set VITRINE_WEIGHTS would send
    # the operator the wrong way.
    "other": FailureAdvice(
        answer=_UNAVAILABLE + "the image model failed to load. The server's log says why.",
        log_hint="The image model failed to load; the error above says why. Once that is "
        "fixed, restart the server: images uploaded meanwhile get their embeddings then.",
    ),
}


#: What Keras' `get_file` says of a download that failed: it raises a bare Exception with this
#: text from inside its `except URLError` (so the URLError is only the chained context).
_KERAS_FETCH_FAILURE = "URL fetch failure on "
#: Raised by the download itself when no weights were given: urllib's refusals (URLError,
#: HTTPError, ContentTooShortError), a connection that broke or timed out mid-transfer,
#: a name that does not resolve, an HTTP reply that is not one.
_NETWORK_ERRORS = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    HTTPException,
)


def _download_failed(exc: BaseException) -> bool:
    """Whether `exc` is Keras' download of the ImageNet weights failing. Offline (a proxy on a
    closed port, as measured) `get_file` raises `Exception("URL fetch failure on https://...:
    None -- [Errno 111] Connection refused")` from inside its `except URLError`; a transfer
    cut short raises the network error itself, out of `urlretrieve`. Only the exception and
    its direct cause or context are looked at (whoever loads the model may wrap it once):
    until session 22's second review the whole chain was, and a BrokenPipeError or a timeout
    anywhere in it, however far from a download, asked the operator for VITRINE_WEIGHTS."""
    for link in (exc, exc.__cause__ or exc.__context__):
        if link is None:
            continue
        if str(link).startswith(_KERAS_FETCH_FAILURE) and isinstance(
            link.__context__, urllib.error.URLError
        ):
            return True
        if isinstance(link, _NETWORK_ERRORS):
            return True
    return False


#: The file Keras' `MobileNetV2(weights="imagenet", include_top=False)` downloads into its cache.
KERAS_WEIGHTS_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def cached_weights_file() -> str | None:
    """The ImageNet weights Keras downloaded earlier, if it has: under `$KERAS_HOME`, else
    `~/.keras`, or `/tmp/.keras` where Keras falls back when that is not writable. Found
    without importing Keras (a failed TensorFlow import is one of the failures classified)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    for root in (home, "/tmp/.keras"):
        path = os.path.join(root, "models", KERAS_WEIGHTS_NAME)
        if os.path.isfile(path):
            return os.path.realpath(path)
    return None


def damaged_cached_weights() -> str | None:
    """The cached download (`cached_weights_file`) if h5py cannot open it: a file cut short.
    Opened here rather than judged by the failure, which names no file ("truncated file") and
    may as well be the TFLite conversion's (a full /tmp) or a shape check's, about a download
    that is whole and must not be deleted on our word."""
    path = cached_weights_file()
    if path is None:
        return None
    import h5py  # Keras' own dependency; only on this rare path

    try:
        h5py.File(path, "r").close()
    except OSError:
        return path
    return None


def model_failure(exc: BaseException, weights: str | None) -> ModelFailure:
    """Whose fault a failed model load is, so that the advice fits it. With no weights given,
    only a failed download is met with "set VITRINE_WEIGHTS or give the server internet
    access" (`_download_failed`); a broken TensorFlow, a MemoryError or a bug got that advice
    until session 22's review, which sent the operator to fetch weights that would not have
    helped. Also with no weights given, an OSError or ValueError (h5py's, Keras') while the
    cached download cannot be opened (`damaged_cached_weights`) is that file's: Keras writes it
    straight to its final name with no digest to check MobileNetV2's against, so a download
    killed midway leaves a partial file it trusts at every later start (h5py: "truncated
    file", naming no file).
    Deleting it, or setting VITRINE_WEIGHTS, is the fix; "the log says why" was all the
    operator got until session 22's second review. With weights given, only what is raised
    about the weights file itself is blamed on it, as measured with a missing path, random
    bytes, an empty file, a truncated copy and an HDF5 file of other weights:
    FileNotFoundError (`Embedder`'s own check), the OSError h5py raises for a file it cannot
    open ("file signature not found", "truncated file"; PermissionError too), and the
    ValueError Keras raises when the layers' weights are not in it. An OSError naming another
    file (the model cache), an ImportError of TensorFlow, a MemoryError or a bug is not the
    file's."""
    if weights is None:
        if _download_failed(exc):
            return "download"
        if (
            isinstance(exc, (OSError, ValueError))
            and not isinstance(exc, UnicodeError)
            and damaged_cached_weights() is not None
        ):
            return "cached download"
        return "other"
    if isinstance(exc, OSError):
        named = exc.filename
        if named is None or os.path.realpath(os.fspath(named)) == os.path.realpath(weights):
            return "weights file"
        return "other"
    if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError):
        return "weights file"
    return "other"


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
        cache_named: str | None = None,
    ) -> None:
        self.services = services
        self.weights = weights
        self.cache_dir = cache_dir
        #: How the model's warning about an unusable cache names it (the setting that gave it).
        self.cache_named = cache_named
        self.index_dir = index_dir
        self.state = "loading"
        self.reason = ""
        self.model_failure: ModelFailure = ""
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
        self._stop = threading.Event()
        self.backfill = EmbeddingBackfill(self, self._stop)
        self._thread: threading.Thread | None = None

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
        self.backfill.interrupt()
        # A model loading from the cache settles within a second: wait for it, so that its
        # native code is never running while the interpreter shuts down (a stop right after
        # start then crashed the process with SIGSEGV in CI). A stuck download is left behind.
        if self._thread is not None and self.model_settled.wait(timeout):
            self._thread.join(timeout)
        self.backfill.close()
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
            except OSError as exc:
                # Nothing is lost (the embeddings are in the database), but the next start
                # pays for a rebuild. A full, read-only or forbidden disk is the operator's to
                # fix and needs one line naming the file; anything else may be a bug here.
                if exc.errno not in DISK_ERRNOS:
                    log.exception(_UNSAVED)
                    return
                log.warning(
                    "the vector index could not be saved to %s (%s); the next start rebuilds it",
                    exc.filename or self.index_dir,
                    exc.strerror or describe(exc),
                )
                return
            except Exception:
                log.exception(_UNSAVED)
                return
            self._dirty = False
            log.info("vector index saved: %d vectors in %.2f s", len(self.index), since(t0))

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
            self.reason = describe(exc)
            self.model_failure = model_failure(exc, self.weights)
            self.state = "unavailable"
            hint = FAILURE_ADVICE[self.model_failure].log_hint
            if self.model_failure == "cached download":
                damaged = damaged_cached_weights() or "(in Keras' cache, since removed)"
                hint = hint.format(path=damaged)
            # A bad weights file or no network for Keras' download need one line and the
            # hint; anything else (a broken TensorFlow, a bug) gets its traceback as well.
            log.warning(
                "search by image is unavailable: %s. %s",
                self.reason,
                hint,
                exc_info=isinstance(exc, PROGRAMMING_ERRORS) or self.model_failure == "other",
            )
            self._settle_model()
            return
        self._settle_model()
        if self._stop.is_set():
            return  # stopping: no index to build
        try:
            self._open_index()
        except Exception as exc:
            self.reason = f"the vector index could not be built ({describe(exc)})"
            self.state = "unavailable"
            log.exception("search by image is unavailable: the vector index could not be built")
            return
        self.state = "ready"
        self.backfill.run()

    def _load_model(self) -> None:
        from models.batcher import EmbeddingBatcher
        from models.embeddings import Embedder

        t0 = time.monotonic()
        source = self.weights or "Keras' ImageNet download"
        log.info("loading the image model (weights: %s, cache: %s)", source, self.cache_dir)
        embedder = Embedder(self.weights or None, self.cache_dir, cache_named=self.cache_named)
        self.model_name = embedder.model_name
        self.batcher = EmbeddingBatcher(embedder, max_batch=16)
        log.info(
            "image model ready in %.2f s%s: %s",
            since(t0),
            " (converted once; cached for later starts)" if embedder.converted else "",
            self.model_name,
        )

    def _open_index(self) -> None:
        from repository.vector_index import (
            DamagedIndexError,
            IndexFormatError,
            StaleIndexError,
            VectorIndex,
        )

        assert self.model_name is not None
        conn = self.services.db.conn
        t0 = time.monotonic()
        generation = index_generation(conn, self.model_name)
        try:
            index = VectorIndex.load(self.index_dir, expected_generation=generation)
            how = "loaded from disk"
        except (StaleIndexError, IndexFormatError) as exc:
            # A stale or absent index is routine; a file whose bytes changed after the save, or
            # that the disk cannot read (UnreadableIndexError, a DamagedIndexError), is the
            # disk's damage, which the operator should hear of (the rebuild hides it).
            level = logging.WARNING if isinstance(exc, DamagedIndexError) else logging.INFO
            log.log(level, "vector index: rebuilding from the database (%s)", exc)
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
            since(t0),
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
            self._add_locked(id_arr, vecs)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index vectors without the liveness check of `add_live`: for the backfill, which
        indexes a chunk before committing it and then removes what its commit did not store
        (`EmbeddingBackfill._store_and_index`)."""
        with self._lock:
            self._add_locked(ids, vectors)

    def _add_locked(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is None:
            self._pending.append(("add", ids, vectors))
        else:
            self.index.add(ids, vectors)
        self._dirty = True

    def remove(self, ids: Sequence[int]) -> None:
        id_arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        with self._lock:
            if self.index is None:
                self._pending.append(("remove", id_arr, None))
            else:
                self.index.remove(id_arr)
            self._dirty = True


# --- wiring into the server ---------------------------------------------------------------------


def engine_of(services: Services) -> SimilarityEngine | None:
    return services.extras.get(_EXTRA)


def install(services: Services, weights: str | None, cache_dir: Path | None = None) -> None:
    """Register the engine, the upload analyser and the store/delete hooks (before serving).

    An unusable cache is found, and said once, by the model when it loads, naming the setting
    that gave the path (`config.cache_dir_setting`): only it knows whether the folder is needed
    at all (a read-only one already holding the model is only read)."""
    cache = cache_dir or cfg.default_cache_dir()
    setting = services.config.cache_dir_setting
    engine = SimilarityEngine(
        services,
        weights or None,
        cache,
        services.config.data_dir / INDEX_DIR,
        cache_named=None if setting is None else setting.given(cache),
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


# --- upload hooks ------------------------------------------------------------------------------


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
            engine.backfill.wake()
        return
    engine.add_live([image_id], vector[None, :])


async def unindex_deleted(services: Services, image_id: int) -> None:
    engine = engine_of(services)
    if engine is not None:
        await services.run(engine.remove, [image_id])
