"""The plan, embed and assemble stages between scanning and writing a generation."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from retrieval.duplicates.fingerprint import NONE, pixel_fingerprints
from retrieval.index.manifest import METADATA_SCHEMA, empty_metadata
from retrieval.models.encoder import Encoder

from .catalog import BAD, REMOVED, FileState
from .decode import DecodedBatch, DecodedItem
from .scan import ScannedFile


@dataclass
class Plan:
    """What a build must do: keep live rows, (re)process files, drop rows."""

    keep_rows: list[int] = field(default_factory=list)
    todo: list[ScannedFile] = field(default_factory=list)
    known_bad: list[ScannedFile] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    retried: set[str] = field(default_factory=set)  # files that were bad, tried again (the cause may have passed)
    left_out_removed: int = 0  # images under paths removed from the index on purpose: not indexed
    kept_unreachable: int = 0  # live rows under folders that could not be read: kept, not known to be gone

    @property
    def has_changes(self) -> bool:
        return bool(self.todo or self.gone or self.changed)


def is_excluded(path: str, excluded: set[str]) -> bool:
    """True when ``path`` or one of its folders was removed from the index on purpose."""
    probe = path
    while True:
        if probe in excluded:
            return True
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent


# Reasons a file was bad that may pass without the file changing (a permission fixed, a share
# back): such files are tried again on every run, the others when they change or on --rebuild.
PASSING_REASONS = ("unreadable", "missing")


def plan_changes(
    files: Iterable[ScannedFile],
    live: pa.Table | None,
    catalog: Mapping[str, FileState],
    unreachable: Iterable[str] = (),
    retry_bad: bool = False,
) -> Plan:
    """Unchanged size and mtime means skip without reading; everything else is processed. Live rows
    not scanned are gone, unless they lie under an ``unreachable`` folder (kept as they are) and
    were not removed on purpose. A file known to be bad is skipped while it is unchanged, unless
    ``retry_bad`` or its reason may pass (:data:`PASSING_REASONS`)."""
    rows: dict[str, tuple[int, int, float]] = {}
    if live is not None:
        cols = (live.column(c).to_pylist() for c in ("path", "size", "mtime"))
        rows = {p: (i, sz, mt) for i, (p, sz, mt) in enumerate(zip(*cols))}
    excluded = {p for p, st in catalog.items() if st.status == REMOVED}
    plan = Plan()
    seen: set[str] = set()
    for f in files:
        if excluded and is_excluded(f.path, excluded):
            plan.left_out_removed += 1
            continue
        seen.add(f.path)
        hit = rows.get(f.path)
        if hit is not None and hit[1] == f.size and hit[2] == f.mtime:
            plan.keep_rows.append(hit[0])
            continue
        if hit is not None:
            plan.changed.append(f.path)
        state = catalog.get(f.path)
        if (
            hit is None
            and state is not None
            and state.status == BAD
            and state.size == f.size
            and state.mtime == f.mtime
        ):
            passed = (state.reason or "").startswith(PASSING_REASONS) and _readable(f.path)
            if not (retry_bad or passed):
                plan.known_bad.append(f)
                continue
            plan.retried.add(f.path)
        plan.todo.append(f)
    offline = set(unreachable)
    for p, (i, _, _) in rows.items():
        if p in seen:
            continue
        if offline and is_excluded(p, offline) and not (excluded and is_excluded(p, excluded)):
            plan.keep_rows.append(i)
            plan.kept_unreachable += 1
        else:
            plan.gone.append(p)
    return plan


def _readable(path: str) -> bool:
    """Whether a file that could not be read can be now (its first byte; no decoding)."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


@dataclass
class EmbeddedBatch:
    """``vectors[i]`` embeds ``new[i]`` and ``fingerprints[i]`` is its pixel fingerprint;
    ``on_device`` of the new files were decoded on the model's device."""

    new: list[DecodedItem]
    vectors: np.ndarray
    reused: list[DecodedItem]
    bad: list[DecodedItem]
    on_device: int = 0
    fingerprints: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def start_embed(encoder: Encoder, batch: DecodedBatch) -> Callable[[], EmbeddedBatch]:
    """Start the model on the decoded pixels; the function returned waits for it and sorts the
    rest of the batch into reused and bad (on CUDA the caller prepares its next batch meanwhile)."""
    result, codes = None, None
    if batch.pixels is not None:
        pixels = batch.pixels.to(encoder.device, non_blocking=True)  # once, for the fingerprints and the model
        normalised = pixels.dtype != torch.uint8
        codes = pixel_fingerprints(
            pixels,
            encoder.preprocess["mean"] if normalised else None,
            encoder.preprocess["std"] if normalised else None,
        )
        result = encoder.start_encode_pixels(pixels)

    def finish() -> EmbeddedBatch:
        if result is not None and codes is not None:
            vectors = result().numpy().astype(np.float32, copy=False)
            fingerprints = codes.cpu().numpy()
        else:
            vectors = np.zeros((0, encoder.embed_dim), np.float32)
            fingerprints = np.zeros(0, np.int64)
        return EmbeddedBatch(
            new=[batch.items[i] for i in batch.pixel_items],
            vectors=vectors,
            reused=[it for it in batch.items if it.known],
            bad=[it for it in batch.items if it.reason is not None],
            on_device=batch.on_device,
            fingerprints=fingerprints,
        )

    return finish


def _new_row(item: DecodedItem, fingerprint: int) -> dict[str, object]:
    info = item.info
    assert info is not None and item.sha256 is not None
    return {
        "path": item.file.path,
        "size": item.file.size,
        "mtime": item.file.mtime,
        "sha256": item.sha256,
        "width": info.width,
        "height": info.height,
        "file_type": info.file_type,
        "captured_at": info.captured_at,
        "camera_make": info.camera_make,
        "camera_model": info.camera_model,
        "gps_lat": info.gps_lat,
        "gps_lon": info.gps_lon,
        "tags": [],
        "tag_scores": [],
        "fingerprint": None if fingerprint == NONE else fingerprint,
        "ocr_text": None,
        "ocr_confidence": None,
    }


def assemble(
    dim: int,
    live_vectors: np.ndarray | None,
    live_metadata: pa.Table | None,
    keep_rows: list[int],
    batches: list[EmbeddedBatch],
    sha_rows: Mapping[str, int],
) -> tuple[np.ndarray, pa.Table]:
    """Vectors and metadata of the next generation: kept rows, then reused, then new ones."""
    vec_parts = [np.zeros((0, dim), np.float32)]
    meta_parts = [empty_metadata()]
    if live_vectors is not None and live_metadata is not None and keep_rows:
        idx = np.asarray(keep_rows, dtype=np.int64)
        vec_parts.append(np.asarray(live_vectors[idx], dtype=np.float32))
        meta_parts.append(live_metadata.take(pa.array(idx)))
    reused = [it for b in batches for it in b.reused]
    if reused and live_vectors is not None and live_metadata is not None:
        src = np.asarray([sha_rows[it.sha256] for it in reused if it.sha256], dtype=np.int64)
        vec_parts.append(np.asarray(live_vectors[src], dtype=np.float32))
        base = live_metadata.take(pa.array(src))
        base = base.set_column(
            base.schema.get_field_index("path"), "path", pa.array([it.file.path for it in reused], pa.string())
        )
        base = base.set_column(
            base.schema.get_field_index("size"), "size", pa.array([it.file.size for it in reused], pa.int64())
        )
        base = base.set_column(
            base.schema.get_field_index("mtime"), "mtime", pa.array([it.file.mtime for it in reused], pa.float64())
        )
        meta_parts.append(base.cast(METADATA_SCHEMA))
    new_rows = [_new_row(it, int(code)) for b in batches for it, code in zip(b.new, b.fingerprints, strict=True)]
    if new_rows:
        vec_parts += [b.vectors for b in batches]
        meta_parts.append(pa.Table.from_pylist(new_rows, schema=METADATA_SCHEMA))
    vectors = np.concatenate(vec_parts).astype(np.float32, copy=False)
    metadata = pa.concat_tables(meta_parts).combine_chunks()
    return vectors, metadata
