"""Writing the on-disk index: generation directories published atomically through ``CURRENT``.

A writer holds ``DIR/.lock``, writes a complete ``gen-*`` directory, fsyncs it, swaps
``CURRENT`` with ``os.replace`` and then removes every generation except the new one and
the one before it. A reader resolves ``CURRENT`` once, so it never sees a half-written
index, and a writer killed at any moment leaves the previous generation live.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import fsync_path, replacing
from ..errors import FileWriteError, IndexFormatError, IndexLockedError, IndexNotFoundError, IndexWriteError
from ..units import format_bytes
from . import ann
from .checksums import seal
from .layout import (  # noqa: F401  (the layout's names are part of this module's API)
    CATALOG,
    CURRENT,
    GEN_PREFIX,
    INDEX_FILE,
    LOCK,
    MANIFEST,
    MAP_METADATA_ABOVE,
    MAPPED_METADATA,
    METADATA,
    VECTORS,
    catalog_url,
    live_generation,
)
from .manifest import SCHEMA_VERSION, Manifest, conform_metadata, utc_now_iso
from .reader import IndexReader

__all__ = [
    "SCHEMA_VERSION",
    "Manifest",
    "IndexReader",
    "WriterLock",
    "new_generation",
    "write_generation",
    "update_metadata",
    "live_generation",
    "remove_stale_generations",
    "catalog_url",
]


class WriterLock:
    """Exclusive writer lock on an index directory (``fcntl.flock`` on ``DIR/.lock``).

    Forked children (decode workers) close their copy at once, so a killed writer's
    orphaned workers never keep the index locked.
    """

    def __init__(self, index_dir: str | os.PathLike[str], holder: str = "") -> None:
        self.index_dir = Path(index_dir).resolve()
        self.holder = holder  # who holds it, written into the lock file for the error another writer gets
        self._fd: int | None = None
        os.register_at_fork(after_in_child=_close_in_child(weakref.ref(self)))

    def _forget_in_child(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def acquire(self) -> WriterLock:
        if self.index_dir.exists() and not self.index_dir.is_dir():
            raise IndexNotFoundError(
                f"{self.index_dir} is a file, not an index folder; give --index a folder (it is made if missing)"
            )
        try:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.index_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only disk, no permission, a full disk
            reason = refused_write(exc)
            if reason is None:
                raise
            where = next((p for p in (self.index_dir, *self.index_dir.parents) if p.is_dir()), None)
            raise write_error(f"the index at {self.index_dir}", where, reason, "nothing was changed") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            raise IndexLockedError(
                f"another process is writing the index at {self.index_dir}" + (f": {holder}" if holder else "")
            ) from exc
        self._fd = fd
        _write_holder(fd, self.holder)
        return self

    def release(self) -> None:
        if self._fd is not None:
            _write_holder(self._fd, "")
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_holder(fd: int, holder: str) -> None:
    """Say in the lock file who holds it (a long-lived writer such as ``indexer watch`` names
    itself). Only a courtesy for the message: a disk that refuses it leaves the lock as good."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        if holder:
            os.pwrite(fd, holder.encode("utf-8"), 0)


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 2048, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _close_in_child(ref: weakref.ref[WriterLock]) -> Callable[[], None]:
    def close() -> None:
        lock = ref()
        if lock is not None:
            lock._forget_in_child()

    return close


@contextlib.contextmanager
def _writer(index_dir: Path, lock: WriterLock | None) -> Iterator[WriterLock]:
    if lock is not None:
        if not lock.held or lock.index_dir != index_dir.resolve():
            raise IndexLockedError(f"the writer lock passed in does not hold {index_dir}")
        yield lock
        return
    with WriterLock(index_dir) as own:
        yield own


def remove_stale_generations(index_dir: str | os.PathLike[str], lock: WriterLock) -> list[str]:
    """Delete generations newer than the live one (left by killed builds). Needs the writer lock."""
    index_dir = Path(index_dir)
    live = _live_if_readable(index_dir)
    if not lock.held or live is None:
        return []
    stale = [p for p in index_dir.glob(f"{GEN_PREFIX}*") if p.is_dir() and p.name > live.name]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in stale]


def _live_if_readable(index_dir: Path) -> Path | None:
    try:
        return live_generation(index_dir)
    except IndexFormatError:
        return None


def _new_generation_dir(index_dir: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    gen = index_dir / f"{GEN_PREFIX}{stamp}-{secrets.token_hex(4)}"
    gen.mkdir()
    return gen


def _publish(index_dir: Path, gen: Path) -> None:
    """Make ``gen`` live atomically, then drop generations older than the previous one."""
    previous = _live_if_readable(index_dir)  # a damaged CURRENT is what a rebuild replaces
    seal(gen, previous)
    for child in gen.iterdir():
        fsync_path(child)
    fsync_path(gen)
    with replacing(index_dir / CURRENT, durable=True) as tmp:
        tmp.write_text(gen.name + "\n")
    keep = {gen.name} | ({previous.name} if previous is not None else set())
    for child in index_dir.iterdir():
        if child.name.startswith(GEN_PREFIX) and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith(f".{CURRENT}.") and child.name.endswith(".tmp"):
            child.unlink(missing_ok=True)


_REFUSED_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
)  # ENOTDIR: a file where a folder was to be
_SPACE_WORDS = (
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
    "database or disk is full",
    "disk I/O error",
)
_REFUSED_WORDS = (*_SPACE_WORDS, "Read-only file system", "Permission denied", "attempt to write a readonly database")
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")  # numpy's tofile/np.save: errno is lost
_SHORT_WRITE_REASON = "the disk took only"  # a short write is a space problem too


def refused_write(exc: BaseException) -> str | None:
    """Why the disk refused a write, when ``exc`` is that (full, over quota, file too large,
    read-only, no permission); else None. FAISS reports these as RuntimeError, SQLite as
    OperationalError, with the operating system's words in their text, and numpy as a short write."""
    if isinstance(exc, OSError) and exc.errno in _REFUSED_ERRNOS:
        return os.strerror(exc.errno)
    text = str(exc)
    short = _SHORT_WRITE.search(text) if isinstance(exc, OSError) else None
    if short:
        return f"{_SHORT_WRITE_REASON} {int(short[2]):,} of {int(short[1]):,} bytes"
    return next((words for words in _REFUSED_WORDS if words in text), None)


def write_error(
    what: str,
    where: Path | None,
    reason: str,
    outcome: str,
    needs: int | None = None,
    kind: type[FileWriteError] = IndexWriteError,
) -> FileWriteError:
    """The typed error (``kind``) for a refused write of ``what``; when the disk ran out of room, with
    the free space at ``where`` (a local folder) and, when known, about how many bytes the write ``needs``."""
    detail = ""
    if reason in _SPACE_WORDS or reason.startswith(_SHORT_WRITE_REASON):
        space = [f"about {format_bytes(needs)} needed"] if needs else []
        if where is not None:
            with contextlib.suppress(OSError):
                space.append(f"{format_bytes(shutil.disk_usage(where).free)} free there")
        detail = f" ({', '.join(space)})" if space else ""
    return kind(f"could not write {what}: {reason}{detail}; {outcome}")


@contextlib.contextmanager
def writes_refused_as_errors(
    what: str,
    outcome: str,
    where: Path | None = None,
    needs: int | None = None,
    kind: type[FileWriteError] = FileWriteError,
    catching: type[Exception] | tuple[type[Exception], ...] = (OSError, RuntimeError),
) -> Iterator[None]:
    """Inside, a write the file system refuses (:func:`refused_write`) becomes ``kind`` (see
    :func:`write_error`) naming ``what`` and the file, with ``outcome`` (what is still intact, what
    to do next). An error that names a file outside ``where`` (reading an input, say) is left as
    it is. ``catching``: the exception types the writes inside report refusals with."""
    try:
        yield
    except catching as exc:
        reason = refused_write(exc)
        name = getattr(exc, "filename", None)
        outside = name is not None and where is not None and not Path(name).resolve().is_relative_to(where.resolve())
        if reason is None or outside:
            raise
        raise write_error(f"{what}{f' ({name})' if name else ''}", where, reason, outcome, needs, kind) from exc


@contextlib.contextmanager
def new_generation(
    index_dir: str | os.PathLike[str], lock: WriterLock | None = None, needs: int | None = None
) -> Iterator[Path]:
    """Hold the writer lock and yield an empty generation directory to fill.

    When the block finishes, the generation is published atomically; when it or the publishing
    raises, the directory is removed and the live index is untouched. A write the disk refuses
    (full, read-only...) raises :class:`IndexWriteError` saying so, with ``needs`` (the bytes the
    generation should take, when the writer knows) beside the free space.
    """
    index_dir = Path(index_dir).resolve()
    with _writer(index_dir, lock):
        gen: Path | None = None
        try:
            gen = _new_generation_dir(index_dir)
            yield gen
            _publish(index_dir, gen)
        except BaseException as exc:
            live = _live_name(index_dir)
            if gen is not None and live == gen.name:  # published; only the clean-up after it failed
                raise
            if gen is not None:
                shutil.rmtree(gen, ignore_errors=True)
            reason = refused_write(exc)
            if reason is None:
                raise
            outcome = f"the index is unchanged ({live} is still live)" if live else "no index was published"
            raise write_error(f"a new index generation in {index_dir}", index_dir, reason, outcome, needs) from exc


def _live_name(index_dir: Path) -> str | None:
    try:
        live = live_generation(index_dir)
    except IndexFormatError:
        return None
    return live.name if live is not None else None


def write_metadata(gen: Path, metadata: pa.Table) -> None:
    """The generation's Parquet metadata, plus its memory-mappable Arrow copy above ``MAP_METADATA_ABOVE`` rows."""
    pq.write_table(metadata, gen / METADATA, compression="zstd")
    if metadata.num_rows > MAP_METADATA_ABOVE:
        table = metadata.combine_chunks()  # one batch: row lookups need no chunk search
        with pa.OSFile(str(gen / MAPPED_METADATA), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table, max_chunksize=max(1, table.num_rows))


def write_generation(
    index_dir: str | os.PathLike[str],
    vectors: np.ndarray,
    metadata: pa.Table,
    manifest: Manifest,
    ann_factory: str | None = None,
    *,
    lock: WriterLock | None = None,
) -> Manifest:
    """Build the ANN index over ``vectors`` and publish a complete new generation.

    Row ``i`` of ``vectors`` is FAISS id ``i`` and metadata row ``i``. Returns the manifest
    as written (count, index type and build time filled in).
    """
    index_dir = Path(index_dir).resolve()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != manifest.embed_dim:
        raise IndexFormatError(f"vectors of shape {vectors.shape} do not match embed_dim {manifest.embed_dim}")
    metadata = conform_metadata(metadata)
    if metadata.num_rows != len(vectors):
        raise IndexFormatError(f"{metadata.num_rows} metadata rows for {len(vectors)} vectors")
    factory = ann_factory or ann.choose_factory(len(vectors), manifest.embed_dim)
    flat_bytes = 4 * vectors.size if factory.startswith("Flat") else 0  # IVF-PQ codes are small beside the vectors
    needs = 2 * vectors.size + flat_bytes + metadata.nbytes
    with new_generation(index_dir, lock, needs=needs) as gen:
        stored = vectors.astype(np.float16)
        index = ann.build(stored, factory)  # converts float16 in chunks, no full float32 copy
        ann.save(index, gen / INDEX_FILE)
        np.save(gen / VECTORS, stored)
        write_metadata(gen, metadata)
        params = dict(manifest.ann_params)
        params.setdefault("requested_factory", ann_factory)
        written = manifest.with_(count=len(vectors), index_type=factory, ann_params=params, build_time=utc_now_iso())
        (gen / MANIFEST).write_text(written.to_json())
    return written


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def update_metadata(
    index_dir: str | os.PathLike[str],
    metadata: pa.Table,
    *,
    lock: WriterLock | None = None,
    tagging: dict[str, Any] | None = None,
    ocr: dict[str, Any] | None = None,
) -> Manifest:
    """Publish a generation with new metadata and the live generation's vectors and FAISS file.

    ``metadata`` must have the live table's row count and path order (tags change, rows do not).
    ``tagging`` replaces the manifest's record of how the index is tagged (None keeps it), and
    ``ocr`` its record of how the text in the photos is read.
    """
    index_dir = Path(index_dir).resolve()
    metadata = conform_metadata(metadata)
    with new_generation(index_dir, lock) as gen:
        reader = IndexReader.open(index_dir, mmap=False)
        if metadata.num_rows != len(reader):
            raise IndexFormatError(f"{metadata.num_rows} metadata rows for an index of {len(reader)}")
        if not metadata.column("path").equals(reader.metadata.column("path")):
            raise IndexFormatError("the new metadata's paths are not the live index's paths in the same order")
        for name in (INDEX_FILE, VECTORS, "index.ivfdata"):  # .ivfdata: on-disk IVF lists (indexer.merge)
            if name == INDEX_FILE or name == VECTORS or (reader.generation_dir / name).exists():
                _link_or_copy(reader.generation_dir / name, gen / name)
        write_metadata(gen, metadata)
        written = reader.manifest.with_(build_time=utc_now_iso())
        if tagging is not None:
            written = written.with_(tagging=tagging)
        if ocr is not None:
            written = written.with_(ocr=ocr)
        (gen / MANIFEST).write_text(written.to_json())
    return written
