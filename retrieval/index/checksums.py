"""Checksums of a generation's files: written once when it is published, checked when it is read.

A byte flipped on disk leaves a file's size as it was, so only a content hash finds it. Every
file of a generation is hashed (xxHash XXH3-64, several GB/s) in chunks of ``CHUNK_BYTES`` when
the generation is published (:func:`seal`, called from one place in ``retrieval.index.store``), and the
hashes go into ``manifest.json`` under ``checksums``, with a hash of the manifest itself.

Readers check the files whole on open (:meth:`Checks.verify_open`), except a ``vectors.npy`` above
``LAZY_ABOVE``: memory mapped and large, it is checked a chunk at a time the first time a row in
that chunk is read (:class:`CheckedVectors`), so a query pays only for the rows it touches. A generation written
before checksums has none: it opens as before and counts as "not verified".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ..errors import IndexDamagedError, IndexFormatError
from .layout import MANIFEST, VECTORS

ALGORITHM = "xxh3_64"
CHUNK_BYTES = 64 << 10
"""Hash granularity: a query's first read of a row checks the 64 KiB around it (a re-rank of a few hundred
candidate rows at 1M vectors hashes ~20 MB, a few ms). Each chunk's hash takes 16 hex digits in the
manifest, one string per file (28 KB per GB)."""
HEX = 16
_READ = 8 << 20  # consecutive chunks are read this much at a time
LAZY = frozenset({VECTORS})
"""Files checked chunk by chunk as they are read rather than whole on open, when larger than ``LAZY_ABOVE``."""
LAZY_ABOVE = 32 << 20
"""Smaller memory-mapped files are checked whole on open (32 MiB hash in ~5 ms from the page cache):
otherwise each of the first queries would pay for the chunks it touches."""


def rebuild_hint(index_dir: Path) -> str:
    return f"rebuild it with `python -m indexer build FOLDER --index {index_dir} --rebuild`"


def damaged(index_dir: Path, file: Path, what: str) -> IndexDamagedError:
    """The typed error for a damaged file: which file, what is wrong, and the command that recovers."""
    return IndexDamagedError(
        f"{file} {what}: the index at {index_dir} is damaged; {rebuild_hint(index_dir)}", path=str(file)
    )


def _hash(data: bytes | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def hash_file(path: Path, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    """Size and per-chunk hashes of ``path`` (the hashes as one string of ``HEX`` digits each)."""
    chunks: list[str] = []
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(_READ)
            if not block:
                break
            size += len(block)
            view = memoryview(block)
            chunks += [_hash(view[i : i + chunk_bytes]) for i in range(0, len(block), chunk_bytes)]
    return {"size": size, "chunks": "".join(chunks)}


def _count(entry: dict[str, Any]) -> int:
    return len(entry["chunks"]) // HEX


def _manifest_hash(data: dict[str, Any]) -> str:
    """Hash of the manifest's JSON with its own hash blanked, in ``Manifest.to_json``'s layout."""
    blank = dict(data)
    blank["checksums"] = {**data["checksums"], "manifest": ""}
    return _hash(json.dumps(blank, indent=2, sort_keys=True).encode())


def seal(gen: Path, previous: Path | None = None) -> None:
    """Hash every file of ``gen`` into its manifest. Files hard-linked from ``previous`` (a metadata-only
    update shares the vectors and the FAISS file) keep the hashes ``previous`` recorded for them,
    so a damaged shared file stays found and is not hashed again."""
    data = json.loads((gen / MANIFEST).read_bytes())
    before = _recorded(previous)
    files: dict[str, Any] = {}
    for path in sorted(p for p in gen.iterdir() if p.is_file() and p.name != MANIFEST):
        old = before.get(path.name)
        if old is not None and previous is not None and _same_file(path, previous / path.name):
            files[path.name] = old
        else:
            files[path.name] = hash_file(path)
    data["checksums"] = {"algorithm": ALGORITHM, "chunk_bytes": CHUNK_BYTES, "files": files, "manifest": ""}
    data["checksums"]["manifest"] = _manifest_hash(data)
    (gen / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True))


def _recorded(gen: Path | None) -> dict[str, Any]:
    if gen is None:
        return {}
    try:
        data = json.loads((gen / MANIFEST).read_bytes())
        sums = data.get("checksums") or {}
        if sums.get("algorithm") != ALGORITHM or sums.get("chunk_bytes") != CHUNK_BYTES:
            return {}
        return dict(sums.get("files") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_manifest(data: dict[str, Any]) -> None:
    """Raise IndexFormatError when a manifest that records its own hash does not match it."""
    sums = data.get("checksums")
    if not sums:
        return
    files = sums.get("files") if isinstance(sums, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(e, dict)
        and isinstance(e.get("chunks"), str)
        and len(e["chunks"]) % HEX == 0
        and isinstance(e.get("size"), int)
        for e in files.values()
    ):
        raise IndexFormatError("manifest.json holds checksums in an unknown layout")
    if sums.get("algorithm") != ALGORITHM:
        raise IndexFormatError(
            f"manifest.json's checksums use {sums.get('algorithm')!r}, this program knows {ALGORITHM}"
        )
    if sums.get("manifest") != _manifest_hash(data):
        raise IndexFormatError("manifest.json does not match its own checksum")


class Checks:
    """The recorded checksums of one generation, and which chunks of which files have been checked."""

    def __init__(self, index_dir: Path, gen: Path, checksums: dict[str, Any]) -> None:
        self.index_dir, self.gen = index_dir, gen
        self.files: dict[str, Any] = dict(checksums.get("files") or {})
        self.chunk_bytes = int(checksums.get("chunk_bytes") or CHUNK_BYTES)
        self._done: dict[str, np.ndarray] = {}

    @property
    def recorded(self) -> bool:
        """False for a generation written before checksums: nothing can be verified."""
        return bool(self.files)

    def names(self) -> list[str]:
        return sorted(self.files)

    def verify_file(self, name: str) -> None:
        """Check the whole of ``name`` (its size, then every chunk not yet checked)."""
        entry = self.files.get(name)
        if entry is None:
            return
        self.verify_chunks(name, range(_count(entry)))

    def verify_open(self, unread: Iterable[str] = ()) -> None:
        """What a reader checks on open: every file whole except the lazily checked ones, whose
        size and first chunk (the .npy header) are checked, and ``unread`` (files this reader does
        not read, such as the Parquet metadata beside its mapped Arrow copy), left to ``verify``."""
        skip = set(unread)
        for name in self.names():
            if name in skip:
                continue
            if name in LAZY and int(self.files[name]["size"]) > LAZY_ABOVE:
                self.verify_chunks(name, [0])
            else:
                self.verify_file(name)

    def verify_chunks(self, name: str, chunks: Iterable[int]) -> None:
        entry = self.files.get(name)
        if entry is None:
            return
        path = self.gen / name
        done = self._done.get(name)
        if done is None:
            size = path.stat().st_size
            if size != entry["size"]:
                raise damaged(self.index_dir, path, f"holds {size:,} bytes, {entry['size']:,} were written")
            done = self._done[name] = np.zeros(_count(entry), dtype=bool)
        todo = sorted({c for c in chunks if 0 <= c < len(done) and not done[c]})
        if not todo:
            return
        cb, per_read = self.chunk_bytes, max(1, _READ // self.chunk_bytes)
        with open(path, "rb", buffering=0) as f:
            i = 0
            while i < len(todo):  # a run of consecutive chunks in one read
                j = i + 1
                while j < len(todo) and todo[j] == todo[j - 1] + 1 and j - i < per_read:
                    j += 1
                first = todo[i]
                view = memoryview(os.pread(f.fileno(), cb * (j - i), first * cb))
                for c in todo[i:j]:
                    block = view[(c - first) * cb : (c - first + 1) * cb]
                    if _hash(block) != entry["chunks"][c * HEX : (c + 1) * HEX]:
                        raise damaged(
                            self.index_dir,
                            path,
                            f"does not match its checksum (bytes {c * cb:,}-{c * cb + len(block):,})",
                        )
                    done[c] = True
                i = j

    def wrap_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` (a memory map of ``vectors.npy``) as a :class:`CheckedVectors` when it has chunks left to check."""
        done = self._done.get(VECTORS)
        if VECTORS not in self.files or not isinstance(vectors, np.memmap) or (done is not None and done.all()):
            return vectors
        return CheckedVectors.of(vectors, self)


def _rows(key: Any, n: int) -> tuple[int, int] | np.ndarray | None:
    """The rows ``array[key]`` reads: a (start, stop) range, an array of row numbers, or None for all."""
    first = key[0] if isinstance(key, tuple) and key else key
    if isinstance(first, (int, np.integer)):
        r = int(first) % n if n else 0
        return (r, r + 1)
    if isinstance(first, slice):
        start, stop, step = first.indices(n)
        if step != 1:
            rows = np.arange(start, stop, step)
            return (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
        return (start, max(start, stop))
    if first is Ellipsis or first is None:
        return None
    arr = np.asarray(first)
    if arr.dtype == bool:
        return np.flatnonzero(arr)
    if arr.dtype.kind in "iu":
        return arr.ravel().astype(np.int64) % max(n, 1)
    return None


class CheckedVectors(np.memmap):
    """A memory-mapped ``vectors.npy`` whose rows are checked against their chunk's checksum the first
    time they are read through indexing (``v[rows]``, ``v[a:b]``); what indexing returns is a
    plain array."""

    _checks: Checks | None = None
    _header: int = 0

    @classmethod
    def of(cls, vectors: np.memmap, checks: Checks) -> CheckedVectors:
        out = vectors.view(cls)
        out._checks, out._header = checks, int(vectors.offset)
        return out

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self._checks = None  # a derived view (a slice, a transpose) is plain; indexing returns plain arrays

    def __getitem__(self, key: Any) -> Any:
        checks = self._checks
        if checks is not None and self.ndim == 2:
            self._check(checks, _rows(key, self.shape[0]))
        out = super().__getitem__(key)
        return out.view(np.ndarray) if isinstance(out, np.ndarray) else out

    def _check(self, checks: Checks, rows: tuple[int, int] | np.ndarray | None) -> None:
        row_bytes = self.shape[1] * self.itemsize
        size = self._header + self.shape[0] * row_bytes
        if rows is None:
            first, last = np.array([0]), np.array([max(0, size - 1)])
        elif isinstance(rows, tuple):
            if rows[1] <= rows[0]:
                return
            first, last = (
                np.array([self._header + rows[0] * row_bytes]),
                np.array([self._header + rows[1] * row_bytes - 1]),
            )
        else:
            if not len(rows):
                return
            first = self._header + rows * row_bytes
            last = first + row_bytes - 1
        cb = checks.chunk_bytes
        lo, hi = first // cb, last // cb
        if isinstance(rows, np.ndarray):
            chunks = np.unique(np.concatenate([lo, hi]))
        else:
            chunks = np.arange(int(lo[0]), int(hi[0]) + 1)
        checks.verify_chunks(VECTORS, (int(c) for c in chunks))
