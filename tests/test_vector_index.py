"""Behaviour of repository.vector_index: exact answers, filters, deletes, persistence, threads,
and the recall of the approximate path against brute force."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from repository.vector_index import (
    IndexFormatError,
    StaleIndexError,
    VectorIndex,
)

DIM = 1280


def clustered(n: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Normalised Gaussian mixture: neighbours are meaningful, as with real embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM), dtype=np.float32)
    x = centers[rng.integers(0, clusters, n)]
    x += rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(0.8)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def brute(
    ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None
) -> list[int]:
    scores = vecs @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = np.lexsort((ids, -scores))
    return [int(ids[i]) for i in order[:k] if np.isfinite(scores[i])]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vecs = clustered(3000, seed=1)
    ids = np.random.default_rng(2).permutation(np.arange(10, 10 + 3 * 3000, 3)).astype(np.int64)
    return ids, vecs


@pytest.fixture(scope="module")
def exact_index(data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
    ids, vecs = data
    return VectorIndex.from_arrays(ids, vecs)


def test_exact_matches_brute_force(exact_index: VectorIndex, data) -> None:
    ids, vecs = data
    assert not exact_index.uses_ann and len(exact_index) == len(ids)
    for qi in (0, 17, 2999):
        q = vecs[qi]
        got = exact_index.search(q, 10)
        assert [i for i, _ in got] == brute(ids, vecs, q, 10)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)
        assert got[0] == (int(ids[qi]), pytest.approx(1.0, abs=1e-5))
        np.testing.assert_allclose(scores, np.sort(vecs @ q)[::-1][:10], rtol=1e-5)


def test_k_larger_than_index_and_zero(exact_index: VectorIndex, data) -> None:
    ids, vecs = data
    assert len(exact_index.search(vecs[0], len(ids) + 50)) == len(ids)
    assert exact_index.search(vecs[0], 0) == []


def test_exclude_drops_only_that_id(exact_index: VectorIndex, data) -> None:
    ids, vecs = data
    got = exact_index.search(vecs[5], 10, exclude=int(ids[5]))
    assert int(ids[5]) not in [i for i, _ in got]
    assert [i for i, _ in got] == brute(ids, vecs, vecs[5], 11)[1:]


@pytest.mark.parametrize("size", [0, 1, 5, 40, 2500])
def test_allowed_filters_before_cut(exact_index: VectorIndex, data, size: int) -> None:
    ids, vecs = data
    rng = np.random.default_rng(size)
    allowed = rng.choice(ids, size, replace=False)
    mask = np.isin(ids, allowed)
    q = vecs[7]
    got = exact_index.search(q, 10, allowed=allowed)
    assert len(got) == min(10, size)
    assert [i for i, _ in got] == brute(ids, vecs, q, 10, mask)


def test_allowed_accepts_sets_and_unknown_ids(exact_index: VectorIndex, data) -> None:
    ids, vecs = data
    allowed = {int(ids[3]), int(ids[4]), 10**12, 1}  # unknown ids are simply absent
    got = exact_index.search(vecs[3], 10, allowed=allowed, exclude=int(ids[3]))
    assert [i for i, _ in got] == [int(ids[4])]


def test_remove_never_returns_and_upsert_replaces(data) -> None:
    ids, vecs = data
    index = VectorIndex.from_arrays(ids[:500], vecs[:500])
    gone = ids[:100:3]
    index.remove(gone)
    index.remove(np.array([10**9], dtype=np.int64))  # unknown: ignored
    assert len(index) == 500 - len(gone)
    for qi in range(0, 100, 3):
        got = [i for i, _ in index.search(vecs[qi], 50)]
        assert not set(got) & set(gone.tolist())
    got = [i for i, _ in index.search(vecs[0], 10, allowed=gone)]
    assert got == []
    keep = ~np.isin(ids[:500], gone)
    assert [i for i, _ in index.search(vecs[1], 10)] == brute(
        ids[:500][keep], vecs[:500][keep], vecs[1], 10
    )
    # Upsert: a re-embedded image keeps one entry, with the new vector.
    index.add(ids[1:2], vecs[2:3])
    assert len(index) == 500 - len(gone)
    top = index.search(vecs[2], 2)
    assert {i for i, _ in top} == {int(ids[1]), int(ids[2])}


def test_rejects_bad_input() -> None:
    index = VectorIndex()
    with pytest.raises(ValueError):
        index.add(np.array([1, 2]), np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError):
        index.add(np.array([1, 1]), np.zeros((2, DIM), np.float32))
    with pytest.raises(ValueError):
        index.add(np.array([-1]), np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError):
        index.add(np.array([1]), np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(ValueError):
        index.search(np.zeros(10, np.float32), 5)
    assert index.search(np.zeros(DIM, np.float32), 5) == []


def test_save_load_round_trip_and_stale(tmp_path: Path, data) -> None:
    ids, vecs = data
    index = VectorIndex.from_arrays(ids, vecs)
    index.remove(ids[:10])
    index.save(tmp_path, generation="42:2990")
    assert VectorIndex.saved_generation(tmp_path) == "42:2990"
    loaded = VectorIndex.load(tmp_path, expected_generation="42:2990")
    assert len(loaded) == len(index) and loaded.generation == "42:2990"
    for qi in (11, 200):
        assert loaded.search(vecs[qi], 10) == index.search(vecs[qi], 10)
    with pytest.raises(StaleIndexError):
        VectorIndex.load(tmp_path, expected_generation="43:2991")
    # A second save replaces the first and leaves no stray files behind.
    index.save(tmp_path, generation="44:2990")
    assert VectorIndex.saved_generation(tmp_path) == "44:2990"
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("vectors-")]) == 1


def test_load_reports_damage(tmp_path: Path, data) -> None:
    ids, vecs = data
    assert VectorIndex.saved_generation(tmp_path / "missing") is None
    with pytest.raises(IndexFormatError):
        VectorIndex.load(tmp_path / "missing")
    VectorIndex.from_arrays(ids[:100], vecs[:100]).save(tmp_path, generation="g")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    vec_file = tmp_path / manifest["files"]["vectors"]
    vec_file.write_bytes(vec_file.read_bytes()[:-DIM])  # truncated by a crash or a full disk
    with pytest.raises(IndexFormatError):
        VectorIndex.load(tmp_path)


@pytest.fixture(scope="module")
def ann_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs = clustered(20_200, seed=5, clusters=200)
    ids = np.arange(1, 20_001, dtype=np.int64)
    return ids, vecs[:20_000], vecs[20_000:]


@pytest.fixture(scope="module")
def ann_index(ann_data) -> VectorIndex:
    ids, vecs, _ = ann_data
    index = VectorIndex.from_arrays(ids, vecs, exact_threshold=0, subset_exact_max=100)
    assert index.uses_ann
    return index


def recall(index: VectorIndex, ids, vecs, queries, allowed=None) -> float:
    mask = None if allowed is None else np.isin(ids, allowed)
    hits = 0
    for q in queries:
        truth = set(brute(ids, vecs, q, 10, mask))
        got = [i for i, _ in index.search(q, 10, allowed=allowed)]
        assert len(got) == 10
        hits += len(truth & set(got))
    return hits / (10 * len(queries))


def test_ann_recall_at_10(ann_index: VectorIndex, ann_data) -> None:
    ids, vecs, queries = ann_data
    assert recall(ann_index, ids, vecs, queries) >= 0.95


@pytest.mark.parametrize("share", [0.2, 0.6, 1.0])  # selector path, and post-filter path
def test_ann_filtered_recall(ann_index: VectorIndex, ann_data, share: float) -> None:
    ids, vecs, queries = ann_data
    allowed = np.random.default_rng(9).choice(ids, int(len(ids) * share), replace=False)
    assert recall(ann_index, ids, vecs, queries[:50], np.sort(allowed)) >= 0.95


def test_ann_filter_fill(ann_index: VectorIndex, ann_data) -> None:
    ids, _, queries = ann_data
    allowed = np.sort(np.random.default_rng(9).choice(ids, 4000, replace=False))
    tiny = allowed[:7]  # far below any list's share: must still return all 7
    got = ann_index.search(queries[0], 10, allowed=tiny)
    assert sorted(i for i, _ in got) == tiny.tolist()


def test_ann_long_lists_for_paging(ann_index: VectorIndex, ann_data) -> None:
    ids, vecs, queries = ann_data
    hits = 0
    for q in queries[:10]:
        got = [i for i, _ in ann_index.search(q, 300)]
        assert len(got) == 300
        hits += len(set(got) & set(brute(ids, vecs, q, 300)))
    # Deep lists reach into more IVF lists than a first page: the probe widens with k.
    assert hits / 3000 >= 0.93


def test_ann_scores_are_exact_and_exclude(ann_index: VectorIndex, ann_data) -> None:
    ids, vecs, _ = ann_data
    got = ann_index.search(vecs[3], 10, exclude=int(ids[3]))
    assert int(ids[3]) not in [i for i, _ in got] and len(got) == 10
    for i, s in got:
        assert s == pytest.approx(float(vecs[i - 1] @ vecs[3]), abs=1e-5)


def test_ann_remove_and_persist(tmp_path: Path, ann_data) -> None:
    ids, vecs, queries = ann_data
    index = VectorIndex.from_arrays(ids[:6000], vecs[:6000], exact_threshold=0)
    gone = ids[:6000:2]
    index.remove(gone)
    for qi in range(0, 40, 2):  # the removed vectors themselves are the best matches
        got = {i for i, _ in index.search(vecs[qi], 20)}
        assert not got & set(gone.tolist())
    index.save(tmp_path, generation="g1")
    loaded = VectorIndex.load(tmp_path, exact_threshold=0)
    assert loaded.uses_ann and len(loaded) == 3000
    for q in queries[:5]:
        assert loaded.search(q, 10) == index.search(q, 10)


def test_from_chunks_matches_from_arrays(ann_data) -> None:
    ids, vecs, queries = ann_data
    chunks = ((ids[i : i + 1000], vecs[i : i + 1000]) for i in range(0, 5000, 1000))
    built = VectorIndex.from_chunks(chunks, exact_threshold=3000)
    assert built.uses_ann and len(built) == 5000
    whole = VectorIndex.from_arrays(ids[:5000], vecs[:5000], exact_threshold=3000)
    for q in queries[:5]:
        assert built.search(q, 10) == whole.search(q, 10)


def test_switches_to_ann_past_threshold(ann_data) -> None:
    ids, vecs, queries = ann_data
    index = VectorIndex(exact_threshold=3000)
    for start in range(0, 4000, 500):  # ingest arrives in batches
        index.add(ids[start : start + 500], vecs[start : start + 500])
    assert index.uses_ann and len(index) == 4000
    got = [i for i, _ in index.search(vecs[3999], 1)]
    assert got == [int(ids[3999])]  # the last batch is searchable through the ANN
    index.remove(ids[:2600])
    assert not index.uses_ann  # shrank well below the threshold: back to exact
    assert [i for i, _ in index.search(queries[0], 10)] == brute(
        ids[2600:4000], vecs[2600:4000], queries[0], 10
    )


def test_concurrent_search_while_mutating(ann_data) -> None:
    ids, vecs, queries = ann_data
    # Starts on the ANN, and grows past twice its training size: a retrain happens mid-test.
    index = VectorIndex.from_arrays(ids[:2100], vecs[:2100], exact_threshold=2000)
    removed: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                snapshot = set(removed)  # ids removed before this search started
                got = index.search(queries[rng.integers(len(queries))], 10)
                assert len(got) == 10
                assert not {i for i, _ in got} & snapshot
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for start in range(2100, 5100, 300):
            index.add(ids[start : start + 300], vecs[start : start + 300])
            batch = ids[start - 2100 : start - 1950 : 2]
            index.remove(batch)
            removed.update(batch.tolist())
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(index) == 5100 - len(removed) and index.uses_ann


def test_ann_sparse_ids_and_forced_exact(ann_data) -> None:
    ids, vecs, queries = ann_data
    sparse = ids[:3000] * 1_000_003 + 7  # ids far apart: the filter cannot be a bitmap
    index = VectorIndex.from_arrays(sparse, vecs[:3000], exact_threshold=0, subset_exact_max=10)
    allowed = np.sort(np.random.default_rng(4).choice(sparse, 600, replace=False))
    assert recall(index, sparse, vecs[:3000], queries[:30], allowed) >= 0.95
    for q in queries[:5]:
        got = [i for i, _ in index.search(q, 10, exact=True)]
        assert got == brute(sparse, vecs[:3000], q, 10)


def test_the_stored_width_is_the_models_width() -> None:
    """The storage layer keeps its own constant rather than importing the model's module."""
    from models import embeddings as model
    from repository import vector_index as storage

    assert storage.EMBEDDING_DIM == model.EMBEDDING_DIM
