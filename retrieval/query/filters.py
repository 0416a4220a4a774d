"""Metadata filters (folder, date range, file type, tag) turned into a boolean row mask."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidQueryError

FILE_TYPE_ALIASES = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "jpe": "jpeg",
    "png": "png",
    "webp": "webp",
    "bmp": "bmp",
    "gif": "gif",
    "tif": "tiff",
    "tiff": "tiff",
    "heic": "heif",
    "heif": "heif",
    "avif": "avif",
}


def normalize_file_type(value: str) -> str:
    """``"JPG"``, ``".jpeg"`` and ``"jpeg"`` all mean ``"jpeg"``; unknown names raise."""
    key = str(value).strip().lower().lstrip(".")
    if key not in FILE_TYPE_ALIASES:
        known = ", ".join(sorted(set(FILE_TYPE_ALIASES)))
        raise InvalidQueryError(f"unknown file type {value!r}; known types: {known}")
    return FILE_TYPE_ALIASES[key]


def _as_utc(value: Any, end_of_day: bool) -> float:
    """Seconds since the epoch for a date, datetime or ISO string; dates cover their whole day."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError as exc:
            raise InvalidQueryError(f"not a date: {value!r} (use YYYY-MM-DD or an ISO timestamp)") from exc
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, date):
        moment = datetime.combine(value, time.min, tzinfo=timezone.utc)
        if end_of_day:
            moment += timedelta(days=1)
            return moment.timestamp() - 1e-6
    else:
        raise InvalidQueryError(f"not a date: {value!r}")
    return moment.timestamp()


def _effective_time(metadata: pa.Table) -> np.ndarray:
    """Capture time in epoch seconds, falling back to the file's mtime."""
    captured = metadata.column("captured_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    seconds = pc.divide(pc.cast(captured, pa.float64()), 1e6)
    return pc.coalesce(seconds, metadata.column("mtime")).to_numpy(zero_copy_only=False)


def effective_times(metadata: pa.Table) -> np.ndarray:
    """Each row's capture time in epoch seconds (EXIF, else mtime): what date filters and date order use."""
    return _effective_time(metadata)


def _folder_mask(metadata: pa.Table, folder: str | os.PathLike[str]) -> np.ndarray:
    text = str(folder).strip()
    if not text:
        raise InvalidQueryError("empty folder filter")
    prefix = os.path.realpath(os.path.expanduser(text)).rstrip(os.sep) + os.sep
    paths = metadata.column("path")
    return pc.starts_with(paths, prefix).to_numpy(zero_copy_only=False).astype(bool)


def _tag_mask(metadata: pa.Table, tag: str) -> np.ndarray:
    wanted = tag.strip().lower()
    if not wanted:
        raise InvalidQueryError("empty tag filter")
    tags = metadata.column("tags").combine_chunks()
    mask = np.zeros(metadata.num_rows, dtype=bool)
    if len(tags) == 0:
        return mask
    flat = pc.utf8_lower(pc.list_flatten(tags))
    parents = pc.list_parent_indices(tags).to_numpy(zero_copy_only=False)
    hits = pc.equal(flat, wanted).to_numpy(zero_copy_only=False).astype(bool)
    mask[parents[hits]] = True
    return mask


def build_filter_mask(
    metadata: pa.Table,
    folder: str | os.PathLike[str] | None = None,
    date_from: Any = None,
    date_to: Any = None,
    file_types: Sequence[str] | None = None,
    tag: str | None = None,
) -> np.ndarray | None:
    """AND of every filter that is set; None when none is."""
    masks: list[np.ndarray] = []
    if folder is not None:
        masks.append(_folder_mask(metadata, folder))
    if date_from is not None or date_to is not None:
        when = _effective_time(metadata)
        lo = _as_utc(date_from, end_of_day=False) if date_from is not None else -np.inf
        hi = _as_utc(date_to, end_of_day=True) if date_to is not None else np.inf
        if lo > hi:
            raise InvalidQueryError(f"date_from {date_from} is after date_to {date_to}")
        masks.append((when >= lo) & (when <= hi))
    if file_types is not None:
        if isinstance(file_types, str):
            file_types = [file_types]
        wanted = sorted({normalize_file_type(t) for t in file_types})
        if not wanted:
            raise InvalidQueryError("empty file type filter")
        masks.append(pc.is_in(metadata.column("file_type"), pa.array(wanted)).to_numpy(zero_copy_only=False))
    if tag is not None:
        masks.append(_tag_mask(metadata, tag))
    if not masks:
        return None
    out = np.ones(metadata.num_rows, dtype=bool)
    for m in masks:
        out &= m.astype(bool)
    return out


def explain_no_match(metadata: pa.Table, **filters: Any) -> str | None:
    """Why ``filters`` (:func:`build_filter_mask`'s) leave no photo to search, in words (the first
    that matches none on its own), or None when some photo passes them (or none is set)."""
    mask = build_filter_mask(metadata, **filters)
    if mask is None or mask.any():
        return None
    folder, tag, file_types = filters.get("folder"), filters.get("tag"), filters.get("file_types")
    date_from, date_to = filters.get("date_from"), filters.get("date_to")
    if folder is not None and not _folder_mask(metadata, folder).any():
        return f"no indexed photo is in or under {folder}"
    if tag is not None and not _tag_mask(metadata, tag).any():
        known = sorted({t for row in metadata.column("tags").to_pylist() for t in (row or [])})
        if not known:
            return "the index has no tags yet: python -m indexer tag --index DIR --labels-file tags.txt"
        shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        return f"no photo is tagged {tag!r}; the index's tags: {shown}"
    if file_types is not None and not build_filter_mask(metadata, file_types=file_types).any():
        held = sorted(set(metadata.column("file_type").to_pylist()))
        return (
            f"the index holds no {', '.join(file_types) if not isinstance(file_types, str) else file_types} "
            f"files (it holds {', '.join(held) or 'none'})"
        )
    if (date_from is not None or date_to is not None) and not build_filter_mask(
        metadata, date_from=date_from, date_to=date_to
    ).any():
        return (
            f"no photo was taken (or, without EXIF, written) between {date_from or 'the start'} and {date_to or 'now'}"
        )
    return "no photo passes all the filters together"
