"""Library entry points: ``build``, ``update``, ``remove`` and ``stats``.

The UI, the tests and the command line all call these; none of them prints.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from retrieval.errors import IndexNotFoundError, InvalidQueryError
from retrieval.index.layout import CURRENT
from retrieval.index.manifest import Manifest
from retrieval.index.reader import holds_photos, not_an_index
from retrieval.index.store import (
    IndexReader,
    WriterLock,
    live_generation,
    write_generation,
)
from retrieval.models.encoder import Encoder, select_device
from retrieval.models.onnxexport import ensure_text_onnx
from retrieval.ranks import detect

from . import distributed
from .catalog import BAD, Catalog, open_catalog
from .config import BadFile, BuildConfig, BuildReport, IndexStats, ProgressCallback
from .embedding import embed_all
from .pipeline import EmbeddedBatch, assemble, is_excluded
from .planning import Prepared, finish_unchanged, prepare
from .publish import Embedded, next_manifest, publish, requested_factory
from .scan import resolve_roots, scan
from .tag import tag_new_photos
from .text import ocr_for_build, read_text_for_build, read_unchanged_index
from .verify import last_verification


def _open_live(index_dir: Path) -> IndexReader | None:
    return IndexReader.open(index_dir, mmap=True) if live_generation(index_dir) is not None else None


def build(
    roots: Iterable[str | os.PathLike[str]],
    index_dir: str | os.PathLike[str],
    config: BuildConfig = BuildConfig(),
    progress: bool | ProgressCallback | None = None,
    encoder: Encoder | None = None,
    lock: WriterLock | None = None,
) -> BuildReport:
    """Index every image under ``roots`` into ``index_dir``, incrementally when it exists.

    The roots join those already in the index. ``progress`` is True for a tqdm bar or a
    callback ``(done, total)``. ``encoder`` reuses an already loaded model instead of
    creating ``config.model``. ``lock``: the caller's held writer lock on ``index_dir``
    (``indexer watch`` holds one from update to update), instead of taking one for this run.
    """
    index_dir, roots = Path(index_dir).resolve(), resolve_roots(roots)
    if str(index_dir) in roots:
        raise InvalidQueryError(
            f"{index_dir} is the folder of photos itself; an index needs a folder of its own: "
            f"python -m indexer build {index_dir} --index INDEX_DIR"
        )
    if index_dir.is_dir() and not (index_dir / CURRENT).exists() and holds_photos(index_dir, below=False):
        raise InvalidQueryError(
            f"{index_dir} is a folder of photos; give the index a folder of its own (--index INDEX_DIR, new or empty)"
        )
    return _run(index_dir, roots, config, progress, encoder, lock)


def update(
    index_dir: str | os.PathLike[str],
    config: BuildConfig = BuildConfig(),
    progress: bool | ProgressCallback | None = None,
    encoder: Encoder | None = None,
    lock: WriterLock | None = None,
) -> BuildReport:
    """Re-scan the roots stored in the index and bring it up to date (``lock`` as for :func:`build`)."""
    index_dir = Path(index_dir).resolve()
    if live_generation(index_dir) is None:
        raise IndexNotFoundError(not_an_index(index_dir))
    return _run(index_dir, [], config, progress, encoder, lock)


def _writer_lock(index_dir: Path, lock: WriterLock | None) -> contextlib.AbstractContextManager[WriterLock]:
    """A fresh lock for this run, or the caller's, which stays held after it."""
    if lock is None:
        return WriterLock(index_dir)
    if not lock.held or lock.index_dir != index_dir:
        raise ValueError(f"the lock given is not held on {index_dir}")
    return contextlib.nullcontext(lock)


def _run(
    index_dir: Path,
    new_roots: list[str],
    config: BuildConfig,
    progress: bool | ProgressCallback | None,
    encoder: Encoder | None,
    lock: WriterLock | None = None,
) -> BuildReport:
    if config.device is not None:
        select_device(config.device)  # no GPU for --device cuda: say so before the index folder is made
    ctx = detect()
    if ctx.is_distributed:  # under torchrun: shard the files over the ranks (indexer/distributed.py)
        return distributed.build_distributed(
            index_dir, new_roots, config, ctx, progress, encoder, must_exist=not new_roots
        )
    started = time.perf_counter()
    with _writer_lock(index_dir, lock) as lock:
        catalog = open_catalog(index_dir, config.db_url, config.rebuild)
        try:
            return _run_locked(index_dir, new_roots, config, progress, lock, catalog, started, encoder)
        finally:
            catalog.close()


def _run_locked(
    index_dir: Path,
    new_roots: list[str],
    config: BuildConfig,
    progress: bool | ProgressCallback | None,
    lock: WriterLock,
    catalog: Catalog,
    started: float,
    encoder: Encoder | None,
) -> BuildReport:
    prep = prepare(index_dir, new_roots, config, lock, catalog, encoder, config.device)
    if prep.nothing_to_do:
        report = finish_unchanged(prep, catalog, started)
        if config.ocr and prep.live is not None and not prep.live.manifest.ocr:  # --ocr on an index without text
            read_unchanged_index(index_dir, lock, progress, report)
            report.timings.total = time.perf_counter() - started
        return report
    batches = embed_all(prep.plan.todo, frozenset(prep.sha_rows), prep.encoder, config, progress, prep.report)
    embedded = Embedded.of(batches)
    report = publish(
        prep, catalog, embedded, lambda: _write(index_dir, lock, config, prep, batches, len(embedded.bad), progress)
    )
    tick = time.perf_counter()
    ensure_text_onnx(prep.encoder)  # once per model and machine: text queries then need no torch
    report.timings.export_text = time.perf_counter() - tick
    report.timings.total = time.perf_counter() - started
    return report


def _write(
    index_dir: Path,
    lock: WriterLock,
    config: BuildConfig,
    prep: Prepared,
    batches: list[EmbeddedBatch],
    new_bad: int,
    progress: bool | ProgressCallback | None = None,
) -> tuple[str, Manifest]:
    """Kept, reused and new rows as one generation, the new photos tagged as the index is and their
    text read when the index has OCR on; published."""
    encoder = prep.encoder
    assert encoder is not None
    base = prep.base
    vectors, metadata = assemble(
        encoder.embed_dim,
        base.vectors if base else None,
        base.metadata if base else None,
        prep.plan.keep_rows,
        batches,
        prep.sha_rows,
    )
    manifest = next_manifest(
        prep, encoder, new_bad, ocr_for_build(config.ocr, prep.live.manifest if prep.live else None)
    )
    embedded = sum(len(b.new) for b in batches)  # assemble puts them last
    metadata = tag_new_photos(metadata, vectors, len(vectors) - embedded, manifest.tagging, encoder, prep.report)
    metadata = read_text_for_build(metadata, manifest.ocr, progress, prep.report)
    written = write_generation(
        index_dir, vectors, metadata, manifest, ann_factory=requested_factory(config, prep), lock=lock
    )
    generation = live_generation(index_dir)
    assert generation is not None
    return generation.name, written


def remove(
    paths: Iterable[str | os.PathLike[str]], index_dir: str | os.PathLike[str], config: BuildConfig = BuildConfig()
) -> BuildReport:
    """Take files or whole folders out of the index; they stay out on later updates."""
    index_dir = Path(index_dir).resolve()
    targets = resolve_roots(paths, must_exist=False)
    started = time.perf_counter()
    if live_generation(index_dir) is None:  # before the lock, which would make the folder
        raise IndexNotFoundError(not_an_index(index_dir))
    with WriterLock(index_dir) as lock:
        live = _open_live(index_dir)
        if live is None:
            raise IndexNotFoundError(not_an_index(index_dir))
        catalog = open_catalog(index_dir, config.db_url)
        try:
            catalog.reconcile(live.generation_dir.name, live.metadata)
            target_set = set(targets)
            all_paths = live.metadata.column("path").to_pylist()
            roots = tuple(r for r in live.manifest.roots if not is_excluded(r, target_set))
            linked = _reached_only_through(
                index_dir, [r for r in live.manifest.roots if r not in roots], roots, live.manifest.follow_links
            )
            dropped = [is_excluded(p, target_set) or p in linked for p in all_paths]
            keep = [i for i, drop in enumerate(dropped) if not drop]
            gone = [p for p, drop in zip(all_paths, dropped) if drop]
            report = BuildReport(
                index_dir=str(index_dir),
                model_spec=live.manifest.model_spec,
                removed=len(gone),
                removed_paths=gone,
                removing=True,
                count=len(live),
                index_type=live.manifest.index_type,
                not_indexed=[t for t in targets if not any(is_excluded(p, {t}) for p in gone)],
            )
            if gone or roots != live.manifest.roots:
                idx = np.asarray(keep, dtype=np.int64)
                requested = live.manifest.ann_params.get("requested_factory")
                manifest = live.manifest.with_(roots=roots, ann_params={})
                written = write_generation(
                    index_dir,
                    np.asarray(live.vectors[idx], np.float32),
                    live.metadata.take(idx),
                    manifest,
                    ann_factory=requested,
                    lock=lock,
                )
                report.count, report.index_type, report.published = written.count, written.index_type, True
            generation = live_generation(index_dir)
            report.generation = generation.name if generation else None
            bad_under = [p for p in catalog.files(BAD) if is_excluded(p, target_set)]  # not the index's any more
            catalog.record(generation=report.generation, removed=targets, deleted=bad_under)  # kept out either way
        finally:
            catalog.close()
    report.timings.total = time.perf_counter() - started
    return report


def _reached_only_through(
    index_dir: Path, dropped_roots: list[str], roots_left: Sequence[str], follow_links: bool
) -> set[str]:
    """Photos that folders the index no longer holds reached through links (their paths lie
    outside them) and that no remaining folder holds: they go with those folders."""
    if not dropped_roots:
        return set()
    there = [r for r in dropped_roots if os.path.isdir(r)]
    inside = {*dropped_roots, *roots_left}
    return {
        f.path
        for f in scan(there, skip_dirs=[str(index_dir)], follow_links=follow_links)
        if not is_excluded(f.path, inside)
    }


def stats(index_dir: str | os.PathLike[str], db_url: str | None = None) -> IndexStats:
    """Counts, model, index type, build time and bad files of an index."""
    reader = IndexReader.open(index_dir)
    catalog = open_catalog(reader.path, db_url)
    try:
        bad = sorted(catalog.files(BAD).values(), key=lambda s: s.path)
    finally:
        catalog.close()
    m = reader.manifest
    types = Counter(reader.metadata.column("file_type").to_pylist())
    return IndexStats(
        index_dir=str(reader.path),
        generation=reader.generation_dir.name,
        model_spec=m.model_spec,
        model_fingerprint=m.model_fingerprint,
        embed_dim=m.embed_dim,
        count=len(reader),
        index_type=m.index_type,
        build_time=m.build_time,
        roots=list(m.roots),
        bad_count=len(bad),
        catalog_url=catalog.url,
        file_types=dict(sorted(types.items())),
        bad_files=[BadFile(s.path, *(s.reason or "").split(": ", 1)) for s in bad],
        tagging=dict(m.tagging),
        ocr=dict(m.ocr),
        text_read=len(reader) - int(reader.metadata.column("ocr_text").null_count),
        checksums=reader.checks.recorded,
        verified=_verified(reader),
    )


def _verified(reader: IndexReader) -> str:
    last = last_verification(reader.path)
    if last is None or last.generation != reader.generation_dir.name:
        return ""
    return f"{last.at}: {last.outcome}"
