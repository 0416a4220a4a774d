"""Reading the live generation of an index: vectors, metadata, ANN searcher and filters."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexDamagedError, IndexFormatError, IndexNotFoundError
from ..imageio import is_image_path
from ..query.filters import build_filter_mask
from . import ann
from .checksums import Checks
from .layout import CATALOG, GEN_PREFIX, INDEX_FILE, LOCK, MANIFEST, MAPPED_METADATA, METADATA, VECTORS, live_generation
from .manifest import Manifest, conform_metadata

_OPEN_RETRIES = 3


def _read_metadata(gen: Path, mmap: bool) -> pa.Table:
    """The mapped Arrow copy when there is one and ``mmap`` allows (zero-copy), else the Parquet file.

    The Parquet file is the generation's record either way: without it the generation is incomplete.
    """
    mapped, parquet = gen / MAPPED_METADATA, gen / METADATA
    if not parquet.is_file():
        raise FileNotFoundError(2, "missing", str(parquet))
    if mmap and mapped.is_file():
        return pa.ipc.open_file(pa.memory_map(str(mapped), "r")).read_all()
    # ParquetFile reads the one file as read_table does, without pyarrow.dataset (which imports pandas: 0.5-1.5 s)
    return pq.ParquetFile(parquet, memory_map=mmap).read()


def not_an_index(path: Path) -> str:
    """Why ``path`` cannot be opened as an index, and what to run instead."""
    if not path.exists():
        return f"no index at {path}; create one with `python -m indexer build PHOTOS --index {path}`"
    if not path.is_dir():
        return f"{path} is a file, not an index folder"
    names = {p.name for p in path.iterdir()}
    if CATALOG in names or LOCK in names or any(n.startswith(GEN_PREFIX) for n in names):
        return f"{path} holds no published index yet; run `python -m indexer build PHOTOS --index {path}`"
    if holds_photos(path):
        return (
            f"{path} is a folder of photos, not an index; index it with `python -m indexer build {path} --index "
            "INDEX_DIR` (a folder of its own) and open INDEX_DIR"
        )
    return f"{path} is not an index; create one with `python -m indexer build PHOTOS --index {path}`"


def holds_photos(folder: Path, looked_at: int = 2000, below: bool = True) -> bool:
    """Whether image files lie in ``folder`` or (``below``) one level below (the first ``looked_at`` entries)."""
    seen = 0
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())[:50] if below else []
    for entry in [folder, *subfolders]:
        try:
            for name in os.listdir(entry):
                seen += 1
                if is_image_path(name):
                    return True
                if seen >= looked_at:
                    return False
        except OSError:
            continue
    return False


class IndexReader:
    """A read-only view of the live generation, resolved once at :meth:`open`."""

    def __init__(
        self,
        path: Path,
        generation_dir: Path,
        manifest: Manifest,
        metadata: pa.Table,
        vectors: np.ndarray,
        searcher: ann.AnnSearcher,
    ) -> None:
        self.path = path
        self.generation_dir = generation_dir
        self.manifest = manifest
        self.metadata = metadata
        self.vectors = vectors
        self.ann = searcher
        self._row_of_path: dict[str, int] | None = None
        self.checks = Checks(path, generation_dir, manifest.checksums)

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], mmap: bool = True) -> IndexReader:
        path = Path(index_dir).resolve()
        if not path.is_dir():
            raise IndexNotFoundError(not_an_index(path))
        for attempt in range(_OPEN_RETRIES):
            gen = live_generation(path)
            if gen is None:
                raise IndexNotFoundError(not_an_index(path))
            rebuild = f"the index at {path} is damaged; rebuild it with `python -m indexer build FOLDER --index {path} --rebuild`"
            try:
                return cls._open_generation(path, gen, mmap)
            except FileNotFoundError as exc:
                if attempt == _OPEN_RETRIES - 1 or live_generation(path) == gen:
                    raise IndexFormatError(
                        f"generation {gen.name} is incomplete: {exc.filename} is missing; {rebuild}"
                    ) from exc
            except IndexDamagedError:
                raise  # names the file and the command already
            except IndexFormatError as exc:
                raise IndexFormatError(f"{exc}; {rebuild}") from exc
        raise AssertionError("unreachable")

    @classmethod
    def _open_generation(cls, path: Path, gen: Path, mmap: bool) -> IndexReader:
        manifest = Manifest.from_json((gen / MANIFEST).read_bytes())
        checks = Checks(path, gen, manifest.checksums)
        checks.verify_open(unread=[METADATA] if mmap and (gen / MAPPED_METADATA).is_file() else [])
        try:
            metadata = conform_metadata(_read_metadata(gen, mmap))
            vectors = np.load(gen / VECTORS, mmap_mode="r" if mmap else None)
            if not mmap:
                checks.verify_file(VECTORS)  # read whole anyway
        except (OSError, ValueError, pa.ArrowInvalid) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise IndexFormatError(f"cannot read generation {gen.name}: {exc}") from exc
        if (
            vectors.ndim != 2
            or vectors.shape != (manifest.count, manifest.embed_dim)
            or metadata.num_rows != manifest.count
        ):
            raise IndexFormatError(
                f"generation {gen.name} is inconsistent: manifest says {manifest.count}x{manifest.embed_dim}, "
                f"vectors are {vectors.shape}, metadata has {metadata.num_rows} rows"
            )
        index = ann.load(gen / INDEX_FILE, mmap=mmap)
        vectors = checks.wrap_vectors(vectors)
        params = manifest.ann_params
        searcher = ann.AnnSearcher(index, vectors, nprobe=params.get("nprobe"), rerank=params.get("rerank"))
        reader = cls(path, gen, manifest, metadata, vectors, searcher)
        reader.checks = checks
        return reader

    def verify(self) -> list[str]:
        """Check every file of the generation whole against its checksum; the names checked (empty when
        the generation has no checksums). Raises :class:`IndexDamagedError` naming a damaged file."""
        for name in self.checks.names():
            self.checks.verify_file(name)
        return self.checks.names()

    def __len__(self) -> int:
        return self.metadata.num_rows

    def row(self, i: int) -> dict[str, Any]:
        """Metadata of row ``i`` as plain Python values."""
        return self.rows([i])[0]

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Metadata of several rows (a search's results).

        Scalar access per row: on a memory-mapped, multi-chunk table a ``take`` costs ~25x
        more (11.5 vs 0.44 ms for 10 rows of 1M, measured).
        """
        names = self.metadata.column_names
        out = []
        for i in ids:
            if not 0 <= i < len(self):
                raise IndexError(f"row {i} out of range for an index of {len(self)}")
            out.append({name: self.metadata.column(name)[i].as_py() for name in names})
        return out

    def rows_for_paths(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Row number of each path (resolved like the indexer does), -1 where it is not indexed."""
        if self._row_of_path is None:
            self._row_of_path = {p: i for i, p in enumerate(self.metadata.column("path").to_pylist())}
        lookup = self._row_of_path
        return np.array([lookup.get(os.path.realpath(p), -1) for p in paths], dtype=np.int64)

    def filter_mask(
        self,
        folder: str | os.PathLike[str] | None = None,
        date_from: Any = None,
        date_to: Any = None,
        file_types: Sequence[str] | None = None,
        tag: str | None = None,
    ) -> np.ndarray | None:
        """Boolean row mask for the given filters, or None when no filter is set."""
        return build_filter_mask(
            self.metadata, folder=folder, date_from=date_from, date_to=date_to, file_types=file_types, tag=tag
        )

    def search_vectors(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.ann.search(np.ascontiguousarray(queries, dtype=np.float32), k, mask=mask)
