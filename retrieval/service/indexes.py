"""The indexes a service serves, each kept on its newest published generation, and photo ids.

A request takes the :class:`Served` object current when it starts and uses it to the end;
when a build or an update publishes a new generation, the next request gets a new object
on it (sharing the loaded model), so no request ever mixes two generations and nothing
restarts. Checking for a new generation reads one small file (``CURRENT``).

A photo's id is the first 16 hex digits of the SHA-256 of its indexed (real) path: stable
across generations and updates for as long as the photo stays where it is, and it says
nothing a client could turn into a path. Only an id found in the current generation leads
to a file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RetrievalError
from ..index.store import IndexReader
from ..models.encoder import Encoder
from ..query.search import Index
from .errors import PhotoNotFoundError, UnknownIndexError

ID_LENGTH = 16
ID_PATTERN = rf"^[0-9a-f]{{{ID_LENGTH}}}$"


def photo_id(path: str) -> str:
    """The stable id of the photo indexed at ``path``."""
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:ID_LENGTH]


def indexed_file(served: Served, pid: str) -> Path:
    """The file of photo ``pid`` when it is in ``served``'s generation and still a regular file at
    its indexed path (not replaced by a link since it was indexed); :class:`PhotoNotFoundError` else."""
    path = served.path_of(pid)
    if os.path.realpath(path) != path or not os.path.isfile(path):
        raise PhotoNotFoundError(
            f"photo {pid} is indexed but its file is no longer at {path}; an update of the index drops it"
        )
    return Path(path)


class Served:
    """One index at one generation, with the lookups the routes need (built on first use)."""

    def __init__(self, name: str, index: Index) -> None:
        self.name = name
        self.index = index

    @property
    def reader(self) -> IndexReader:
        return self.index.reader

    @property
    def generation(self) -> str:
        return self.reader.generation_dir.name

    @cached_property
    def _row_of_id(self) -> dict[str, int]:
        return {photo_id(p): i for i, p in enumerate(self.reader.metadata.column("path").to_pylist())}

    def row_of(self, pid: str) -> int:
        """The row of photo ``pid`` in this generation; :class:`PhotoNotFoundError` when it has none."""
        row = self._row_of_id.get(pid)
        if row is None:
            raise PhotoNotFoundError(f"no photo with id {pid} in index {self.name!r}")
        return row

    def path_of(self, pid: str) -> str:
        return str(self.reader.metadata.column("path")[self.row_of(pid)].as_py())

    def vector_of(self, pid: str) -> np.ndarray:
        return np.asarray(self.reader.vectors[self.row_of(pid)], dtype=np.float32)

    @cached_property
    def file_types(self) -> dict[str, int]:
        counts = Counter(self.reader.metadata.column("file_type").to_pylist())
        return dict(sorted(counts.items()))


class IndexPool:
    """Name -> :class:`Served`, each switched to a newer generation when one is published."""

    def __init__(self, dirs: dict[str, Path], device: str | None = None) -> None:
        self._lock = threading.Lock()
        # Text and image encoding run one at a time: a tokenizer is not safe to share between
        # threads, and the model uses every core anyway. ANN search and the rest run concurrently.
        self.encode_lock = threading.Lock()
        self._served = {name: Served(name, Index.open(path, device=device)) for name, path in dirs.items()}
        self.default = next(iter(dirs))

    @property
    def names(self) -> list[str]:
        return list(self._served)

    def get(self, name: str | None = None) -> Served:
        """The named index (default: the first) on its newest readable generation."""
        name = name or self.default
        served = self._served.get(name)
        if served is None:
            raise UnknownIndexError(f"no index named {name!r}; this service serves {', '.join(self._served)}")
        newer = served.index.refreshed()
        if newer is served.index:
            return served
        with self._lock:  # one switch per generation, even when many requests notice it at once
            current = self._served[name]
            if current.index is served.index:
                current = self._served[name] = Served(name, newer)
            return current

    def warm(self) -> list[str]:
        """Load each index's model now, so the first query does not wait for it. Returns one line
        per index whose model cannot be loaded here (its vector queries and photos still work)."""
        problems = []
        for served in self._served.values():
            try:
                encoder: Encoder = served.index.encoder
                encoder.encode_texts(["warm up"])
            except RetrievalError as exc:
                problems.append(f"index {served.name!r}: model {served.index.manifest.model_spec} not loaded ({exc})")
        return problems

    def stats(self, served: Served) -> dict[str, Any]:
        m = served.index.manifest
        return {
            "name": served.name,
            "path": str(served.index.path),
            "generation": served.generation,
            "count": len(served.reader),
            "model_spec": m.model_spec,
            "model_fingerprint": m.model_fingerprint,
            "embed_dim": m.embed_dim,
            "index_type": m.index_type,
            "build_time": m.build_time,
            "roots": list(m.roots),
            "bad_count": m.bad_count,
            "file_types": served.file_types,
            "tags": list(m.tagging.get("labels", [])),
        }
