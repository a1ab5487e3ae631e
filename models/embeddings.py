"""MobileNetV2 image embeddings, run as a float32 TFLite model in ai-edge-litert.

Why this shape:

* Keras ``model.predict`` manages ~22 img/s on two cores; the same weights converted once to a
  float32 TFLite flatbuffer and run by ai-edge-litert with XNNPACK reach ~250 img/s with the
  same output (cosine 1.000). So Keras is only the *source* of the model.
* Conversion needs TensorFlow, whose import alone takes seconds and hundreds of MB. It runs once
  per weights file and the result is cached on disk under the sha256 of that file; a server
  with a warm cache never imports TensorFlow or Keras and loads the model in milliseconds.
* Preprocessing (``x / 127.5 - 1``, Keras' ``mobilenet_v2.preprocess_input``) is applied in
  numpy rather than baked into the graph, so the model stays a plain conversion of the
  Keras model and the cached file is checkable against Keras directly.

Thread safety: a TFLite ``Interpreter`` holds its input and output buffers, so two threads
invoking it at once corrupt each other's results. ``Embedder.embed`` serialises callers with a
lock; for parallelism across requests use ``models.batcher.EmbeddingBatcher``, which batches
work from many threads onto one worker instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from util.files import write_atomically

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter

log = logging.getLogger(__name__)

INPUT_SIZE = 224
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
EMBEDDING_DIM = 1280
# Bump when anything that shapes the cached flatbuffer changes (converter options, graph
# wrapping), so stale files are never picked up under the same weights hash.
CACHE_FORMAT = "f32-v1"
# Names the input policy of ``prepare_input``; part of ``Embedder.model_name`` because vectors
# made under different policies must not be compared (stored ones need re-embedding).
PREPARE_POLICY = "centre-crop-v1"
# Key used when the weights come from Keras' own ImageNet download rather than a file.
KERAS_IMAGENET_KEY = "keras-imagenet"
_HASH_CHUNK = 1 << 20


def prepare_input(image: Image.Image) -> np.ndarray:
    """Turn a decoded image into the model's 224x224x3 uint8 RGB input.

    Centre crop: the shorter side is scaled to 224 and the central square kept. This keeps
    the aspect ratio and lets the object fill the frame, which is how ImageNet networks saw
    objects in training and evaluation; a plain resize distorts shapes, and letterboxing
    shrinks the object. On clothing-small it lifts P@10 from 0.56 to 0.62 with no tuning
    (bench/eval_quality.py, docs/embeddings.md). The price: for very wide or tall pictures
    the ends are cut off, which product photos (subject centred) tolerate.

    Decoders may call ``image.draft("RGB", draft_size(image.size))`` before loading a JPEG:
    it decodes at a reduced DCT scale that still covers what the crop needs, several times
    faster than a full decode.
    """
    return centre_crop(image, INPUT_SIZE)


def draft_size(size: tuple[int, int], target: int = INPUT_SIZE) -> tuple[int, int]:
    """The size to pass to ``Image.draft`` so that ``prepare_input`` still gets enough pixels.

    ``Image.draft`` keeps both sides at or above the size asked for, and the centre crop needs
    the shorter side at ``target``, so the request is simply a ``target`` square. It takes the
    image size so that a change of ``prepare_input`` policy never needs callers to change.
    """
    del size
    return target, target


def centre_crop(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """Scale the shorter side to ``size`` and keep the centre square; see ``prepare_input``."""
    rgb = _as_rgb(image)
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    cropped = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    return np.asarray(cropped, dtype=np.uint8)


def _as_rgb(image: Image.Image) -> Image.Image:
    """Flatten alpha onto white (how product PNGs are meant to be seen) and drop other modes."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(batch: np.ndarray) -> np.ndarray:
    """Keras ``mobilenet_v2.preprocess_input`` for uint8 RGB: ``x / 127.5 - 1`` in float32."""
    x = batch.astype(np.float32)
    x /= 127.5
    x -= 1.0
    return x


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows, so that a dot product is the cosine similarity search ranks by."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def weights_key(weights: str | os.PathLike[str] | None) -> str:
    """Content hash of the weights file: renaming or copying it keeps the cache valid."""
    if weights is None:
        return KERAS_IMAGENET_KEY
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_model_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    """Where the converted model for weights with content hash ``key`` lives."""
    return Path(cache_dir) / f"mobilenet_v2_{key}_{CACHE_FORMAT}.tflite"


def load_keras_model(weights: str | os.PathLike[str] | None):
    """Build the Keras feature extractor; imports Keras, so only conversion and tests call it."""
    import keras

    return keras.applications.MobileNetV2(
        weights="imagenet" if weights is None else os.fspath(weights),
        include_top=False,
        pooling="avg",
        input_shape=(INPUT_SIZE, INPUT_SIZE, 3),
    )


def convert_to_tflite(weights: str | os.PathLike[str] | None) -> bytes:
    """Convert the Keras model to a float32 flatbuffer (no quantisation: output must match)."""
    import tensorflow as tf

    model = load_keras_model(weights)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Keras' export prints every captured variable to stdout; keep the server log readable.
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = converter.convert()
    return bytes(flatbuffer)


def _write_model(path: Path, data: bytes) -> None:
    """Atomic, so a crash or a concurrent loader never sees half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


class Embedder:
    """MobileNetV2 1280-d L2-normalised embeddings from uint8 224x224 RGB batches.

    Batches are run in power-of-two chunks (up to ``max_chunk``), each on an interpreter
    allocated once for that size: resizing one interpreter per call would re-plan XNNPACK
    (10-150 ms). Bigger chunks gain nothing measurable on two cores (a 224px CNN is already
    compute-bound at batch 1; bench/bench_model.py) and each size costs an interpreter's
    memory, so the default is small.
    All methods are safe to call from several threads; calls are serialised by a lock.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None,
        cache_dir: str | os.PathLike[str] | None,
        *,
        num_threads: int = 2,
        max_chunk: int = 2,
        cache_named: str | None = None,
    ) -> None:
        """``cache_named`` is how the warning about an unusable cache names ``cache_dir``: the
        server passes the setting that gave it (``VITRINE_CACHE_DIR=/x``, ``--cache-dir /x``),
        so that the operator is told what to change; by default the path alone."""
        if max_chunk < 1 or max_chunk & (max_chunk - 1):
            raise ValueError(f"max_chunk must be a power of two, got {max_chunk}")
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"model weights not found: {weights}")
        self._num_threads = num_threads
        self._max_chunk = max_chunk
        self._lock = threading.Lock()
        self._interpreters: dict[int, Interpreter] = {}
        self.converted = False  # True when this instance had to run the converter
        self.model_path: Path | None = None
        self._model_content: bytes | None = None

        key = weights_key(weights)
        # Stored next to each vector: which weights and input policy made it, so the server can
        # tell which stored vectors are stale after either changes.
        self.model_name = f"mobilenet_v2_1.0_224/{key[:16]}/{PREPARE_POLICY}"
        if cache_dir is None:
            self._model_content = convert_to_tflite(weights)
            self.converted = True
        else:
            self.model_path = cached_model_path(cache_dir, key)
            if not self._cached_model_loads():
                log.info("converting %s to TFLite (once per weights file)", weights or key)
                flatbuffer = convert_to_tflite(weights)
                self.converted = True
                try:
                    _write_model(self.model_path, flatbuffer)
                except OSError as exc:  # an unusable cache costs start-up time, not service
                    log.warning(
                        "cannot use %s as the model cache (%s): search by image still works, "
                        "but the model is converted again at every start",
                        cache_named or cache_dir,
                        exc.strerror or exc,
                    )
                    self.model_path, self._model_content = None, flatbuffer
        self._interpreter(1)  # fail now, not on the first request, if the model is bad

    def _cached_model_loads(self) -> bool:
        """A cached file that the runtime cannot load is converted again, not trusted."""
        assert self.model_path is not None
        if not self.model_path.is_file():
            return False
        try:
            self._interpreters[1] = self._new_interpreter(1)
        except (ValueError, RuntimeError) as exc:
            log.warning("cached model %s is unusable (%s); converting again", self.model_path, exc)
            return False
        return True

    def _new_interpreter(self, batch: int) -> Interpreter:
        from ai_edge_litert.interpreter import Interpreter

        if self._model_content is not None:
            interpreter = Interpreter(
                model_content=self._model_content, num_threads=self._num_threads
            )
        else:
            interpreter = Interpreter(
                model_path=os.fspath(self.model_path), num_threads=self._num_threads
            )
        (inp,) = interpreter.get_input_details()
        (out,) = interpreter.get_output_details()
        if tuple(inp["shape"][1:]) != INPUT_SHAPE or out["shape"][-1] != EMBEDDING_DIM:
            raise ValueError(f"unexpected model signature {inp['shape']} -> {out['shape']}")
        if inp["shape"][0] != batch:
            interpreter.resize_tensor_input(inp["index"], [batch, *INPUT_SHAPE])
        interpreter.allocate_tensors()
        return interpreter

    def _interpreter(self, batch: int) -> Interpreter:
        interpreter = self._interpreters.get(batch)
        if interpreter is None:
            interpreter = self._interpreters[batch] = self._new_interpreter(batch)
        return interpreter

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed ``(n, 224, 224, 3)`` uint8 RGB into ``(n, 1280)`` float32 unit rows."""
        if batch.dtype != np.uint8 or batch.shape[1:] != INPUT_SHAPE:
            raise ValueError(f"expected uint8 (n, *{INPUT_SHAPE}), got {batch.dtype} {batch.shape}")
        n = batch.shape[0]
        out = np.empty((n, EMBEDDING_DIM), dtype=np.float32)
        with self._lock:
            start = 0
            while start < n:
                size = min(self._max_chunk, 1 << ((n - start).bit_length() - 1))
                interpreter = self._interpreter(size)
                inp = interpreter.get_input_details()[0]["index"]
                res = interpreter.get_output_details()[0]["index"]
                interpreter.set_tensor(inp, preprocess(batch[start : start + size]))
                interpreter.invoke()
                out[start : start + size] = interpreter.get_tensor(res)
                start += size
        return l2_normalise(out)
