"""Approximate nearest-neighbour search over unit vectors (FAISS, inner product).

Small collections use an exact ``Flat`` index; large ones an IVF-PQ index whose
candidates are re-ranked exactly against the stored float16 vectors, so every score
returned is a true cosine. The defaults below come from ``bench/bench_query.py``;
``docs/ann.md`` holds the measured sweep that justifies them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from ..atomic import replacing
from ..errors import AnnConfigError, IndexDamagedError, IndexFormatError, InvalidQueryError, ModelMismatchError

FLAT_BELOW = 10_000
"""Collections with fewer vectors than this get an exact ``Flat`` index."""
DEFAULT_NPROBE = 64
"""Inverted lists visited per query (IVF indexes). Real caption queries against image-trained
lists need 64 for recall@10 >= 0.95 (docs/ann.md, "Text queries on real embeddings")."""
DEFAULT_RERANK = 30
"""FAISS candidates fetched per wanted result, re-ranked exactly; 0 turns re-ranking off."""
MIN_CANDIDATES = 100
"""Re-ranking never looks at fewer candidates than this, however small k is."""
BRUTE_FORCE_ROWS = 8_192
BRUTE_FORCE_FRACTION = 0.02
"""A mask allowing at most max(256, min(BRUTE_FORCE_ROWS, BRUTE_FORCE_FRACTION * n)) rows is searched
exactly; broader masks go through a FAISS ID selector (crossover measured in docs/ann.md)."""
TRAIN_POINTS_PER_LIST = 40
"""Coarse k-means sample size per inverted list (FAISS asks for at least 39)."""
MAX_TRAIN_POINTS = 131_072
"""Training sample cap: k-means cost grows with sample x nlist x dim."""
PQ_TRAIN_POINTS = 16_384
"""PQ codebooks are trained on at most this many residuals (8-bit PQ costs ~M x 256 x points)."""
_ADD_CHUNK = 65_536
MAP_LISTS_ABOVE = 2 << 30
"""``load(mmap=True)`` maps IVF inverted lists only for index files larger than this (bytes).
Mapped lists (``OnDiskInvertedLists``) cost several ms per query at 1M vectors and nprobe 64;
an IVF-PQ index is ~75 bytes per vector, so up to ~25M vectors its lists are read into RAM."""
SINGLE_THREAD_QUERIES = 8
"""Query batches up to this size run FAISS on one thread: a single query's work is too small to
share, and OpenMP threads waiting on a core busy with other work stall it (13 ms instead of
0.6 ms for a 1M re-rank on a loaded 2-core CPU, docs/ann.md)."""


def choose_factory(n: int, dim: int) -> str:
    """``Flat`` below ``FLAT_BELOW`` vectors, else IVF with ~sqrt(n) lists and 8-bit PQ (dim/8 bytes)."""
    if n < FLAT_BELOW:
        return "Flat"
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    nlist = max(64, min(nlist, 65_536, n // 39))
    m = dim // 8 if dim % 8 == 0 and dim >= 64 else _largest_divisor(dim, max(1, dim // 4))
    return f"IVF{nlist},PQ{m}x8"


def _largest_divisor(dim: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if dim % d == 0)


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build(vectors: np.ndarray, factory: str | None = None, seed: int = 0) -> faiss.Index:
    """An inner-product index holding ``vectors`` (row i has id i), trained on a seeded sample."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise InvalidQueryError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    n, dim = vectors.shape
    factory = factory or choose_factory(n, dim)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = _first_line(err)
        raise AnnConfigError(f"invalid FAISS factory string {factory!r} for {dim}-d vectors: {reason}") from err
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # Hamming pre-filtering is unused here and costs seconds to train
        if hasattr(ivf, "pq"):
            ivf.pq.cp.max_points_per_centroid = max(64, PQ_TRAIN_POINTS // ivf.pq.ksub)
        if n < ivf.nlist:
            raise AnnConfigError(f"{factory!r} needs at least {ivf.nlist} vectors to train, got {n}")
    if not index.is_trained:
        nlist = ivf.nlist if ivf is not None else 256
        size = min(n, max(TRAIN_POINTS_PER_LIST * nlist, 256 * 39), MAX_TRAIN_POINTS)
        if ivf is not None:
            ivf.cp.min_points_per_centroid = min(39, size // nlist)  # a deliberate sample is not worth a warning
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        try:
            index.train(_as_float32(vectors[rows]))
        except RuntimeError as err:
            raise AnnConfigError(f"cannot train {factory!r} on {size} vectors: {_first_line(err)}") from err
    for start in range(0, n, _ADD_CHUNK):
        index.add(_as_float32(vectors[start : start + _ADD_CHUNK]))
    return index


_FAISS_WHERE = re.compile(r"^Error in .*? at \S+:\d+: ")
_FAISS_ASSERT = re.compile(r"^Error: '(.*?)' failed(?:: )?")


def _first_line(err: BaseException) -> str:
    """FAISS's message as one readable line: its last line, without the C++ function, source file and
    line it names ("Error in void faiss::...() at /project/faiss/...cpp:64: Error: 'd % M == 0' failed: ...")."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = _FAISS_WHERE.sub("", lines[-1].strip())
    cond = _FAISS_ASSERT.match(line)
    if cond:
        line = line[cond.end() :] or f"the check {cond.group(1)} failed"
    return line


def save(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Write ``index`` to ``path`` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        index = faiss.index_gpu_to_cpu(index)
    with replacing(path) as tmp:
        faiss.write_index(index, str(tmp))


def load(path: str | os.PathLike[str], mmap: bool = False, map_lists_above: int = MAP_LISTS_ABOVE) -> faiss.Index:
    """Read an index; ``mmap`` maps it read-only where the index type allows, else reads it normally.

    Flat codes are mapped whatever their size; IVF inverted lists only when the file is larger
    than ``map_lists_above`` bytes (in RAM they are several times faster to scan).
    """
    path = Path(path)
    if not path.is_file():
        raise IndexFormatError(f"ANN index file missing: {path}")
    if path.with_suffix(".ivfdata").is_file():  # on-disk inverted lists (indexer.merge): found next to the
        flags = (
            faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
        )  # index, already mmapped; IO_FLAG_MMAP crashes on them
        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError as err:
            raise IndexFormatError(f"cannot read ANN index {path}: {_first_line(err)}") from err
    if mmap:
        mapped = _read_mapped(path, lists=path.stat().st_size > map_lists_above)
        if mapped is not None:
            return mapped
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise IndexFormatError(f"cannot read ANN index {path}: {_first_line(err)}") from err


def _read_mapped(path: Path, lists: bool) -> faiss.Index | None:
    """Map flat codes (IO_FLAG_MMAP_IFC) or, for IVF indexes, which reject that flag and only when
    ``lists``, the inverted lists.

    None when this index type cannot be mapped; the caller then reads it normally.
    """
    both = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC
    tries = (both, faiss.IO_FLAG_MMAP) if lists else (both,)
    for flags in tries:
        try:
            return faiss.read_index(str(path), flags | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            continue
    return None


def index_type(index: faiss.Index) -> str:
    """E.g. ``IndexIVFPQ(nlist=1024, M=64x8bit, ntotal=1000000, dim=512)`` for manifests and stats."""
    # ``view`` does not own the index: ``index`` (not rebound) keeps a temporary one alive (a segfault)
    view = faiss.downcast_index(index)
    ivf = faiss.try_extract_index_ivf(view)
    inner = view if ivf is None else faiss.downcast_index(ivf)
    parts = [] if ivf is None else [f"nlist={ivf.nlist}"]
    if getattr(inner, "pq", None) is not None:
        parts.append(f"M={inner.pq.M}x{inner.pq.nbits}bit")
    if getattr(view, "hnsw", None) is not None:
        parts.append(f"M={view.hnsw.nb_neighbors(1)}")
    return f"{type(inner).__name__}({', '.join(parts + [f'ntotal={view.ntotal}', f'dim={view.d}'])})"


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None, chunk: int = 32_768
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over ``rows`` (all rows when None); -1/-inf padded."""
    queries = _as_float32(np.atleast_2d(queries))
    total = len(vectors) if rows is None else len(rows)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, total, chunk):
        ids = np.arange(start, min(start + chunk, total)) if rows is None else rows[start : start + chunk]
        block = vectors[start : start + chunk] if rows is None else vectors[ids]
        scores, local = _block_top_k(block, queries, k)
        _all_scored(local, min(k, len(ids)))
        found = np.where(local >= 0, ids.astype(np.int64)[np.maximum(local, 0)], -1)
        best_s, best_i = _top_k(np.concatenate([best_s, scores], 1), np.concatenate([best_i, found], 1), k)
    return best_s, best_i


def _block_top_k(block: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against an in-memory block, scored by FAISS SIMD code.

    float16 rows are scored in place through a throw-away fp16 scalar-quantizer index (numpy's
    float16 -> float32 cast costs ~10x more than the dot products); numpy's matmul is avoided
    because OpenBLAS threading stalls single queries on a busy CPU (20 ms instead of 0.03 ms).
    """
    k = min(k, len(block))
    if block.dtype != np.float16:
        return faiss.knn(queries, _as_float32(block), k, metric=faiss.METRIC_INNER_PRODUCT)
    flat = faiss.IndexScalarQuantizer(block.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.ascontiguousarray(block).view(np.uint8).ravel(), flat.codes)
    flat.ntotal = len(block)
    return flat.search(queries, k)


NOT_FINITE = (
    "scores this index gave are not finite (NaN or infinity): its stored vectors are damaged; "
    "rebuild it with `python -m indexer build FOLDER --index INDEX --rebuild`"
)


def _all_scored(local: np.ndarray, expected: int) -> None:
    """FAISS leaves a row whose score is NaN out of a top-k (and pads with -1): a block of ``expected``
    or more rows that yields fewer results holds vectors that are not finite."""
    if np.any(np.count_nonzero(local >= 0, axis=1) < expected):
        raise IndexDamagedError(f"some {NOT_FINITE}")


@contextlib.contextmanager
def _faiss_threads(n: int | None) -> Iterator[None]:
    """FAISS's OpenMP thread count for the calling thread, restored afterwards (None: unchanged)."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row, best first (ties by lower id); -1 ids always score -inf."""
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    order = np.lexsort((ids, -scores), axis=1) if scores.size else np.zeros(scores.shape, dtype=np.int64)
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, np.where(np.isneginf(scores), -1, ids)


class AnnSearcher:
    """Top-k search over ``index`` whose row i is ``vectors[i]`` (the exact float16 vectors, often a memmap).

    Candidates from an approximate index are re-ranked exactly, so returned scores are true
    inner products. ``mask`` restricts a query to allowed rows: few allowed rows are searched
    exactly, many through a FAISS ID selector with ``nprobe`` widened by the mask's sparsity.
    """

    def __init__(
        self,
        index: faiss.Index,
        vectors: np.ndarray,
        nprobe: int | None = None,
        rerank: int | None = None,
        *,
        brute_force_rows: int | None = None,
        use_gpu: bool | None = None,
    ) -> None:
        if vectors.ndim != 2 or len(vectors) != index.ntotal or vectors.shape[1] != index.d:
            raise IndexFormatError(
                f"ANN index holds {index.ntotal} x {index.d} but the stored vectors are {tuple(vectors.shape)}"
            )
        self.nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
        self.rerank = DEFAULT_RERANK if rerank is None else int(rerank)
        if self.nprobe < 1 or self.rerank < 0:
            raise AnnConfigError(f"nprobe must be >= 1 and rerank >= 0, got {self.nprobe} and {self.rerank}")
        self.index = index
        self.vectors = vectors
        if brute_force_rows is None:
            brute_force_rows = max(256, min(BRUTE_FORCE_ROWS, int(BRUTE_FORCE_FRACTION * len(vectors))))
        self.brute_force_rows = int(brute_force_rows)
        self._ivf = faiss.try_extract_index_ivf(index)
        self.exact = isinstance(faiss.downcast_index(index), faiss.IndexFlat)
        self._gpu_resources, self._gpu_index = None, None
        has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if use_gpu or (use_gpu is None and has_gpu):
            self._to_gpu()
        self.device = "cpu" if self._gpu_index is None else "gpu"

    def _to_gpu(self) -> None:
        res = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        try:
            gpu_index = faiss.index_cpu_to_gpu(res, 0, self.index, options)
        except RuntimeError:
            return  # no GPU implementation for this index type: the CPU index serves every query
        if self._ivf is not None:
            faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", min(self.nprobe, 2048))
        self._gpu_resources, self._gpu_index = res, gpu_index

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 [Q, k'] and ids int64 [Q, k'], best first, padded with -inf / -1, where
        k' is ``k`` capped at the number of vectors (a huge k must not allocate k columns)."""
        q = _as_float32(np.atleast_2d(queries))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ModelMismatchError(f"queries have shape {np.shape(queries)}, the index holds {self.dim}-d vectors")
        if int(k) < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        n = len(self.vectors)
        k = min(int(k), n)
        if n == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if not np.isfinite(q).all():
            raise InvalidQueryError("the query vector holds values that are not finite (NaN or infinity)")
        with _faiss_threads(1 if len(q) <= SINGLE_THREAD_QUERIES else None):
            try:
                scores, ids = self._search(q, k, mask)
            except RuntimeError as err:  # FAISS: a C++ exception with a multi-line message
                raise IndexFormatError(f"the ANN index could not answer the query: {_first_line(err)}") from err
        found = ids >= 0
        if not np.isfinite(scores[found]).all():
            bad = int(np.count_nonzero(~np.isfinite(scores[found])))
            raise IndexDamagedError(f"{bad} of the {NOT_FINITE}")
        return scores, ids

    def _search(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.vectors)
        if mask is None:
            return self._ann_search(q, k)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n,):
            raise InvalidQueryError(f"mask must be a boolean array of {n} rows, got shape {mask.shape}")
        allowed = int(np.count_nonzero(mask))
        if self.plan(mask) == "exact":
            return exact_search(self.vectors, q, k, rows=np.flatnonzero(mask))
        selector = faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
        try:
            scores, ids = self._ann_search(q, k, selector, widen=n / allowed)
        except RuntimeError:
            return exact_search(self.vectors, q, k, rows=np.flatnonzero(mask))  # index type lacks ID selectors
        short = np.count_nonzero(ids >= 0, axis=1) < min(k, allowed)
        if short.any():
            scores[short], ids[short] = exact_search(self.vectors, q[short], k, rows=np.flatnonzero(mask))
        return scores, ids

    def plan(self, mask: np.ndarray | None = None) -> str:
        """How a query with this mask is answered: ``ann``, ``ann+selector`` or ``exact`` (masked brute force)."""
        if mask is None:
            return "ann"
        return "exact" if int(np.count_nonzero(mask)) <= self.brute_force_rows else "ann+selector"

    def _candidates(self, k: int) -> int:
        if self.exact or self.rerank == 0:
            return k
        return max(k * self.rerank, MIN_CANDIDATES)

    def _ann_search(
        self, q: np.ndarray, k: int, selector: faiss.IDSelector | None = None, widen: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        fetch = self._candidates(k)
        if selector is None and self._gpu_index is not None and fetch <= 2048:
            _, cand = self._gpu_index.search(q, fetch)
        else:
            _, cand = self.index.search(q, fetch, params=self._params(selector, widen))
        return self._rerank(q, cand, k)

    def _params(self, selector: faiss.IDSelector | None, widen: float) -> faiss.SearchParameters | None:
        if self._ivf is not None:
            nprobe = min(self._ivf.nlist, math.ceil(self.nprobe * widen))
            return faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for each query's candidate ids, from the stored vectors, then the best ``k``."""
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        for i, row in enumerate(cand):
            rows = np.unique(row[row >= 0])
            if len(rows):
                s, local = _block_top_k(self.vectors[rows], q[i : i + 1], k)
                _all_scored(local, min(k, len(rows)))
                scores[i, : s.shape[1]], ids[i, : s.shape[1]] = s[0], rows[local[0]]
        return _top_k(scores, ids, k)
