"""Text in the photos of an index: read it with the OCR engine and store it with each photo.

Each row's ``ocr_text`` holds the lines read in the photo ("" when it holds none; null while it
has not been read) and ``ocr_confidence`` the engine's confidence in them. The manifest keeps how
the text was read (``Manifest.ocr``); every later build or update of such an index reads the text
of the photos it adds, as ``indexer tag`` makes them tag new photos (``indexer/tag.py``).

Text can be read in the build (``python -m indexer build PHOTOS --ocr``) or afterwards, as its own
incremental step: ``python -m indexer ocr --index DIR`` reads the photos that have no text yet and
publishes what it has read every ``checkpoint`` photos, so a library is searchable by content at
once and by text as the reading goes on, and an interrupted run loses little. A photo the engine
fails on keeps no text (it is tried again next time) and is counted in the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from retrieval.index.manifest import Manifest
from retrieval.index.store import IndexReader, WriterLock, update_metadata

from .config import BadFile, BuildReport, ProgressCallback
from .ocr import ENGINE_NAME, OcrEngine, OcrSettings

DEFAULT_CHECKPOINT = 2000  # photos read between two published generations of `indexer ocr`


@dataclass
class TextReading:
    """What one pass of reading text did; ``seconds`` is its wall time."""

    read: int = 0
    with_text: int = 0
    failed: list[BadFile] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def photos_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: TextReading) -> None:
        self.read += other.read
        self.with_text += other.with_text
        self.failed += other.failed
        self.seconds += other.seconds

    def summary(self) -> str:
        failed = f", {len(self.failed)} failed (no text kept; tried again next time)" if self.failed else ""
        return (
            f"text: read {self.read} photo(s), {self.with_text} with text{failed}, "
            f"{self.photos_per_second:.1f} photos/s"
        )


def ocr_record(settings: OcrSettings) -> dict[str, Any]:
    """What ``Manifest.ocr`` keeps: the engine, and the settings later builds read new photos with."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        engine_version = version("rapidocr-onnxruntime")
    except PackageNotFoundError:  # pragma: no cover - the engine was imported, so it is installed
        engine_version = ""
    return {
        "engine": ENGINE_NAME,
        "version": engine_version,
        "gate_side": settings.gate_side,
        "min_side": settings.min_side,
        "max_side": settings.max_side,
        "min_score": settings.min_score,
    }


def settings_from(record: dict[str, Any]) -> OcrSettings:
    keys = ("gate_side", "min_side", "max_side", "min_score")
    return OcrSettings(**{k: record[k] for k in keys if k in record})


def unread_rows(metadata: pa.Table) -> np.ndarray:
    """Rows whose text has not been read (null ``ocr_text``)."""
    return np.flatnonzero(pc.is_null(metadata.column("ocr_text")).to_numpy(zero_copy_only=False))


def _progress(progress: bool | ProgressCallback | None, total: int) -> tuple[Callable[[int], None], tqdm | None]:
    if progress is True:
        bar = tqdm(total=total, unit="img", desc="reading text", dynamic_ncols=True, smoothing=0.1)
        return (lambda done: bar.update(done - bar.n)), bar
    if callable(progress):
        return (lambda done: progress(done, total)), None
    return (lambda done: None), None


def read_rows(
    metadata: pa.Table, rows: Iterable[int], engine: OcrEngine, progress: bool | ProgressCallback | None = None
) -> tuple[pa.Table, TextReading]:
    """``metadata`` with the text of ``rows`` read from their files (the other rows kept as they are)."""
    rows = np.asarray(list(rows), np.int64)
    started = time.perf_counter()
    texts = metadata.column("ocr_text").to_pylist()
    scores = metadata.column("ocr_confidence").to_pylist()
    paths = metadata.column("path").take(pa.array(rows)).to_pylist() if len(rows) else []
    reading = TextReading()
    update, bar = _progress(progress, len(rows))
    try:
        update(0)
        for done, (row, (path, found)) in enumerate(zip(rows, engine.read_files(paths)), 1):
            if isinstance(found, Exception):
                reading.failed.append(BadFile(path, "ocr_failed", f"{type(found).__name__}: {found}"[:300]))
            else:
                texts[row], scores[row] = found.text, found.confidence
                reading.read += 1
                reading.with_text += bool(found.lines)
            update(done)
    finally:
        if bar is not None:
            bar.close()
    table = _with_text(metadata, texts, scores)
    reading.seconds = time.perf_counter() - started
    return table, reading


def _with_text(table: pa.Table, texts: list, scores: list) -> pa.Table:
    for name, values in (("ocr_text", texts), ("ocr_confidence", scores)):
        column = table.column(name)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=column.type))
    return table


def read_new_text(
    metadata: pa.Table, ocr: dict[str, Any], progress: bool | ProgressCallback | None
) -> tuple[pa.Table, TextReading | None]:
    """A build's step: read the text of the rows that have none yet, when the index reads text
    (``ocr``, the manifest's record). Returns the table and what was read (None: not on)."""
    if not ocr:
        return metadata, None
    rows = unread_rows(metadata)
    if not len(rows):
        return metadata, TextReading()
    return read_rows(metadata, rows, OcrEngine(settings_from(ocr)), progress)


def ocr_for_build(wanted: bool, live: Manifest | None) -> dict[str, Any]:
    """How a build reads text: as the index does, or (``--ocr``) with the default settings from now on."""
    if live is not None and live.ocr:
        return live.ocr
    return ocr_record(OcrSettings()) if wanted else {}


def read_text_for_build(
    metadata: pa.Table, ocr: dict[str, Any], progress: bool | ProgressCallback | None, report: BuildReport
) -> pa.Table:
    """A build's OCR stage: the text of the photos that have none yet, counted on ``report``."""
    tick = time.perf_counter()
    metadata, reading = read_new_text(metadata, ocr, progress)
    if reading is not None:
        report.ocr_read, report.ocr_with_text, report.ocr_failed = reading.read, reading.with_text, reading.failed
        report.timings.ocr = time.perf_counter() - tick
    return metadata


def read_unchanged_index(
    index_dir: Path, lock: WriterLock, progress: bool | ProgressCallback | None, report: BuildReport
) -> None:
    """Read the text of the live generation's photos that have none (``build --ocr`` on an index whose
    photos have not changed; a distributed build's new photos), counted on ``report``."""
    from retrieval.index.store import live_generation

    tick = time.perf_counter()
    read = read_index_text(index_dir, lock, OcrSettings(), progress)
    report.ocr_read, report.ocr_with_text = read.reading.read, read.reading.with_text
    report.ocr_failed, report.timings.ocr = read.reading.failed, time.perf_counter() - tick
    live = live_generation(index_dir)
    report.published, report.generation = True, live.name if live else None


@dataclass(frozen=True)
class OcrConfig:
    index_dir: Path
    settings: OcrSettings = OcrSettings()
    checkpoint: int = DEFAULT_CHECKPOINT


@dataclass
class OcrReport:
    """What ``indexer ocr`` did: ``already`` photos had text read before it ran."""

    index_dir: str
    total: int = 0
    already: int = 0
    reading: TextReading = field(default_factory=TextReading)
    manifest: Manifest | None = None

    def summary(self) -> str:
        lines = [
            f"index: {self.index_dir} ({self.total} photos; {self.already} had been read before)",
            self.reading.summary(),
        ]
        lines += [f"ocr failed: {b.path}: {b.detail}" for b in self.reading.failed[:20]]
        return "\n".join(lines)


def read_index_text(
    index_dir: Path,
    lock: WriterLock,
    settings: OcrSettings,
    progress: bool | ProgressCallback | None = None,
    checkpoint: int = DEFAULT_CHECKPOINT,
) -> OcrReport:
    """Read the photos of the live generation that have no text yet, publishing every
    ``checkpoint`` photos; the manifest records that the index reads text (``lock`` held)."""
    reader = IndexReader.open(index_dir, mmap=True)
    record = reader.manifest.ocr or ocr_record(settings)
    todo = unread_rows(reader.metadata)
    report = OcrReport(index_dir=str(index_dir), total=len(reader), already=len(reader) - len(todo))
    engine = OcrEngine(settings_from(record)) if len(todo) else None
    metadata = reader.metadata
    bar = (
        tqdm(total=len(todo), unit="img", desc="reading text", dynamic_ncols=True, smoothing=0.1)
        if progress is True and len(todo)
        else None
    )
    try:
        done_before = 0
        for start in range(0, max(len(todo), 1), max(1, checkpoint)):
            chunk = todo[start : start + checkpoint]
            if engine is not None and len(chunk):
                metadata, reading = read_rows(metadata, chunk, engine, _overall(progress, bar, done_before, len(todo)))
                report.reading.add(reading)
            report.manifest = update_metadata(index_dir, metadata, lock=lock, ocr=record)
            done_before += len(chunk)
    finally:
        if bar is not None:
            bar.close()
    return report


def _overall(
    progress: bool | ProgressCallback | None, bar: tqdm | None, before: int, total: int
) -> ProgressCallback | None:
    """A chunk's progress as progress over the whole run."""
    if bar is not None:
        return lambda done, _total: bar.update(before + done - bar.n)
    if callable(progress):
        return lambda done, _total: progress(before + done, total)
    return None


def ocr_index(config: OcrConfig, progress: bool | ProgressCallback | None = None) -> OcrReport:
    """``python -m indexer ocr``: add the text of the photos that have none to the index."""
    index_dir = Path(config.index_dir).resolve()
    IndexReader.open(index_dir, mmap=True)  # no index: say so before the lock, which would make the folder
    with WriterLock(index_dir) as lock:
        return read_index_text(index_dir, lock, config.settings, progress, config.checkpoint)
