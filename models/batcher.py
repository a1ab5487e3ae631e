"""Cross-request batching of embedding work onto one worker thread.

Why: uploads arrive one file at a time from many connections, and the model is not thread-safe.
Rather than every handler taking the embedder's lock in turn, handlers submit single inputs
and get a future; one worker thread owns the embedder and runs whatever has queued up
(up to ``max_batch``, waiting at most ``max_wait`` seconds for stragglers) as one batch. A bulk
upload therefore gets batched across files without the caller doing anything, and a lone
request waits only a few milliseconds extra.

From asyncio, ``await batcher.embed_async(x)`` (or ``asyncio.wrap_future(batcher.submit(x))``)
keeps the event loop free while the model runs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from models.embeddings import INPUT_SHAPE

log = logging.getLogger(__name__)


class BatchEmbedder(Protocol):
    """What the batcher needs from a model: ``models.embeddings.Embedder`` or a test double."""

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


_Request = tuple[np.ndarray, "Future[np.ndarray]"]
_STOP = object()


class EmbeddingBatcher:
    """One worker thread around an embedder; ``submit`` from any thread, ``close`` once."""

    def __init__(
        self,
        embedder: BatchEmbedder,
        *,
        max_batch: int = 16,
        max_wait: float = 0.005,
        name: str = "embedding-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._embedder = embedder
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, model_input: np.ndarray) -> Future[np.ndarray]:
        """Queue one ``(224, 224, 3)`` uint8 input; the future yields its ``(1280,)`` vector.

        A malformed input fails its own future at once instead of poisoning a whole batch.
        Submitting after ``close`` raises ``RuntimeError``, like an executor does.
        """
        future: Future[np.ndarray] = Future()
        if model_input.dtype != np.uint8 or model_input.shape != INPUT_SHAPE:
            future.set_exception(
                ValueError(
                    f"expected uint8 {INPUT_SHAPE}, got {model_input.dtype} {model_input.shape}"
                )
            )
            return future
        with self._close_lock:  # no request may slip in behind the stop marker
            if self._closed or not self._thread.is_alive():
                raise RuntimeError("EmbeddingBatcher is closed")
            self._queue.put((model_input, future))
        return future

    async def embed_async(self, model_input: np.ndarray) -> np.ndarray:
        """``submit`` for coroutines: awaits the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(model_input))

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish what is already queued, and join the worker."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> EmbeddingBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """Gather up to max_batch requests, waiting at most max_wait after the first one."""
        batch = [first]
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch, stopping = self._collect(item)  # type: ignore[arg-type]
            # A caller may have cancelled while queued; claiming the rest makes them
            # uncancellable from here on, so results always land somewhere.
            live = [(x, f) for x, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                vectors = self._embedder.embed(np.stack([x for x, _ in live]))
            except BaseException as exc:  # every waiter must hear about the failure
                for _, future in live:
                    future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                log.debug("embedding batch of %d failed: %r", len(live), exc)
                continue
            for i, (_, future) in enumerate(live):
                future.set_result(vectors[i].copy())  # own row: don't pin the whole batch
