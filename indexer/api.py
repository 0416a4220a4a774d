"""Library entry points: ``build``, ``update``, ``remove`` and ``stats``.

The UI, the tests and the command line all call these; none of them prints.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from retrieval.cores import TorchThreads
from retrieval.encoder import Encoder, select_device
from retrieval.errors import IndexNotFoundError, InvalidQueryError
from retrieval.manifest import Manifest
from retrieval.onnxexport import ensure_text_onnx
from retrieval.layout import CURRENT
from retrieval.reader import holds_photos, not_an_index
from retrieval.store import (
    IndexReader,
    WriterLock,
    live_generation,
    write_generation,
)

from . import distributed
from .catalog import BAD, Catalog, open_catalog
from .config import BadFile, BuildConfig, BuildReport, IndexStats, ProgressCallback, StageTimes
from .decode import DecodedBatch, iter_decoded
from .device_stage import DeviceDecoder, decode_stage
from .pipeline import EmbeddedBatch, Plan, assemble, is_excluded, start_embed
from .planning import count_touched, finish_unchanged, prepare, settle_retried
from .scan import ScannedFile, resolve_roots, scan
from .tag import tag_new_photos

def _open_live(index_dir: Path) -> IndexReader | None:
    return IndexReader.open(index_dir, mmap=True) if live_generation(index_dir) is not None else None


def _callback(progress: "bool | ProgressCallback | None", total: int) -> tuple[ProgressCallback | None, tqdm | None]:
    if progress is True:
        bar = tqdm(total=total, unit="img", desc="embedding", dynamic_ncols=True, smoothing=0.1)
        return (lambda done, _total: bar.update(done - bar.n)), bar
    return (progress if callable(progress) else None), None


def build(
    roots: Iterable["str | os.PathLike[str]"],
    index_dir: "str | os.PathLike[str]",
    config: BuildConfig = BuildConfig(),
    progress: "bool | ProgressCallback | None" = None,
    encoder: Encoder | None = None,
) -> BuildReport:
    """Index every image under ``roots`` into ``index_dir``, incrementally when it exists.

    The roots join those already in the index. ``progress`` is True for a tqdm bar or a
    callback ``(done, total)``. ``encoder`` reuses an already loaded model instead of
    creating ``config.model``.
    """
    index_dir, roots = Path(index_dir).resolve(), resolve_roots(roots)
    if str(index_dir) in roots:
        raise InvalidQueryError(f"{index_dir} is the folder of photos itself; an index needs a folder of its own: "
                                f"python -m indexer build {index_dir} --index INDEX_DIR")
    if index_dir.is_dir() and not (index_dir / CURRENT).exists() and holds_photos(index_dir, below=False):
        raise InvalidQueryError(f"{index_dir} is a folder of photos; give the index a folder of its own "
                                "(--index INDEX_DIR, new or empty)")
    return _run(index_dir, roots, config, progress, encoder)


def update(
    index_dir: "str | os.PathLike[str]",
    config: BuildConfig = BuildConfig(),
    progress: "bool | ProgressCallback | None" = None,
    encoder: Encoder | None = None,
) -> BuildReport:
    """Re-scan the roots stored in the index and bring it up to date."""
    index_dir = Path(index_dir).resolve()
    if live_generation(index_dir) is None:
        raise IndexNotFoundError(not_an_index(index_dir))
    return _run(index_dir, [], config, progress, encoder)


def _run(index_dir: Path, new_roots: list[str], config: BuildConfig,
         progress: "bool | ProgressCallback | None", encoder: Encoder | None) -> BuildReport:
    if config.device is not None:
        select_device(config.device)  # no GPU for --device cuda: say so before the index folder is made
    ctx = distributed.detect()
    if ctx.is_distributed:  # under torchrun: shard the files over the ranks (indexer/distributed.py)
        return distributed.build_distributed(index_dir, new_roots, config, ctx, progress, encoder,
                                             must_exist=not new_roots)
    started = time.perf_counter()
    with WriterLock(index_dir) as lock:
        catalog = open_catalog(index_dir, config.db_url, config.rebuild)
        try:
            return _run_locked(index_dir, new_roots, config, progress, lock, catalog, started, encoder)
        finally:
            catalog.close()


def _run_locked(index_dir: Path, new_roots: list[str], config: BuildConfig, progress: "bool | ProgressCallback | None",
                lock: WriterLock, catalog: Catalog, started: float, encoder: Encoder | None) -> BuildReport:
    prep = prepare(index_dir, new_roots, config, lock, catalog, encoder, config.device)
    if prep.nothing_to_do:
        return finish_unchanged(prep, catalog, started)
    encoder, report = prep.encoder, prep.report
    batches = _embed_all(prep.plan.todo, frozenset(prep.sha_rows), encoder, config, progress, report)
    count_touched(report, prep, ((it.file.path, it.sha256) for b in batches for it in b.reused))
    _write_and_record(index_dir, lock, catalog, encoder, config, prep.live, prep.base, prep.plan, batches,
                      prep.sha_rows, prep.roots, prep.bad_gone, report)
    tick = time.perf_counter()
    ensure_text_onnx(encoder)  # once per model and machine: text queries then need no torch
    report.timings.export_text = time.perf_counter() - tick
    report.timings.total = time.perf_counter() - started
    return report


def _write_and_record(index_dir: Path, lock: WriterLock, catalog: Catalog, encoder: Encoder, config: BuildConfig,
                      live: IndexReader | None, base: IndexReader | None, plan: Plan, batches: list[EmbeddedBatch],
                      sha_rows: dict[str, int], roots: list[str], bad_gone: list[str], report: BuildReport) -> None:
    """Write stage: publish the next generation, then record file states in the catalog."""
    t = report.timings
    tick = time.perf_counter()
    vectors, metadata = assemble(encoder.embed_dim, base.vectors if base else None, base.metadata if base else None,
                                 plan.keep_rows, batches, sha_rows)
    bad = [it for b in batches for it in b.bad]
    tagging = live.manifest.tagging if live else {}
    embedded = sum(len(b.new) for b in batches)  # assemble puts them last
    metadata = tag_new_photos(metadata, vectors, len(vectors) - embedded, tagging, encoder, report)
    requested = config.index_type or (live.manifest.ann_params.get("requested_factory") if live else None)
    manifest = Manifest(model_spec=report.model_spec, model_fingerprint=encoder.fingerprint,
                        embed_dim=encoder.embed_dim, roots=tuple(roots), bad_count=len(plan.known_bad) + len(bad),
                        tagging=tagging)
    written = write_generation(index_dir, vectors, metadata, manifest, ann_factory=requested, lock=lock)
    t.write = time.perf_counter() - tick
    generation = live_generation(index_dir)
    assert generation is not None

    tick = time.perf_counter()
    fresh = [it for b in batches for it in (*b.new, *b.reused)]
    catalog.record(
        generation=generation.name,
        ok=[(it.file.path, it.file.size, it.file.mtime, it.sha256 or "") for it in fresh],
        bad=[(it.file.path, it.file.size, it.file.mtime, it.sha256,
              f"{it.reason}: {it.detail}" if it.detail else it.reason or "") for it in bad],
        deleted=plan.gone + bad_gone,
    )
    t.catalog = time.perf_counter() - tick
    report.published, report.generation = True, generation.name
    report.count, report.index_type = written.count, written.index_type
    report.new_bad = [BadFile(it.file.path, it.reason or "", it.detail) for it in bad]
    settle_retried(report, plan)


def _embed_all(files: Sequence[ScannedFile], known_sha256: frozenset[str], encoder: Encoder, config: BuildConfig,
               progress: "bool | ProgressCallback | None", report: BuildReport) -> list[EmbeddedBatch]:
    """Decode (in workers, then JPEGs on the model's device if ``config.gpu_decode`` says so) and embed
    (here), overlapped; fills the report's counts and timings. On CUDA a batch's result is collected
    after the next batch has been decoded and started, so the GPU is not left idle while the host
    prepares it; the device's work being asynchronous, part of ``decode_device`` shows in ``embed``."""
    t = report.timings
    on_gpu = encoder.device.type == "cuda"
    dataset, on_device = decode_stage(files, encoder, config, known_sha256)
    report.gpu_decode = on_device is not None
    report.precision = encoder.resolved_precision if files else ""
    total = len(dataset)
    callback, bar = _callback(progress, total)
    out: list[EmbeddedBatch] = []
    done = 0
    threads = TorchThreads() if encoder.device.type == "cpu" else None  # as many as cores are free, batch by batch
    try:
        if callback:
            callback(0, total)
        batches = iter_decoded(dataset, config.resolved_batch_size(on_gpu), config.resolved_workers(on_gpu), pin=on_gpu,
                               niceness=config.resolved_worker_niceness(on_gpu),
                               on_inline=lambda why: setattr(report, "decoded_inline", why))
        in_flight: tuple[int, Callable[[], EmbeddedBatch]] | None = None  # files in the batch, its result
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            t.decode_wait += time.perf_counter() - tick
            if threads is not None:
                threads.adjust()
            started = (len(batch.items), _start_batch(batch, on_device, encoder, t)) if batch is not None else None
            if in_flight is not None:  # the previous batch's model run, done while this one was prepared
                tick = time.perf_counter()
                result = in_flight[1]()
                t.embed += time.perf_counter() - tick
                out.append(result)
                done += in_flight[0]
                _tally(report, result)
                if callback:
                    callback(done, total)
            if started is None:
                break
            in_flight = started
    finally:
        if bar is not None:
            bar.close()
        if threads is not None:
            threads.close()
            report.threads = sorted(threads.used)
    return out


def _start_batch(batch: DecodedBatch, on_device: DeviceDecoder | None, encoder: Encoder,
                 t: StageTimes) -> Callable[[], EmbeddedBatch]:
    """The main process's share of one batch: decode its JPEGs on the device (when on), start the model."""
    if on_device is not None:
        tick = time.perf_counter()
        batch = on_device(batch)
        t.decode_device += time.perf_counter() - tick
    tick = time.perf_counter()
    finish = start_embed(encoder, batch)
    t.embed += time.perf_counter() - tick
    t.decode_cpu += sum(it.seconds for it in batch.items)
    return finish


def _tally(report: BuildReport, result: EmbeddedBatch) -> None:
    report.embedded += len(result.new)
    report.reused += len(result.reused)
    report.device_decoded += result.on_device
    report.pillow_decoded += len(result.new) - result.on_device
    report.embedded_paths += [it.file.path for it in result.new]
    report.reused_paths += [it.file.path for it in result.reused]


def remove(paths: Iterable["str | os.PathLike[str]"], index_dir: "str | os.PathLike[str]",
           config: BuildConfig = BuildConfig()) -> BuildReport:
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
            linked = _reached_only_through(index_dir, [r for r in live.manifest.roots if r not in roots], roots)
            dropped = [is_excluded(p, target_set) or p in linked for p in all_paths]
            keep = [i for i, drop in enumerate(dropped) if not drop]
            gone = [p for p, drop in zip(all_paths, dropped) if drop]
            report = BuildReport(index_dir=str(index_dir), model_spec=live.manifest.model_spec,
                                 removed=len(gone), removed_paths=gone, removing=True, count=len(live),
                                 index_type=live.manifest.index_type,
                                 not_indexed=[t for t in targets if not any(is_excluded(p, {t}) for p in gone)])
            if gone or roots != live.manifest.roots:
                idx = np.asarray(keep, dtype=np.int64)
                requested = live.manifest.ann_params.get("requested_factory")
                manifest = live.manifest.with_(roots=roots, ann_params={})
                written = write_generation(index_dir, np.asarray(live.vectors[idx], np.float32),
                                           live.metadata.take(idx), manifest, ann_factory=requested, lock=lock)
                report.count, report.index_type, report.published = written.count, written.index_type, True
            generation = live_generation(index_dir)
            report.generation = generation.name if generation else None
            bad_under = [p for p in catalog.files(BAD) if is_excluded(p, target_set)]  # not the index's any more
            catalog.record(generation=report.generation, removed=targets, deleted=bad_under)  # kept out either way
        finally:
            catalog.close()
    report.timings.total = time.perf_counter() - started
    return report


def _reached_only_through(index_dir: Path, dropped_roots: list[str], roots_left: Sequence[str]) -> set[str]:
    """Photos that folders the index no longer holds reached through links (their paths lie
    outside them) and that no remaining folder holds: they go with those folders."""
    if not dropped_roots:
        return set()
    there = [r for r in dropped_roots if os.path.isdir(r)]
    inside = {*dropped_roots, *roots_left}
    return {f.path for f in scan(there, skip_dirs=[str(index_dir)]) if not is_excluded(f.path, inside)}


def stats(index_dir: "str | os.PathLike[str]", db_url: str | None = None) -> IndexStats:
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
        index_dir=str(reader.path), generation=reader.generation_dir.name, model_spec=m.model_spec,
        model_fingerprint=m.model_fingerprint, embed_dim=m.embed_dim, count=len(reader), index_type=m.index_type,
        build_time=m.build_time, roots=list(m.roots), bad_count=len(bad), catalog_url=catalog.url,
        file_types=dict(sorted(types.items())),
        bad_files=[BadFile(s.path, *(s.reason or "").split(": ", 1)) for s in bad], tagging=dict(m.tagging),
    )
