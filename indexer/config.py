"""Typed configuration and results of the indexer (parsed once at the CLI boundary)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retrieval.imageio import IMAGE_EXTENSIONS

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while images are embedded."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BuildConfig:
    """How to build or update an index. ``None`` means "pick a sensible default".

    ``gpu_decode``: decode JPEGs on the model's device (``indexer.device_stage``); by default
    only when that device is CUDA and torchvision's nvJPEG decoder works there.
    """

    model: str | None = None
    index_type: str | None = None
    workers: int | None = None
    batch_size: int | None = None
    db_url: str | None = None
    rebuild: bool = False
    device: str | None = None
    draft_factor: float = 2.0
    worker_niceness: int | None = None
    gpu_decode: bool | None = None
    precision: str = "auto"  # the model's autocast: auto, fp32 or bf16 (retrieval.models.encoder.resolve_precision)
    ocr: bool = False  # read the text in the photos (indexer.text); the index keeps doing it on updates
    follow_links: bool | None = None  # follow links leading out of the folders; None: as the index was built (no)

    def resolved_worker_niceness(self, on_gpu: bool) -> int:
        """On CPU, decode workers yield to the model (they need a small share of the cores)."""
        return self.worker_niceness if self.worker_niceness is not None else (0 if on_gpu else 10)

    def resolved_batch_size(self, on_gpu: bool) -> int:
        return self.batch_size or (64 if on_gpu else 32)

    def resolved_workers(self, on_gpu: bool) -> int:
        """Decode processes (0: decode inline, between model batches).

        With a GPU, enough to keep it fed. On a CPU-only machine the model's threads already use
        every core, so a concurrent decoder only takes cycles from them. With 2 cores or fewer a
        worker process costs the model more than decoding itself does (``bench_indexing.py``,
        built-in model: 126 images/s with one worker, 172 with none, where decoding costs
        0.44 ms of the 5.3 ms per image), so decoding runs inline there. A worker process also
        isolates a crash inside a C decoder to one file; ``workers=1`` keeps that on small machines.
        """
        if self.workers is not None:
            return max(0, self.workers)
        cpus = available_cpus()
        if on_gpu:
            return max(1, min(8, cpus - 1))
        return 0 if cpus <= 2 else max(1, min(4, cpus // 4))


@dataclass
class StageTimes:
    """Wall-clock seconds per stage. ``decode_wait`` is time the model sat idle waiting for
    decoded batches; ``decode_cpu`` is the CPU decode work (in the worker processes, or inline
    when there are none);
    ``decode_device`` is JPEG decoding on the model's device, in the main process."""

    load_model: float = 0.0
    scan: float = 0.0
    plan: float = 0.0
    decode_wait: float = 0.0
    decode_cpu: float = 0.0
    decode_device: float = 0.0
    embed: float = 0.0
    write: float = 0.0
    catalog: float = 0.0
    ocr: float = 0.0  # reading the text in the photos (indexer.text), when the index does
    export_text: float = 0.0  # the text tower's one-time ONNX export for fast queries (retrieval.models.onnxexport)
    export_image: float = 0.0  # the image tower's one-time ONNX export for CPU builds (retrieval.models.onnxexport)
    total: float = 0.0


@dataclass
class BadFile:
    path: str
    reason: str
    detail: str = ""


@dataclass
class BuildReport:
    """What one build, update or remove did. Of the ``embedded`` files, ``device_decoded`` were
    decoded on the model's device (when ``gpu_decode`` ran that path), ``pillow_decoded`` by Pillow."""

    index_dir: str
    model_spec: str
    generation: str | None = None
    published: bool = False
    scanned: int = 0
    unchanged: int = 0
    touched: int = 0  # of the unchanged, files with a new time and the same content
    embedded: int = 0
    reused: int = 0
    removed: int = 0
    skipped_bad: int = 0
    count: int = 0
    index_type: str = ""
    gpu_decode: bool = False
    device_decoded: int = 0
    pillow_decoded: int = 0
    precision: str = ""  # the model's autocast as it ran (fp32, bf16 or fp16), when anything was embedded
    threads: list[int] = field(default_factory=list)  # torch threads a CPU build used (by free cores, batch by batch)
    ignored: dict[str, int] = field(
        default_factory=dict
    )  # files under the roots that are not supported images, by extension
    unreachable: dict[str, str] = field(default_factory=dict)  # folders that could not be read -> why
    kept_unreachable: int = 0  # indexed photos under them, kept as they were
    bad_names: list[str] = field(default_factory=list)  # images and folders left out: names that are not UTF-8
    broken_links: list[str] = field(default_factory=list)  # links that lead nowhere (target missing, or a loop)
    follow_links: bool = False  # links leading out of the folders were followed (--follow-links, kept in the manifest)
    outside_links: dict[str, str] = field(
        default_factory=dict
    )  # links not followed: they lead out of the folders -> where
    not_photos: dict[str, str] = field(
        default_factory=dict
    )  # pipes, devices, photo-named folders, looping links -> what
    left_out_removed: int = 0  # images under paths removed with `indexer remove`: kept out
    decoded_inline: str = ""  # why decoding left the worker processes part way (shared memory too small)
    new_bad: list[BadFile] = field(default_factory=list)
    embedded_paths: list[str] = field(default_factory=list)
    reused_paths: list[str] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)
    removing: bool = False  # a remove, not a build: it scans nothing
    not_indexed: list[str] = field(default_factory=list)  # what a remove was given that held no indexed photo
    tagged: int | None = (
        None  # of the new photos, those given tags the way `indexer tag` tagged the index (None: not tagged)
    )
    tag_error: str = ""  # why the new photos could not be tagged
    ocr_read: int | None = None  # photos whose text was read (None: the index reads no text)
    ocr_with_text: int = 0  # of them, those with text
    ocr_failed: list[BadFile] = field(default_factory=list)  # photos the OCR engine failed on: no text kept
    timings: StageTimes = field(default_factory=StageTimes)

    @property
    def images_per_second(self) -> float:
        busy = self.timings.embed + self.timings.decode_wait + self.timings.decode_device
        return self.embedded / busy if busy > 0 else 0.0

    def notices(self, shown: int = 5) -> list[str]:
        """What was left out or kept unread, one sentence each, naming up to ``shown`` files or folders;
        the build's summary and the app's Index page say the same."""
        notes = []
        if self.ignored:
            listed = _listed([f"{kind} {n:,}" for kind, n in self.ignored.items()], 6)
            n = sum(self.ignored.values())
            what = "1 file that is not a supported image" if n == 1 else f"{n:,} files that are not supported images"
            notes.append(f"ignored {what} ({listed})")
        if self.bad_names:
            listed = _listed(self.bad_names, shown)
            notes.append(
                f"left out {len(self.bad_names):,} images or folders whose names are not UTF-8 (rename them "
                f"to index them): {listed}"
            )
        if self.unreachable:
            folders = list(self.unreachable.items())
            listed = _listed([f"{folder} ({why})" for folder, why in folders], shown, "; ")
            photos = "1 indexed photo" if self.kept_unreachable == 1 else f"{self.kept_unreachable:,} indexed photos"
            if self.kept_unreachable:
                notes.append(
                    f"kept {photos} under folders that cannot be read or are empty now: {listed}. "
                    f"If they are gone for good: python -m indexer remove FOLDER --index {self.index_dir}"
                )
            else:
                notes.append(f"could not read {listed}; nothing there is indexed")
        if self.left_out_removed:
            photos = "1 image" if self.left_out_removed == 1 else f"{self.left_out_removed:,} images"
            notes.append(
                f"left out {photos} under paths removed from the index (python -m indexer build PATH "
                f"--index {self.index_dir} adds a removed one back)"
            )
        if self.broken_links:
            listed = _listed(self.broken_links, shown)
            notes.append(
                f"skipped {len(self.broken_links):,} link(s) that lead nowhere (the file or folder they "
                f"point to is missing, or they loop): {listed}"
            )
        if self.outside_links:
            links = list(self.outside_links.items())
            listed = _listed([f"{link} -> {to}" for link, to in links], shown)
            notes.append(
                f"did not follow {len(links):,} link(s) that lead out of the indexed folders (--follow-links "
                f"follows them): {listed}"
            )
        if self.not_photos:
            items = list(self.not_photos.items())
            listed = _listed([f"{path} ({what})" for path, what in items], shown, "; ")
            notes.append(f"{len(items):,} name(s) that are not photo files: {listed}")
        if self.tag_error:
            notes.append(
                f"the new photos were not tagged: {self.tag_error}; tag the index again with "
                f"python -m indexer tag --index {self.index_dir} ..."
            )
        if self.not_indexed:
            listed = _listed(self.not_indexed, shown)
            notes.append(f"no indexed photo is at or under {listed}; kept out of later updates all the same")
        return notes

    def summary(self) -> str:
        t = self.timings
        on_device = f", {t.decode_device:.2f} on device" if self.gpu_decode else ""
        lines = [
            f"index: {self.index_dir} ({self.count} images, model {self.model_spec}, {self.index_type or 'no ANN index'})",
            f"scanned {self.scanned}: {self.embedded} embedded, {self.reused} reused (moved/copied), "
            f"{self.unchanged} unchanged"
            + (f" ({self.touched} touched: new time, same content)" if self.touched else "")
            + f", {self.removed} removed, {len(self.new_bad)} new bad, "
            f"{self.skipped_bad} known bad skipped",
            ("published generation " + (self.generation or ""))
            if self.published
            else "nothing changed; index left as it was",
            f"stages (s): load model {t.load_model:.2f} | scan {t.scan:.2f} | plan {t.plan:.2f} | "
            f"decode {t.decode_cpu:.2f} (CPU), {t.decode_wait:.2f} waited{on_device} | embed {t.embed:.2f} | "
            f"write {t.write:.2f} | catalog {t.catalog:.2f}"
            + (f" | ocr {t.ocr:.2f}" if self.ocr_read is not None else "")
            + (f" | image tower export {t.export_image:.2f}" if t.export_image >= 0.01 else "")
            + (f" | text tower export {t.export_text:.2f}" if t.export_text >= 0.01 else "")
            + f" | total {t.total:.2f}",
        ]
        lines += self.notices()
        if self.scanned == 0 and self.count == 0 and not self.removing:  # a build that found nothing
            lines.append(
                f"no supported images found; supported: {', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}"
            )
        if self.decoded_inline:
            lines.append(f"warning: {self.decoded_inline}")
        if self.embedded and self.gpu_decode:
            lines.append(f"decoded: {self.device_decoded} on the model's device, {self.pillow_decoded} by Pillow")
        if self.tagged is not None:
            lines.append(
                f"tags: {self.tagged} of {self.embedded} new photo(s) tagged with the index's labels (indexer tag)"
            )
        if self.ocr_read is not None:
            rate = f", {self.ocr_read / t.ocr:.1f} photos/s" if t.ocr > 0 and self.ocr_read else ""
            failed = (
                f", {len(self.ocr_failed)} failed (no text kept; tried again on the next update)"
                if self.ocr_failed
                else ""
            )
            lines.append(f"text: read {self.ocr_read} photo(s), {self.ocr_with_text} with text{failed}{rate}")
        if self.embedded:
            used = "-".join(str(n) for n in sorted({min(self.threads), max(self.threads)})) if self.threads else ""
            lines.append(
                f"throughput: {self.images_per_second:.1f} images/s"
                + (f" ({self.precision})" if self.precision else "")
                + (f", {used} torch thread(s) as cores were free" if used else "")
            )
        lines += [f"bad: {b.path}: {b.reason}" + (f" ({b.detail})" if b.detail else "") for b in self.new_bad]
        lines += [f"ocr failed: {b.path}: {b.detail}" for b in self.ocr_failed[:5]]
        return "\n".join(lines)


@dataclass
class IndexStats:
    index_dir: str
    generation: str
    model_spec: str
    model_fingerprint: str
    embed_dim: int
    count: int
    index_type: str
    build_time: str
    roots: list[str]
    bad_count: int
    catalog_url: str
    file_types: dict[str, int] = field(default_factory=dict)
    bad_files: list[BadFile] = field(default_factory=list)
    tagging: dict[str, Any] = field(default_factory=dict)  # Manifest.tagging: how `indexer tag` tagged it
    ocr: dict[str, Any] = field(default_factory=dict)  # Manifest.ocr: how the text in the photos is read
    text_read: int = 0  # photos whose text has been read
    checksums: bool = False  # the generation records checksums of its files (retrieval.index.checksums)
    verified: str = ""  # the last `indexer verify` of this generation: "TIME: outcome", "" when never


def _listed(items: list[str], shown: int, sep: str = ", ") -> str:
    """The first ``shown`` of ``items`` joined by ``sep``, with "..." when there are more."""
    return sep.join(items[:shown]) + (f"{sep}..." if len(items) > shown else "")
