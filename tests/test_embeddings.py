"""Embedding engine: the converted model must equal Keras, be cached, and batch correctly.

Real weights come from VITRINE_WEIGHTS (skipped without it). The one-off conversion costs tens
of seconds, so it happens once per session, in VITRINE_CACHE_DIR when set (reused across runs).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import embeddings
from models.batcher import EmbeddingBatcher
from models.embeddings import (
    EMBEDDING_DIM,
    INPUT_SHAPE,
    Embedder,
    cached_model_path,
    draft_size,
    prepare_input,
    preprocess,
    weights_key,
)

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "datasets" / "clothing-small"


@pytest.fixture(scope="session")
def weights() -> Path:
    value = os.environ.get("VITRINE_WEIGHTS")
    if not value:
        pytest.skip("VITRINE_WEIGHTS is not set: point it at the MobileNetV2 no-top .weights.h5")
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"VITRINE_WEIGHTS={value} does not exist")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    value = os.environ.get("VITRINE_CACHE_DIR")
    return Path(value) if value else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def embedder(weights: Path, cache_dir: Path) -> Embedder:
    return Embedder(weights, cache_dir)


def dataset_photos(part: str, label: str, n: int) -> list[Path]:
    if not DATASET.is_dir():
        pytest.skip(f"dataset not found at {DATASET}")
    return sorted((DATASET / part / label).glob("*.jpg"))[:n]


def load_inputs(paths: list[Path]) -> np.ndarray:
    return np.stack([prepare_input(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="session")
def photos() -> np.ndarray:
    """A few real photos of different garments, as model input."""
    paths = [dataset_photos("queries", c, 1)[0] for c in ("dress", "hat", "pants", "shoes")]
    return load_inputs(paths)


# --- model ----------------------------------------------------------------------------------


def test_preprocess_matches_keras(photos: np.ndarray) -> None:
    from keras.applications.mobilenet_v2 import preprocess_input

    expected = preprocess_input(photos.astype("float32"))
    np.testing.assert_allclose(preprocess(photos), expected, rtol=0, atol=1e-6)


def test_tflite_matches_keras_predict(
    embedder: Embedder, weights: Path, photos: np.ndarray
) -> None:
    model = embeddings.load_keras_model(weights)
    reference = np.asarray(model.predict(preprocess(photos), verbose=0))
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)

    cosines = np.sum(embedder.embed(photos) * reference, axis=1)

    assert cosines.min() >= 0.999, cosines


def test_rows_are_unit_length_float32(embedder: Embedder, photos: np.ndarray) -> None:
    vectors = embedder.embed(photos)

    assert vectors.shape == (len(photos), EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("label", "other"), [("shoes", "dress"), ("hat", "pants")])
def test_same_class_is_nearer_than_other_class(embedder: Embedder, label: str, other: str) -> None:
    query = embedder.embed(load_inputs(dataset_photos("queries", label, 2)))
    same = embedder.embed(load_inputs(dataset_photos("gallery", label, 5)))
    different = embedder.embed(load_inputs(dataset_photos("gallery", other, 5)))

    assert (query @ same.T).mean(axis=1).min() > (query @ different.T).mean(axis=1).max()


def test_any_batch_size_gives_the_same_vectors(
    embedder: Embedder, weights: Path, cache_dir: Path, photos: np.ndarray
) -> None:
    batch = np.concatenate([photos, photos[::-1]])[:7]  # 7 = chunks of 4 + 2 + 1

    together = Embedder(weights, cache_dir, max_chunk=4).embed(batch)
    one_by_one = np.concatenate([embedder.embed(batch[i : i + 1]) for i in range(len(batch))])

    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert embedder.embed(batch[:0]).shape == (0, EMBEDDING_DIM)


def test_concurrent_callers_get_their_own_results(embedder: Embedder, photos: np.ndarray) -> None:
    expected = embedder.embed(photos)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: embedder.embed(photos[i : i + 1]), [0, 1, 2, 3] * 4))

    for i, got in enumerate(results):
        np.testing.assert_allclose(got[0], expected[i % 4], atol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 224, 224, 3), np.float32),
        np.zeros((224, 224, 3), np.uint8),
        np.zeros((1, 200, 224, 3), np.uint8),
        np.zeros((1, 224, 224, 4), np.uint8),
    ],
)
def test_embed_rejects_malformed_batches(embedder: Embedder, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        embedder.embed(bad)


# --- cache ----------------------------------------------------------------------------------


def test_second_load_reuses_the_cached_model(
    embedder: Embedder, weights: Path, cache_dir: Path, photos: np.ndarray
) -> None:
    assert embedder.model_path == cached_model_path(cache_dir, weights_key(weights))
    mtime = embedder.model_path.stat().st_mtime_ns

    again = Embedder(weights, cache_dir)

    assert not again.converted
    assert again.model_name == embedder.model_name
    assert again.model_path.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.embed(photos), embedder.embed(photos), atol=1e-6)
    assert not list(cache_dir.glob("*.tmp")), "atomic write left a temporary file"


def test_warm_start_never_imports_tensorflow(embedder: Embedder, weights: Path) -> None:
    assert embedder.model_path is not None
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from models.embeddings import Embedder
        e = Embedder({str(weights)!r}, {str(embedder.model_path.parent)!r})
        v = e.embed(np.zeros((2, 224, 224, 3), np.uint8))
        assert v.shape == (2, 1280) and not e.converted
        heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_cache_key_follows_content_not_name(weights: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.weights.h5"
    shutil.copyfile(weights, copy)

    assert weights_key(copy) == weights_key(weights)
    data = copy.read_bytes()
    copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert weights_key(copy) != weights_key(weights)


@pytest.fixture
def stub_conversion(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Replaces the slow converter with the known-good flatbuffer, recording each call."""
    assert embedder.model_path is not None
    good = embedder.model_path.read_bytes()
    calls: list[object] = []

    def fake(weights: object) -> bytes:
        calls.append(weights)
        return good

    monkeypatch.setattr(embeddings, "convert_to_tflite", fake)
    yield calls


def test_unloadable_cache_file_is_converted_again(
    weights: Path, tmp_path: Path, photos: np.ndarray, stub_conversion: list[object]
) -> None:
    path = cached_model_path(tmp_path, weights_key(weights))
    path.write_bytes(b"not a flatbuffer")

    fresh = Embedder(weights, tmp_path)

    assert fresh.converted and stub_conversion == [weights]
    assert fresh.embed(photos).shape == (len(photos), EMBEDDING_DIM)
    assert path.read_bytes() != b"not a flatbuffer"


def test_without_cache_dir_the_model_lives_in_memory(
    weights: Path, photos: np.ndarray, stub_conversion: list[object]
) -> None:
    fresh = Embedder(weights, None)

    assert fresh.converted and fresh.model_path is None
    assert fresh.embed(photos[:1]).shape == (1, EMBEDDING_DIM)


def test_unwritable_cache_dir_still_serves(
    weights: Path, tmp_path: Path, photos: np.ndarray, stub_conversion: list[object]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")

    fresh = Embedder(weights, blocker / "cache")

    assert fresh.converted and fresh.model_path is None
    assert fresh.embed(photos[:1]).shape == (1, EMBEDDING_DIM)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights"):
        Embedder(tmp_path / "nope.weights.h5", tmp_path)


# --- prepare_input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("RGB", (400, 533)),
        ("RGBA", (533, 400)),
        ("L", (50, 50)),
        ("P", (1, 3000)),
        ("CMYK", (300, 200)),
    ],
)
def test_prepare_input_gives_model_input_for_any_image(mode: str, size: tuple[int, int]) -> None:
    out = prepare_input(Image.new(mode, size))

    assert out.shape == INPUT_SHAPE
    assert out.dtype == np.uint8


def test_prepare_input_keeps_aspect_ratio() -> None:
    # A centred circle must stay round: squashing a tall picture would make it an ellipse.
    image = Image.new("RGB", (300, 600), "white")
    from PIL import ImageDraw

    ImageDraw.Draw(image).ellipse((50, 200, 250, 400), fill="black")

    dark = prepare_input(image).mean(axis=2) < 128
    rows, cols = np.nonzero(dark)

    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 2


def test_transparent_pixels_become_white() -> None:
    out = prepare_input(Image.new("RGBA", (300, 300), (0, 0, 0, 0)))

    assert out.min() == 255


def test_draft_decode_still_covers_the_input_size() -> None:
    buf = io.BytesIO()
    Image.effect_noise((1600, 1200), 64).convert("RGB").save(buf, "JPEG")
    image = Image.open(io.BytesIO(buf.getvalue()))

    image.draft("RGB", draft_size(image.size))

    assert image.size[0] < 1600, "draft should have reduced the decode size"
    assert min(image.size) >= INPUT_SHAPE[0]


# --- batcher --------------------------------------------------------------------------------


def test_batcher_returns_the_same_vectors_as_embed(embedder: Embedder, photos: np.ndarray) -> None:
    expected = embedder.embed(photos)

    with EmbeddingBatcher(embedder, max_batch=3) as batcher, ThreadPoolExecutor(4) as pool:
        futures = list(pool.map(batcher.submit, [photos[i % 4] for i in range(12)]))
        results = [f.result(timeout=60) for f in futures]

    for i, got in enumerate(results):
        assert got.shape == (EMBEDDING_DIM,)
        np.testing.assert_allclose(got, expected[i % 4], atol=1e-5)


class GatedEmbedder:
    """Test double: blocks on the first batch until released, records batch sizes."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.sizes: list[int] = []
        self.fail = fail

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.started.set()
        self.release.wait(30)
        self.sizes.append(len(batch))
        if self.fail is not None:
            raise self.fail
        return np.repeat(batch[:, 0, 0, :1].astype(np.float32), EMBEDDING_DIM, axis=1)


def marked(value: int) -> np.ndarray:
    x = np.zeros(INPUT_SHAPE, np.uint8)
    x[0, 0, 0] = value
    return x


def test_batcher_groups_requests_that_queue_up_while_busy() -> None:
    fake = GatedEmbedder()
    with EmbeddingBatcher(fake, max_batch=4, max_wait=0) as batcher:
        first = batcher.submit(marked(1))
        assert fake.started.wait(30)
        waiting = [batcher.submit(marked(v)) for v in range(2, 8)]
        fake.release.set()
        results = [f.result(timeout=30) for f in [first, *waiting]]

    assert fake.sizes == [1, 4, 2]
    assert [int(r[0]) for r in results] == list(range(1, 8))


def test_batcher_propagates_errors_to_every_future_and_keeps_going() -> None:
    fake = GatedEmbedder(fail=RuntimeError("model exploded"))
    fake.release.set()
    with EmbeddingBatcher(fake, max_batch=8) as batcher:
        futures = [batcher.submit(marked(v)) for v in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(timeout=30)
        fake.fail = None
        assert int(batcher.submit(marked(9)).result(timeout=30)[0]) == 9


def test_batcher_fails_malformed_input_alone() -> None:
    fake = GatedEmbedder()
    fake.release.set()
    with EmbeddingBatcher(fake) as batcher:
        bad = batcher.submit(np.zeros((10, 10, 3), np.uint8))
        good = batcher.submit(marked(5))

        with pytest.raises(ValueError, match="expected uint8"):
            bad.result(timeout=30)
        assert int(good.result(timeout=30)[0]) == 5


def test_close_finishes_queued_work_then_refuses_more() -> None:
    fake = GatedEmbedder()
    batcher = EmbeddingBatcher(fake, max_batch=2, max_wait=0)
    futures = [batcher.submit(marked(v)) for v in range(5)]
    fake.release.set()

    batcher.close()

    assert [int(f.result(timeout=0)[0]) for f in futures] == list(range(5))
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(marked(1))
    batcher.close()  # idempotent


def test_batcher_skips_cancelled_requests() -> None:
    fake = GatedEmbedder()
    with EmbeddingBatcher(fake, max_batch=8, max_wait=0) as batcher:
        first = batcher.submit(marked(1))
        assert fake.started.wait(30)
        cancelled = batcher.submit(marked(2))
        kept = batcher.submit(marked(3))
        assert cancelled.cancel()
        fake.release.set()

        assert int(kept.result(timeout=30)[0]) == 3
        assert int(first.result(timeout=30)[0]) == 1
    assert fake.sizes == [1, 1]


def test_batcher_from_asyncio() -> None:
    fake = GatedEmbedder()
    fake.release.set()

    async def main(batcher: EmbeddingBatcher) -> list[np.ndarray]:
        return list(await asyncio.gather(*(batcher.embed_async(marked(v)) for v in range(4))))

    with EmbeddingBatcher(fake) as batcher:
        results = asyncio.run(main(batcher))

    assert [int(r[0]) for r in results] == [0, 1, 2, 3]
