"""In-memory vector index for search by image: exact while small, IVF-SQ8 (faiss) when large.

Design notes (measurements and reasoning in docs/vector-index.md):

* One float32 copy of every vector lives in fixed-size blocks owned by this module. It answers
  exact searches, exact searches over a filtered subset, and the exact re-ranking of ANN
  candidates, so scores are always true cosines and there is never a second float copy.
* Above ``exact_threshold`` vectors, a faiss ``IndexIVFScalarQuantizer`` (8 bits per dimension,
  a quarter of the float size) proposes candidates; they are re-scored exactly from the blocks.
  Exact search over 100k x 1280 floats reads ~500 MB per query (~24 ms of a core here), half
  the 50 ms budget of a first batch; the ANN answers in ~3 ms with recall@10 1.0 there.
* Filters come in as the set of allowed image ids (the caller runs the SQL). Small sets are
  searched exactly (cheaper than any index); when most ids pass, a deeper unfiltered ANN search
  is post-filtered; selective ones go through a faiss ID selector with a wider probe. Any ANN
  path that finds fewer than k falls back to exact over the allowed rows.
* Concurrency: searches take a shared lock, mutations an exclusive one held only for the
  brief in-memory update. Slow work (training a new ANN) happens under a separate
  mutation lock, so searches keep running (on the exact path) while it trains.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import faiss
import numpy as np
import numpy.typing as npt

from util.files import TMP_SUFFIX, fsync_directory

__all__ = [
    "DEFAULT_EXACT_THRESHOLD",
    "EMBEDDING_DIM",
    "DamagedIndexError",
    "IndexFormatError",
    "StaleIndexError",
    "UnreadableIndexError",
    "VectorIndex",
]

#: The width of a stored vector: the image model's output (models.embeddings, which the
#: storage layer does not import; tests/test_vector_index.py checks that the two agree).
EMBEDDING_DIM = 1280
# Largest size answered by exact search; measured in bench/bench_ann.py (see docs/vector-index.md).
DEFAULT_EXACT_THRESHOLD = 20_000
# Allowed sets up to this size are searched exactly: gathering their rows costs less than probing
# an IVF whose lists would hold only a few allowed ids each.
DEFAULT_SUBSET_EXACT_MAX = 8_192
_BLOCK_ROWS = 8_192  # 40 MB per block: growth never copies the whole matrix nor wastes much.
_GATHER_ROWS = 1_024  # gather chunk that stays in cache while it is dotted with the query
# k-means sample per list: below faiss's advice of 39, but IVF lists only need to be roughly
# balanced, and training time is what start-up waits for.
_TRAIN_PER_LIST = 32
# Filters passing at least this share of ids are applied after an unfiltered, deeper ANN search.
_POST_FILTER_SHARE = 0.25
_SCAN_BUDGET = 16_384  # SQ8 codes scanned per query by default (see _default_nprobe)
_FORMAT = 1
_MANIFEST = "manifest.json"
#: Each saved file's digest, recorded in the manifest and checked by every load: a damaged file
#: of the right size would otherwise load and answer wrong (a permuted ids file makes another
#: image an exact match). SHA-256, not BLAKE2b: with SHA-NI it hashed a 500 MB buffer here in
#: 0.40 s against BLAKE2b's 0.50 s (OpenSSL 3.0 has no SIMD BLAKE2b); see docs/vector-index.md.
_CHECKSUM = "sha256"

IdArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
Allowed = npt.ArrayLike | Iterable[int]


class StaleIndexError(RuntimeError):
    """The saved index was built from a different database state than the caller expects."""


class IndexFormatError(RuntimeError):
    """The saved index is missing, truncated or of another format; rebuild it from the database."""


class DamagedIndexError(IndexFormatError):
    """A saved file's bytes differ from the checksum its manifest recorded: the disk changed it
    after the save. Rebuild, as for any unusable index; ``path`` names the file for the log.
    Unlike a missing or stale index, which is routine, this is the disk's doing, which the
    operator should hear of (a WARNING at start, a problem for `--check`)."""

    def __init__(
        self, path: Path, problem: str = "does not match the checksum in its manifest (damaged)"
    ) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path


class UnreadableIndexError(DamagedIndexError):
    """A saved file the disk could not read (EIO: a failing disk, most likely). Damage as much
    as a changed byte is, and told as such: as a plain IndexFormatError it was an INFO line at
    start and a remark `--check` exited 0 with. ``error`` is the OSError."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(path, f"cannot be read: {error.strerror or error}")
        self.error = error


#: What the kernel returns for a block the disk cannot read (EIO) or a filesystem it found
#: corrupt (EBADMSG, EUCLEAN where defined): the only read errors that are the disk's damage.
_DISK_ERRNOS = frozenset(
    code
    for code in (errno.EIO, getattr(errno, "EBADMSG", None), getattr(errno, "EUCLEAN", None))
    if code is not None
)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Raise an error reading the saved file ``path`` as what it means for the index. A file
    that is not there (FileNotFoundError, NotADirectoryError) is let through: the callers turn
    it into the IndexFormatError of an index that is missing or incomplete, which is no damage.
    Only a disk's read error (`_DISK_ERRNOS`) is an UnreadableIndexError: until session 22's
    second review every OSError was, so a file the server may not read (EACCES: an index saved
    by a server run as another user, whose files are 0600), or EMFILE, ENOMEM, EISDIR, was
    told as "a failing disk: check the disk". Those are a plain IndexFormatError saying what
    happened; the index is rebuilt as for any unusable one."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        if exc.errno in _DISK_ERRNOS:
            raise UnreadableIndexError(path, exc) from exc
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise IndexFormatError(
                f"{path} cannot be read by the server ({reason}): whoever runs the server "
                "should check the owner of the files in its data directory (an index saved by "
                "a server run as another user is readable by that user only)"
            ) from exc
        raise IndexFormatError(f"{path} cannot be read: {reason}") from exc


class _RWLock:
    """Many readers or one writer; a waiting writer stops new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _nlist_for(n: int) -> int:
    """About sqrt(n) lists, a power of two. Training k-means costs n_train * nlist * dim, i.e.
    grows with nlist squared: 4096 lists at 1M took over ten minutes on 2 cores, 1024 a minute."""
    target = math.sqrt(max(n, 1))
    nlist = int(min(8192, max(16, 2 ** round(math.log2(target)))))
    return max(1, min(nlist, n // _TRAIN_PER_LIST))  # tiny forced-ANN indexes (tests)


def _default_nprobe(nlist: int, ntotal: int) -> int:
    """Probe a quarter of the lists, but scan at most ~16k codes (~3 ms on one core).

    Measured (docs/vector-index.md): small indexes need a large share of their lists for
    recall@10 >= 0.95 (20k: 16 of 128 lists for 0.999, 8 give 0.88), large ones a small share
    (1M: 16 of 1024 lists give 0.98) because their lists are purer; the cap keeps 1M under the
    5 ms target. A quarter, not the measured eighth, leaves margin for real embeddings.
    """
    per_list = max(1.0, ntotal / max(nlist, 1))
    cap = math.ceil(_SCAN_BUDGET / per_list)
    return int(min(nlist, max(8, min(nlist // 4, cap))))


class _Ann:
    """A faiss IVF-SQ8 over image ids, used only to propose candidates for exact re-ranking."""

    def __init__(self, index: Any, nprobe: int | None) -> None:
        self.index = index
        self.ivf = faiss.extract_index_ivf(index)
        self.fixed_nprobe = nprobe  # None: follow the list sizes as the index grows
        quantizer = faiss.downcast_index(self.ivf.quantizer)
        self.hnsw_quantizer = isinstance(quantizer, faiss.IndexHNSW)

    @classmethod
    def train(cls, sample: FloatArray, nlist: int, nprobe: int | None, seed: int) -> _Ann:
        dim = sample.shape[1]
        # An HNSW coarse quantizer avoids scanning thousands of centroids per query and per add.
        quantizer = "_HNSW32" if nlist >= 1024 else ""
        index = faiss.index_factory(dim, f"IVF{nlist}{quantizer},SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # more iterations barely move recall, and cost start-up time
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = _TRAIN_PER_LIST
        ivf.cp.min_points_per_centroid = _TRAIN_PER_LIST // 2  # chosen, so no warning on stderr
        index.train(np.ascontiguousarray(sample))
        return cls(index, nprobe)

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    @property
    def nprobe(self) -> int:
        if self.fixed_nprobe is not None:
            return self.fixed_nprobe
        return _default_nprobe(self.nlist, int(self.index.ntotal))

    def add(self, ids: IdArray, vectors: FloatArray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(ids))

    def remove(self, ids: IdArray) -> None:
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids)))

    def search(self, query: FloatArray, k: int, nprobe: int, selector: Any = None) -> IdArray:
        nprobe = int(min(self.nlist, max(1, nprobe)))
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        if self.hnsw_quantizer:  # the HNSW must look at least as wide as the probe
            params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
        _, found = self.index.search(query.reshape(1, -1), k, params=params)
        ids = found[0]
        return ids[ids >= 0]


class VectorIndex:
    """Cosine top-k over L2-normalised embeddings keyed by int64 image ids.

    Thread-safe: any number of ``search`` calls may run while ``add``/``remove`` happen.
    ``add`` upserts (an id added twice keeps its latest vector); ``remove`` is final.
    """

    def __init__(
        self,
        dim: int = EMBEDDING_DIM,
        *,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        subset_exact_max: int = DEFAULT_SUBSET_EXACT_MAX,
        nlist: int | None = None,
        nprobe: int | None = None,
        rerank: int = 8,
        seed: int = 1234,
    ) -> None:
        """``exact_threshold``: sizes up to this use exact search (0 forces the ANN, e.g. in
        tests). ``nlist``/``nprobe`` override the IVF shape chosen from the size. ``rerank``:
        how many ANN candidates per wanted result are re-scored exactly."""
        if dim <= 0 or rerank < 1 or exact_threshold < 0 or subset_exact_max < 0:
            raise ValueError("dim and rerank must be positive, thresholds non-negative")
        self.dim = dim
        self.exact_threshold = exact_threshold
        self.subset_exact_max = subset_exact_max
        self._nlist_override = nlist
        self._nprobe_override = nprobe
        self.rerank = rerank
        self._seed = seed
        self.generation: str | None = None  # set by load()/save(): the caller's database token
        self._rw = _RWLock()
        self._mutate = threading.RLock()  # serialises writers, including long ANN builds
        self._blocks: list[FloatArray] = []
        self._row_ids: IdArray = np.empty(0, dtype=np.int64)  # image id of each row
        self._sorted_ids: IdArray = np.empty(0, dtype=np.int64)  # for id -> row lookups
        self._sorted_rows: IdArray = np.empty(0, dtype=np.int64)
        self._n = 0
        self._ann: _Ann | None = None
        self._ann_trained_at = 0  # size when the current ANN was trained, to know when to retrain

    # ----------------------------------------------------------------------------- building

    @classmethod
    def from_arrays(cls, ids: npt.ArrayLike, vectors: npt.ArrayLike, **kwargs: Any) -> VectorIndex:
        """Build in one go from arrays already in memory (tests, benchmarks): one copy, one ANN
        training. The server's start-up rebuild streams from the database (`from_chunks`)."""
        index = cls(**kwargs)
        index.add(ids, vectors)
        return index

    @classmethod
    def from_chunks(
        cls, chunks: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]], **kwargs: Any
    ) -> VectorIndex:
        """Build from (ids, vectors) chunks, e.g. SQLite blobs read 10k rows at a time: peak
        memory stays one chunk above the index, and the ANN is trained once, at the end."""
        index = cls(**kwargs)
        with index._mutate:
            for ids, vectors in chunks:
                index._add(ids, vectors, train=False)
            if index._needs_rebuild():
                index._rebuild_ann()
        return index

    def __len__(self) -> int:
        return self._n

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, int | np.integer):
            return False
        with self._rw.read():
            _, hit = self._lookup(np.asarray([image_id], dtype=np.int64))
        return bool(hit[0])

    @property
    def uses_ann(self) -> bool:
        """Whether unfiltered searches currently go through the approximate index."""
        return self._ann is not None

    def stats(self) -> dict[str, Any]:
        """Sizes for logs and benchmarks."""
        ann = self._ann
        return {
            "count": self._n,
            "ann": ann is not None,
            "nlist": ann.nlist if ann else None,
            "nprobe": ann.nprobe if ann else None,
            "vector_bytes": len(self._blocks) * _BLOCK_ROWS * self.dim * 4,
            "ann_code_bytes": self._n * self.dim if ann else 0,
        }

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Insert or replace vectors. Vectors must already be L2-normalised (score = dot)."""
        self._add(ids, vectors, train=True)

    def _add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike, train: bool) -> None:
        ids_arr = self._check_ids(ids)
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(ids_arr), self.dim):
            raise ValueError(f"vectors must have shape ({len(ids_arr)}, {self.dim})")
        if len(np.unique(ids_arr)) != len(ids_arr):
            raise ValueError("ids within one add() must be unique")
        if not np.isfinite(vecs.sum(axis=1)).all():  # row sums: no n x dim temporary
            raise ValueError("vectors must be finite")
        if not len(ids_arr):
            return
        with self._mutate:
            with self._rw.write():
                self._remove_locked(ids_arr)
                self._append_locked(ids_arr, vecs)
                rebuild = self._needs_rebuild()
                if rebuild or not train:
                    # Drop the outdated ANN now: searches go exact until the new one is swapped
                    # in, which is slower but never misses a vector, and frees its memory first.
                    self._ann = None
                elif self._ann is not None:
                    self._ann.add(ids_arr, vecs)
            if rebuild and train:
                self._rebuild_ann()

    def remove(self, ids: npt.ArrayLike) -> None:
        """Forget ids for good (unknown ids are ignored): they never come back from search."""
        ids_arr = np.unique(self._check_ids(ids))
        if not len(ids_arr):
            return
        with self._mutate, self._rw.write():
            self._remove_locked(ids_arr)
            if self._ann is not None and self._n <= self.exact_threshold // 2:
                self._ann = None  # back to exact: free the codes
                self._ann_trained_at = 0

    def _check_ids(self, ids: npt.ArrayLike) -> IdArray:
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError("ids must be a 1-d array of integers")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and arr.min() < 0:
            raise ValueError("ids must be non-negative (database row ids)")
        return arr

    def _needs_rebuild(self) -> bool:
        if self._n <= self.exact_threshold:
            return False
        # Retrain when the set doubled since training: lists get long, the scan budget then
        # covers a smaller share of them, and recall would slowly drop.
        return self._ann is None or self._n > 2 * self._ann_trained_at

    def _rebuild_ann(self) -> None:
        """Train a new IVF on the current vectors. Holds only the mutation lock (searches keep
        running); holding it also means the vectors cannot change underneath."""
        n = self._n
        if n <= self.exact_threshold:
            return
        nlist = self._nlist_override or _nlist_for(n)
        rng = np.random.default_rng(self._seed)
        n_train = min(n, max(_TRAIN_PER_LIST * nlist, 10_000))
        rows = np.sort(rng.choice(n, n_train, replace=False))
        ann = _Ann.train(self._gather(rows), nlist, self._nprobe_override, self._seed)
        for start in range(0, n, _BLOCK_ROWS):
            stop = min(n, start + _BLOCK_ROWS)
            block = self._blocks[start // _BLOCK_ROWS]
            ann.add(self._row_ids[start:stop], block[: stop - start])
        with self._rw.write():
            self._ann = ann
            self._ann_trained_at = n

    def _append_locked(self, ids: IdArray, vecs: FloatArray) -> None:
        for rows, first in self._new_rows_locked(len(ids)):
            rows[:] = vecs[first : first + len(rows)]
        self._rows_added_locked(ids)

    def _read_rows_locked(self, ids: IdArray, f: BinaryIO, path: Path, expected: str) -> None:
        """Append ``ids`` with the vectors of the `.npy` file ``f`` (at ``path``), read
        straight into the blocks and hashed as they are read: the digest is of the bytes loaded.
        Until session 22's second review a first pass hashed the files and a second loaded
        them, so a failing disk could return other bytes the second time (643 MB at 100k
        leave the page cache easily), and the second read cost time (docs/vector-index.md).
        No mapping either, where a page the disk cannot serve is a SIGBUS that kills the
        process (a read raises OSError, and the index is rebuilt), and no whole copy of the
        file in memory (512 MB at 100k) beside the blocks. The file is read to its end:
        bytes beyond the rows the header promises were ignored until that review; now they
        are hashed (a save writes none, so they fail the checksum) and refused."""
        digest = hashlib.new(_CHECKSUM)
        header = _HashingReader(f, digest)
        problem = ""
        try:
            version = np.lib.format.read_magic(header)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                problem = f"the saved vectors are in .npy format {version}"
            else:
                shape, fortran_order, dtype = read_header(header)
                if shape != (len(ids), self.dim) or fortran_order or dtype != np.dtype("<f4"):
                    problem = "saved index files do not match their manifest"
        except ValueError as exc:  # not a .npy header at all
            problem = f"the saved vectors file has no .npy header ({exc})"
        if not problem:
            for rows, _ in self._new_rows_locked(len(ids)):
                view = memoryview(rows).cast("B")
                while view and (read := f.readinto(view[:_VERIFY_CHUNK])):
                    digest.update(view[:read])
                    view = view[read:]
                if view:
                    problem = "the saved vectors file is shorter than its header says"
                    break
        # The rest: nothing, for a file as saved. Hashed before the verdict, so that a header
        # the disk changed is called damage (as the checksum says) rather than another format.
        extra = _hash_rest(f, digest)
        if digest.hexdigest() != expected:
            raise DamagedIndexError(path)
        if problem:
            raise IndexFormatError(problem)
        if extra:
            raise IndexFormatError(f"{path} has {extra} bytes beyond the rows its header says")
        self._rows_added_locked(ids)

    def _new_rows_locked(self, count: int) -> Iterator[tuple[FloatArray, int]]:
        """Where rows n to n+count go: each block's slice, with the index of its first row among
        the new ones (blocks are allocated as needed). `_rows_added_locked` then counts them."""
        start, stop = self._n, self._n + count
        while len(self._blocks) * _BLOCK_ROWS < stop:
            self._blocks.append(np.empty((_BLOCK_ROWS, self.dim), dtype=np.float32))
        pos = start
        while pos < stop:
            b, off = divmod(pos, _BLOCK_ROWS)
            take = min(_BLOCK_ROWS - off, stop - pos)
            yield self._blocks[b][off : off + take], pos - start
            pos += take

    def _rows_added_locked(self, ids: IdArray) -> None:
        self._row_ids = np.concatenate([self._row_ids[: self._n], ids])
        self._n += len(ids)
        self._reindex_locked()

    def _remove_locked(self, ids: IdArray) -> None:
        rows = self._rows_of(ids)
        if not len(rows):
            return
        if self._ann is not None:
            self._ann.remove(self._row_ids[rows])
        n_new = self._n - len(rows)
        holes = rows[rows < n_new]  # freed rows that must be refilled from the tail
        tail = np.setdiff1d(np.arange(n_new, self._n), rows, assume_unique=True)
        for dst, src in zip(holes.tolist(), tail.tolist(), strict=True):
            self._blocks[dst // _BLOCK_ROWS][dst % _BLOCK_ROWS] = self._blocks[src // _BLOCK_ROWS][
                src % _BLOCK_ROWS
            ]
        self._row_ids[holes] = self._row_ids[tail]
        self._row_ids = self._row_ids[:n_new].copy()
        self._n = n_new
        del self._blocks[-(-n_new // _BLOCK_ROWS) :]  # release emptied blocks
        self._reindex_locked()

    def _reindex_locked(self) -> None:
        # Stable sort is a merge on the usual nearly sorted data (SQLite ids only grow).
        order = np.argsort(self._row_ids, kind="stable")
        self._sorted_rows = order.astype(np.int64, copy=False)
        self._sorted_ids = self._row_ids[order]

    # ----------------------------------------------------------------------------- reading

    def _lookup(self, ids: IdArray) -> tuple[IdArray, npt.NDArray[np.bool_]]:
        """Positions in the sorted id table, and which of ``ids`` are present at all."""
        if not len(ids) or not self._n:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos[pos >= self._n] = 0
        return pos, self._sorted_ids[pos] == ids

    def _rows_of(self, ids: IdArray) -> IdArray:
        """Rows (sorted) of those ids that are present; others are silently dropped."""
        pos, hit = self._lookup(ids)
        return np.sort(self._sorted_rows[pos[hit]])

    def _gather(self, rows: IdArray) -> FloatArray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        blocks = rows // _BLOCK_ROWS
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        for seg in np.split(np.arange(len(rows)), bounds):
            if len(seg):
                block = self._blocks[int(blocks[seg[0]])]
                np.take(block, rows[seg] % _BLOCK_ROWS, axis=0, out=out[seg[0] : seg[-1] + 1])
        return out

    def _score_all(self, query: FloatArray) -> npt.NDArray[np.float32]:
        scores = np.empty(self._n, dtype=np.float32)
        for b, block in enumerate(self._blocks):
            start = b * _BLOCK_ROWS
            stop = min(self._n, start + _BLOCK_ROWS)
            if stop > start:
                _dots(block, stop - start, query, scores[start:stop])
        return scores

    def _score_rows(self, rows: IdArray, query: FloatArray) -> npt.NDArray[np.float32]:
        """Exact scores of chosen rows, gathered in cache-sized chunks (no big temporary)."""
        scores = np.empty(len(rows), dtype=np.float32)
        buf = np.empty((min(len(rows), _GATHER_ROWS), self.dim), dtype=np.float32)
        blocks = rows // _BLOCK_ROWS
        start = 0
        while start < len(rows):
            b = int(blocks[start])
            stop = min(len(rows), start + _GATHER_ROWS)
            stop = start + int(np.searchsorted(blocks[start:stop], b, side="right"))
            chunk = buf[: stop - start]
            # mode="clip" skips numpy's bounds-check buffering; rows are valid by construction.
            np.take(self._blocks[b], rows[start:stop] % _BLOCK_ROWS, axis=0, out=chunk, mode="clip")
            _dots(chunk, stop - start, query, scores[start:stop])
            start = stop
        return scores

    def _top(
        self, rows: IdArray, scores: npt.NDArray[np.float32], k: int
    ) -> list[tuple[int, float]]:
        if len(rows) > k:
            part = np.argpartition(-scores, k - 1)[:k]
            rows, scores = rows[part], scores[part]
        ids = self._row_ids[rows]
        order = np.lexsort((ids, -scores))  # best first, ties by id so results are stable
        return [(int(ids[i]), float(scores[i])) for i in order]

    @staticmethod
    def as_allowed(allowed: Allowed) -> IdArray:
        """Normalise a filter to a sorted unique int64 array; callers may pre-compute it once
        per query and reuse it across batches."""
        if isinstance(allowed, np.ndarray):
            arr = allowed
        elif isinstance(allowed, set | frozenset | range | list | tuple):
            arr = np.fromiter(allowed, dtype=np.int64, count=len(allowed))
        else:
            arr = np.fromiter(allowed, dtype=np.int64)  # type: ignore[arg-type]
        arr = np.asarray(arr).reshape(-1).astype(np.int64, copy=False)
        if len(arr) > 1 and not (arr[1:] > arr[:-1]).all():
            arr = np.unique(arr)
        return arr

    def search(
        self,
        query: npt.ArrayLike,
        k: int,
        allowed: Allowed | None = None,
        exclude: int | None = None,
        *,
        exact: bool = False,
    ) -> list[tuple[int, float]]:
        """Top-k (id, cosine) best first, among ``allowed`` ids if given, never ``exclude``.

        ``allowed`` is best passed as a sorted np.int64 array (any iterable of ints works).
        Filters apply before the cut to k: when at least k allowed ids are indexed, k come back.
        ``exact=True`` bypasses the ANN: the ground truth that its recall is measured against.
        """
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"query must have {self.dim} values")
        if k <= 0:
            return []
        allowed_ids = None if allowed is None else self.as_allowed(allowed)
        with self._rw.read():
            if not self._n:
                return []
            if allowed_ids is None:
                return self._search_all(q, k, exclude, exact)
            return self._search_allowed(q, k, allowed_ids, exclude, exact)

    def _search_all(
        self, q: FloatArray, k: int, exclude: int | None, exact: bool
    ) -> list[tuple[int, float]]:
        ann = None if exact else self._ann
        if ann is None:
            scores = self._score_all(q)
            rows = np.arange(self._n, dtype=np.int64)
            if exclude is not None:
                hit = self._rows_of(np.array([exclude], dtype=np.int64))
                scores[hit] = -np.inf
                keep = scores > -np.inf
                rows, scores = rows[keep], scores[keep]
            return self._top(rows, scores, k)
        want = k + (exclude is not None)
        found = ann.search(q, self._depth(want), self._probe(ann, want, 1.0))
        if exclude is not None:
            found = found[found != exclude]
        rows = self._rows_of(found)
        if len(rows) < min(k, self._n - (exclude is not None)):
            # The probe found too few (tiny or oddly shaped lists): exact is always right.
            excl = self._rows_of(np.array([] if exclude is None else [exclude], dtype=np.int64))
            rows = np.setdiff1d(np.arange(self._n, dtype=np.int64), excl, assume_unique=True)
        return self._top(rows, self._score_rows(rows, q), k)

    def _search_allowed(
        self, q: FloatArray, k: int, allowed: IdArray, exclude: int | None, exact: bool
    ) -> list[tuple[int, float]]:
        if exclude is not None:
            allowed = allowed[allowed != exclude]
        m = len(allowed)  # an upper bound: the caller's ids are normally all indexed
        if not m:
            return []
        ann = None if exact else self._ann
        depth = self._depth(k)
        if ann is None or m <= max(self.subset_exact_max, depth):
            return self._exact_subset(allowed, q, k)
        share = min(1.0, m / self._n)
        nprobe = self._probe(ann, k, share)
        if share >= _POST_FILTER_SHARE:
            # Most ids pass (e.g. only visibility): search unfiltered a little deeper and drop
            # the rest. The scan keeps its SIMD fast path, which a per-id selector loses.
            found = ann.search(q, math.ceil(depth / share), nprobe)
            pos = np.searchsorted(allowed, found)
            pos[pos >= m] = 0
            found = found[allowed[pos] == found]
            if len(found) >= depth // 2:
                rows = self._rows_of(found)
                return self._top(rows, self._score_rows(rows, q), k)
        # Selective filter: faiss skips ids outside the set while it scans the probed lists.
        max_id = min(int(allowed[-1]), int(self._sorted_ids[-1]))
        if max_id < 64 * self._n + 65_536:  # dense ids (SQLite rowids): a small bitmap
            mask = np.zeros(max_id + 1, dtype=bool)
            mask[allowed[: np.searchsorted(allowed, max_id, side="right")]] = True
            selector = faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
        else:
            selector = faiss.IDSelectorBatch(allowed)
        found_rows = self._rows_of(ann.search(q, depth, nprobe, selector))
        if len(found_rows) < min(k, m):
            # Too few allowed ids in the probed lists (or ``allowed`` names unindexed ids):
            # the exact subset scan is always right.
            return self._exact_subset(allowed, q, k)
        return self._top(found_rows, self._score_rows(found_rows, q), k)

    @staticmethod
    def _probe(ann: _Ann, k: int, share: float) -> int:
        """Lists to probe. Long result lists reach into more lists, and the allowed top-k sit
        deeper in the overall ranking when fewer ids pass: widen for both. Measured: k=300 on
        20k clustered vectors has recall 0.91 at the k=10 probe, 0.96 with this widening
        (1.5x), 0.98 with twice it; at 100k, k=640 then costs ~2x a k=10 search, not 6x."""
        return math.ceil(ann.nprobe * max(1.0, k / 10) ** 0.125 / math.sqrt(share))

    def _depth(self, k: int) -> int:
        """ANN candidates to re-score: ``rerank`` times k for a first page (8-bit codes misorder
        close neighbours), but only 2k for the long lists the server pages through (k=640
        would otherwise re-score 5k vectors, 9.5 ms instead of ~4 at 100k, for no recall)."""
        return k + max(k, (self.rerank - 1) * min(k, 10))

    def _exact_subset(self, allowed: IdArray, q: FloatArray, k: int) -> list[tuple[int, float]]:
        rows = self._rows_of(allowed)
        if not len(rows):
            return []
        # A streaming pass over everything beats gathering once a good share is allowed.
        scores = self._score_all(q)[rows] if 4 * len(rows) > self._n else self._score_rows(rows, q)
        return self._top(rows, scores, k)

    # ----------------------------------------------------------------------------- persistence

    def save(self, directory: str | os.PathLike[str], generation: str) -> None:
        """Write the index atomically: new files first (each under a temporary name, fsynced,
        then renamed), then the manifest replaced in one rename, so a crash leaves the previous
        index or the new one, never a mix.

        A save that fails (a full disk at shutdown) removes what it wrote before raising: the
        loader reads only the files its manifest names, so a leftover would do no harm, but it
        would take disk space until the next successful save, on the disk that was full.

        ``generation`` is the caller's token for the database state the index reflects (see
        docs/vector-index.md); ``saved_generation`` reads it back without loading vectors.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(8)
        written: list[Path] = []
        checksums: dict[str, str] = {}

        def write(name: str, contents: Callable[[BinaryIO], object]) -> None:
            # Hashed as it is written: reading 500 MB back at 100k would cost a second pass.
            digest = hashlib.new(_CHECKSUM)
            _write_durable(
                root / name, lambda f: contents(cast(BinaryIO, _HashingWriter(f, digest)))
            )
            written.append(root / name)
            checksums[name] = f"{_CHECKSUM}:{digest.hexdigest()}"

        try:
            with self._mutate, self._rw.read():
                n = self._n
                names = {"ids": f"ids-{tag}.npy", "vectors": f"vectors-{tag}.npy"}
                write(names["ids"], lambda f: np.save(f, self._row_ids[:n]))

                def write_vectors(f: Any) -> None:
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "<f4", "fortran_order": False, "shape": (n, self.dim)}
                    )
                    for b, block in enumerate(self._blocks):
                        rows = min(n - b * _BLOCK_ROWS, _BLOCK_ROWS)
                        if rows > 0:
                            f.write(memoryview(np.ascontiguousarray(block[:rows])).cast("B"))

                write(names["vectors"], write_vectors)
                if self._ann is not None:
                    names["ann"] = f"ann-{tag}.faiss"
                    data = faiss.serialize_index(self._ann.index)
                    write(names["ann"], lambda f: f.write(memoryview(data)))
                manifest = {
                    "format": _FORMAT,
                    "dim": self.dim,
                    "count": n,
                    "generation": generation,
                    "files": names,
                    "checksums": {kind: checksums[name] for kind, name in names.items()},
                    "ann_trained_at": self._ann_trained_at,
                    "nprobe": self._ann.fixed_nprobe if self._ann else None,
                }
            fsync_directory(root)  # the files' names are durable before the manifest names them
            _write_durable(root / _MANIFEST, lambda f: f.write(json.dumps(manifest).encode()))
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        fsync_directory(root)
        self.generation = generation
        keep = {_MANIFEST, *names.values()}
        for old in root.iterdir():  # files of earlier saves, or of saves that crashed midway
            if old.name not in keep and (old.name.startswith(("ids-", "vectors-", "ann-", "."))):
                with contextlib.suppress(OSError):
                    old.unlink()

    @staticmethod
    def saved_generation(directory: str | os.PathLike[str]) -> str | None:
        """The generation a saved index was built for, or None if there is no readable one."""
        try:
            manifest = json.loads((Path(directory) / _MANIFEST).read_text())
            return str(manifest["generation"]) if manifest.get("format") == _FORMAT else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def verify(directory: str | os.PathLike[str]) -> int:
        """Check every saved file against its manifest's checksum without loading anything
        (`server.py --check`, which knows no model and so no generation). Returns the saved
        vector count; raises FileNotFoundError when no index was saved, IndexFormatError (or
        DamagedIndexError) as `load` would."""
        root = Path(directory)
        try:
            manifest = _read_manifest(root)
        except NotADirectoryError as exc:
            # A file where the index directory belongs: no index the next start can load, so
            # it rebuilds, as for any unusable one. Until session 22's second review this went
            # out bare, and `--check` gave the advice for an unexpected error.
            raise IndexFormatError(f"{root} is not a directory") from exc
        try:
            if manifest.get("format") != _FORMAT:
                raise IndexFormatError(f"unsupported index format {manifest.get('format')!r}")
            _verify_files(root, manifest["files"], manifest.get("checksums"))
            return int(manifest["count"])
        except (StaleIndexError, IndexFormatError):
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexFormatError(f"cannot verify vector index in {root}: {exc}") from exc

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        expected_generation: str | None = None,
        **kwargs: Any,
    ) -> VectorIndex:
        """Load a saved index. Raises StaleIndexError if ``expected_generation`` is given and
        differs, IndexFormatError if files are missing or damaged (callers then rebuild): each
        file is hashed as it is read, in one pass, and compared with the manifest's checksum
        before the index is returned (DamagedIndexError; a file the disk cannot read,
        UnreadableIndexError), and an index whose manifest has none (saved before session 22)
        is refused as unverifiable. An IVF file is read (and so checked) only when it is used:
        at or below ``exact_threshold`` vectors it is not, and the next save drops it. The
        files are read, never mapped, so a disk error is an exception here too, not a SIGBUS
        (see `_read_rows_locked`)."""
        root = Path(directory)
        try:
            manifest = _read_manifest(root)
            if manifest.get("format") != _FORMAT:
                raise IndexFormatError(f"unsupported index format {manifest.get('format')!r}")
            generation = str(manifest["generation"])
            if expected_generation is not None and generation != expected_generation:
                raise StaleIndexError(
                    f"saved index is for generation {generation!r}, "
                    f"database is at {expected_generation!r}"
                )
            files = manifest["files"]
            expected = _expected_digests(root, files, manifest.get("checksums"))
            count, dim = int(manifest["count"]), int(manifest["dim"])
            ids_path = root / files["ids"]
            ids = np.load(io.BytesIO(_read_checked(ids_path, expected["ids"])), allow_pickle=False)
            if ids.shape != (count,):
                raise IndexFormatError("saved index files do not match their manifest")
            kwargs.setdefault("dim", dim)
            index = cls(**kwargs)
            if manifest.get("nprobe") is not None and index._nprobe_override is None:
                index._nprobe_override = int(manifest["nprobe"])  # a tuned value survives
            with index._mutate, index._rw.write():
                vectors_path = root / files["vectors"]
                with _reading(vectors_path), open(vectors_path, "rb", buffering=0) as f:
                    index._read_rows_locked(
                        ids.astype(np.int64, copy=False), f, vectors_path, expected["vectors"]
                    )
                if "ann" in files and count > index.exact_threshold:
                    raw = _read_checked(root / files["ann"], expected["ann"])
                    faiss_index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
                    del raw
                    if faiss_index.ntotal != count:
                        raise IndexFormatError("saved ANN does not match the saved vectors")
                    index._ann = _Ann(faiss_index, index._nprobe_override)
                    index._ann_trained_at = int(manifest.get("ann_trained_at") or count)
        except (StaleIndexError, IndexFormatError):
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            # AttributeError: a manifest of another shape (`manifest.get` on a list).
            raise IndexFormatError(f"cannot load vector index from {root}: {exc}") from exc
        with index._mutate:
            if index._needs_rebuild():
                index._rebuild_ann()  # saved without ANN but now large enough (or other threshold)
        index.generation = generation
        return index


def _dots(matrix: FloatArray, rows: int, query: FloatArray, out: npt.NDArray[np.float32]) -> None:
    """out[i] = matrix[i] . query for the first ``rows`` rows, on one thread with SIMD.

    Measured faster than np.matmul here: a single query is memory-bound, and OpenBLAS's
    threads spin against the server's other threads (3x slower wall time under load).
    """
    assert matrix.flags.c_contiguous and out.flags.c_contiguous and len(out) == rows
    faiss.fvec_inner_products_ny(
        faiss.swig_ptr(out), faiss.swig_ptr(query), faiss.swig_ptr(matrix), len(query), rows
    )


def _read_manifest(root: Path) -> Any:
    """The manifest of the index saved in ``root``. FileNotFoundError when there is none (no
    index saved yet), UnreadableIndexError when the disk cannot read it, IndexFormatError when
    it is no JSON."""
    path = root / _MANIFEST
    with _reading(path):
        text = path.read_bytes()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise IndexFormatError(f"cannot read {path}: {exc}") from exc


class _HashingWriter:
    """A file that hashes what passes through it, so a save records the digest of exactly the
    bytes it wrote."""

    def __init__(self, f: BinaryIO, digest: Any) -> None:
        self._f = f
        self._digest = digest

    def write(self, data: Any) -> int:
        self._digest.update(data)
        return self._f.write(data)


class _HashingReader:
    """A file that hashes what is read from it, for the `.npy` header numpy parses: `load`'s
    digest covers every byte of the file, header included."""

    def __init__(self, f: BinaryIO, digest: Any) -> None:
        self._f = f
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data


def _hash_rest(f: BinaryIO, digest: Any) -> int:
    """Hash what is left of ``f`` to its end; how many bytes that was."""
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    total = 0
    while read := f.readinto(view):
        digest.update(view[:read])
        total += read
    return total


def _read_checked(path: Path, expected: str) -> bytes:
    """The bytes of the saved file ``path``, read once and hashed: DamagedIndexError if they
    are not the ones the manifest's checksum recorded."""
    with _reading(path):
        data = path.read_bytes()
    if hashlib.new(_CHECKSUM, data).hexdigest() != expected:
        raise DamagedIndexError(path)
    return data


#: How much `_verify_files` and `load` read per `readinto`: 16 MB is about 40 reads for the
#: 643 MB of a 100k index, each releasing the GIL for the read and again for the hash, where
#: `hashlib.file_digest` makes 2,500 reads of 256 KB. 16 MB hashed 643 MB from the
#: page cache in 0.43-0.46 s here, 32 MB in 0.51-0.63 s and 64 MB in 0.61-0.68 s (the buffer
#: falls out of the CPU cache between the read and the hash); docs/vector-index.md.
_VERIFY_CHUNK = 16 * 1024 * 1024


def _expected_digests(root: Path, files: object, checksums: object) -> dict[str, str]:
    """The hex digest the manifest records for each kind of file it names. No checksums at all
    means an index saved before session 22: it cannot be verified, so it is refused like a
    damaged one and rebuilt. A manifest of another shape (a list where a mapping belongs, a
    digest of another algorithm) is an IndexFormatError too, so that the caller rebuilds."""
    if not isinstance(checksums, dict):
        raise IndexFormatError(
            "the saved index has no checksums (saved by an earlier version), so it cannot be "
            "verified"
        )
    if not isinstance(files, dict) or not all(isinstance(n, str) for n in files.values()):
        raise IndexFormatError(f"the manifest in {root} does not list its files by kind")
    expected: dict[str, str] = {}
    for kind, name in files.items():
        algorithm, _, digest = str(checksums.get(kind, "")).partition(":")
        if algorithm != _CHECKSUM or not digest:
            raise IndexFormatError(f"the manifest in {root} has no usable checksum for {name}")
        expected[kind] = digest
    return expected


def _verify_files(root: Path, files: object, checksums: object) -> None:
    """Hash each file the manifest names and compare it with the recorded digest.

    For `verify` (`server.py --check`) only: `load` hashes the bytes it loads as it reads them
    (`_read_rows_locked`, `_read_checked`), since a second pass read other bytes than the
    checked ones from a failing disk, and cost 0.4-1.4 s at 100k. The manifest's shape is
    checked as `_expected_digests` says. A file the disk cannot read (EIO) is an
    UnreadableIndexError: damage, not a routine rebuild.

    Files are read in `_VERIFY_CHUNK` pieces into one buffer, not mapped: a disk error on a
    mapped page is a SIGBUS that kills the process (a start, or `--check`), where a read
    raises OSError (`load` reads too, for the same reason); and not in `hashlib.file_digest`'s
    256 KB reads, which take the GIL back thousands of times for 643 MB: in the server, where
    start-up threads hold it, a 100k load took 4.1 s instead of 1."""
    expected_digests = _expected_digests(root, files, checksums)
    buffer = bytearray(_VERIFY_CHUNK)
    view = memoryview(buffer)
    for kind, expected in expected_digests.items():
        path = root / cast(dict[str, str], files)[kind]
        digest = hashlib.new(_CHECKSUM)
        with _reading(path), open(path, "rb", buffering=0) as f:
            while read := f.readinto(view):
                digest.update(view[:read])
        if digest.hexdigest() != expected:
            raise DamagedIndexError(path)


def _write_durable(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a callback to a temporary name, fsync, then rename to ``path``: a failure
    (a full disk) leaves no partial file, only the exception. Its ``filename`` is set when the
    write itself failed (numpy and ``write`` leave it empty), so that a log line can name the
    file; a failed flush on close is not chained to it as a second traceback."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    f = os.fdopen(fd, "wb")
    try:
        write(f)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            f.close()  # closes the descriptor even when flushing the buffer fails again
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise
