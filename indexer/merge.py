"""Merge embedding shards into one published index generation.

A shard is a float16 ``[n, d]`` ``.npy`` file (plus its Parquet metadata rows); shards are
concatenated in order, so row ``i`` of the merged index is row ``i`` of that concatenation.
The ANN index is built in three steps that can run on different processes:

1. :func:`train_empty` trains the FAISS index on a seeded sample of all shards (the same
   sample :func:`retrieval.index.ann.build` would draw from the concatenation), and saves it empty.
2. :func:`encode_shard` adds one shard's vectors to a copy of it under their global ids.
3. :func:`publish_merged` merges the encoded shards (``merge_from`` in RAM, or
   ``faiss.contrib.ondisk.merge_ondisk`` into an ``.ivfdata`` file for indexes bigger than
   RAM), streams the vectors into the generation's ``vectors.npy`` and publishes it
   atomically, exactly like :func:`retrieval.index.store.write_generation` would.

Index types without inverted lists (``Flat``, ``HNSW``...) skip step 2: the merge adds the
shards' vectors to the trained index one chunk at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import AnnConfigError, IndexFormatError
from retrieval.index import ann, store
from retrieval.index.manifest import Manifest, conform_metadata, empty_metadata, utc_now_iso

IVFDATA = "index.ivfdata"
"""Inverted lists of an on-disk IVF index, next to ``index.faiss`` in the generation."""
ONDISK_RAM_FRACTION = 0.25
"""Merge on disk when the inverted lists would take more than this share of available RAM."""
_CHUNK = 65_536


@dataclass(frozen=True)
class Shard:
    """One rank's output: vectors (``.npy``) and, optionally, their metadata rows (Parquet)."""

    vectors: Path
    metadata: Path | None = None

    def open(self) -> np.ndarray:
        vectors = np.load(self.vectors, mmap_mode="r")
        if vectors.ndim != 2:
            raise IndexFormatError(f"shard {self.vectors} holds an array of shape {vectors.shape}")
        return vectors


@dataclass
class MergeTimes:
    train: float = 0.0
    encode: float = 0.0
    merge: float = 0.0
    write: float = 0.0


@dataclass
class MergeResult:
    manifest: Manifest
    generation: Path
    ondisk: bool
    times: MergeTimes = field(default_factory=MergeTimes)


class ShardSet:
    """The virtual concatenation of shards: counts, offsets and row gathers without loading them."""

    def __init__(self, shards: Sequence[Shard], dim: int) -> None:
        self.shards = list(shards)
        self.arrays = [s.open() for s in self.shards]
        for s, a in zip(self.shards, self.arrays):
            if a.shape[1] != dim:
                raise IndexFormatError(f"shard {s.vectors} holds {a.shape[1]}-d vectors, expected {dim}")
        self.dim = dim
        self.counts = [len(a) for a in self.arrays]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows by global (sorted) row number."""
        out = np.empty((len(rows), self.dim), np.float32)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.arrays[s][rows[sel] - self.offsets[s]]
        return out

    def chunks(self) -> list[tuple[int, np.ndarray]]:
        """(global start, float16 array view) pieces of at most ``_CHUNK`` rows, in order."""
        pieces = []
        for off, arr in zip(self.offsets[:-1], self.arrays):
            for start in range(0, len(arr), _CHUNK):
                pieces.append((int(off) + start, arr[start : start + _CHUNK]))
        return pieces


def _is_ivf(index: faiss.Index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


def train_empty(shards: ShardSet, factory: str, seed: int = 0) -> faiss.Index:
    """An empty index of type ``factory``, trained on the sample ``ann.build`` would draw."""
    n, dim = shards.total, shards.dim
    try:
        probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise AnnConfigError(f"invalid FAISS factory string {factory!r} for {dim}-d vectors") from err
    if probe.is_trained:
        return probe
    ivf = faiss.try_extract_index_ivf(probe)
    nlist = ivf.nlist if ivf is not None else 256
    if ivf is not None and n < nlist:
        raise AnnConfigError(f"{factory!r} needs at least {nlist} vectors to train, got {n}")
    size = min(n, max(ann.TRAIN_POINTS_PER_LIST * nlist, 256 * 39), ann.MAX_TRAIN_POINTS)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    index = ann.build(shards.take(rows), factory, seed=seed)  # a sample of n rows trains on all of them, in order
    index.reset()
    return index


def encode_shard(trained: faiss.Index, vectors: np.ndarray, first_id: int) -> faiss.Index:
    """A copy of the trained IVF index holding ``vectors`` under ids ``first_id, first_id+1, ...``."""
    index = faiss.clone_index(trained)
    for start in range(0, len(vectors), _CHUNK):
        block = np.ascontiguousarray(vectors[start : start + _CHUNK], dtype=np.float32)
        index.add_with_ids(block, np.arange(first_id + start, first_id + start + len(block), dtype=np.int64))
    return index


def ivf_bytes_estimate(trained: faiss.Index, total: int) -> int:
    ivf = faiss.extract_index_ivf(trained)
    return int(total * (ivf.code_size + 8))


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (bytes); a large number where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux: no RAM figure, so never choose the on-disk merge by size
    return 1 << 62


def _merge_in_ram(trained: faiss.Index, shard_files: Sequence[Path]) -> faiss.Index:
    merged = faiss.clone_index(trained)
    target = faiss.extract_index_ivf(merged)
    for path in shard_files:
        part = faiss.read_index(str(path))
        target.merge_from(faiss.extract_index_ivf(part), 0)
    merged.ntotal = target.ntotal
    return merged


def _add_sequentially(trained: faiss.Index, shards: ShardSet) -> faiss.Index:
    index = faiss.clone_index(trained)
    for _, block in shards.chunks():
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def _write_vectors(path: Path, shards: ShardSet) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(shards.total, shards.dim))
    for start, block in shards.chunks():
        out[start : start + len(block)] = block
    out.flush()
    del out


def _metadata(shards: Sequence[Shard], total: int) -> pa.Table:
    parts = [empty_metadata()] + [pq.read_table(s.metadata) for s in shards if s.metadata is not None]
    table = conform_metadata(pa.concat_tables([conform_metadata(p) for p in parts]).combine_chunks())
    if table.num_rows != total:
        raise IndexFormatError(f"the shards hold {total} vectors but {table.num_rows} metadata rows")
    return table


def publish_merged(
    index_dir: str | os.PathLike[str],
    shards: Sequence[Shard],
    manifest: Manifest,
    trained: faiss.Index,
    factory: str,
    encoded: Sequence[Path] | None = None,
    *,
    requested_factory: str | None = None,
    ondisk: bool | None = None,
    lock: store.WriterLock | None = None,
) -> MergeResult:
    """Merge ``encoded`` shard indexes (IVF) or the shards' vectors (other types) and publish.

    ``ondisk`` None decides by size: on disk when the inverted lists would take more than
    ``ONDISK_RAM_FRACTION`` of the available RAM. The caller holds ``lock`` (or none is held
    and this takes it).
    """
    index_dir = Path(index_dir).resolve()
    shard_set = ShardSet(shards, manifest.embed_dim)
    metadata = _metadata(shards, shard_set.total) if any(s.metadata for s in shards) else None
    if metadata is None:
        raise IndexFormatError("shards without metadata cannot be published as an index")
    is_ivf = _is_ivf(trained)
    if is_ivf and encoded is None:
        raise IndexFormatError("an IVF merge needs the encoded shard indexes (see encode_shard)")
    use_disk = bool(
        is_ivf
        and (
            ondisk
            if ondisk is not None
            else ivf_bytes_estimate(trained, shard_set.total) > ONDISK_RAM_FRACTION * available_ram()
        )
    )
    result_times = MergeTimes()
    with store.new_generation(index_dir, lock) as gen:
        tick = time.perf_counter()
        if is_ivf and use_disk:
            index = faiss.clone_index(trained)
            from faiss.contrib.ondisk import merge_ondisk

            merge_ondisk(index, [str(p) for p in encoded or []], str(gen / IVFDATA))
        elif is_ivf:
            index = _merge_in_ram(trained, encoded or [])
        else:
            index = _add_sequentially(trained, shard_set)
        if index.ntotal != shard_set.total:
            raise IndexFormatError(f"the merged index holds {index.ntotal} vectors, the shards {shard_set.total}")
        ann.save(index, gen / store.INDEX_FILE)
        result_times.merge = time.perf_counter() - tick
        tick = time.perf_counter()
        _write_vectors(gen / store.VECTORS, shard_set)
        store.write_metadata(gen, metadata)
        params = dict(manifest.ann_params)
        params.setdefault("requested_factory", requested_factory)
        written = manifest.with_(count=shard_set.total, index_type=factory, ann_params=params, build_time=utc_now_iso())
        (gen / store.MANIFEST).write_text(written.to_json())
        result_times.write = time.perf_counter() - tick
    return MergeResult(manifest=written, generation=gen, ondisk=use_disk, times=result_times)


def merge_shards(
    index_dir: str | os.PathLike[str],
    shards: Sequence[Shard],
    manifest: Manifest,
    staging: str | os.PathLike[str],
    factory: str | None = None,
    *,
    ondisk: bool | None = None,
    seed: int = 0,
    lock: store.WriterLock | None = None,
) -> MergeResult:
    """All three steps in this process: train, encode each shard, merge and publish."""
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    shard_set = ShardSet(shards, manifest.embed_dim)
    chosen = factory or ann.choose_factory(shard_set.total, manifest.embed_dim)
    tick = time.perf_counter()
    trained = train_empty(shard_set, chosen, seed)
    train_s = time.perf_counter() - tick
    tick = time.perf_counter()
    encoded: list[Path] | None = None
    if _is_ivf(trained):
        encoded = []
        for i, (arr, first) in enumerate(zip(shard_set.arrays, shard_set.offsets)):
            path = staging / f"shard-{i:05d}.faiss"
            faiss.write_index(encode_shard(trained, arr, int(first)), str(path))
            encoded.append(path)
    encode_s = time.perf_counter() - tick
    result = publish_merged(
        index_dir, shards, manifest, trained, chosen, encoded, requested_factory=factory, ondisk=ondisk, lock=lock
    )
    result.times.train, result.times.encode = train_s, encode_s
    return result
