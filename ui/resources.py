"""Things loaded once per server process (``st.cache_resource``) or per file version (``st.cache_data``).

Every file read goes through :func:`ui.safety.resolve_indexed` first: only photos in the index are shown.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image, ImageOps

from retrieval.imageio import load_image

from .safety import resolve_indexed

THUMB_SIZE = 320
LARGE_SIZE = 1280


@st.cache_resource(show_spinner="Loading the index and model…")
def load_index(path: str, model: str | None = None) -> Any:
    """The index at ``path`` with its text encoder warmed up, shared by every browser session of this server."""
    from retrieval.query.search import open_index

    index = open_index(path, model=model)
    # The text path now, not on the first query: the exported text tower (no torch) when the index's
    # model has one, else the full model. An image query or classification loads the full model when asked.
    index.query_vector("warm up")
    return index


def safe_path(path: str, index: Any) -> Path:
    """``path`` resolved, or :class:`ui.safety.PathRefusedError` if ``index`` does not hold it."""
    return resolve_indexed(path, index)


@st.cache_data(max_entries=4096, show_spinner=False)
def _jpeg_bytes(path: str, mtime_ns: int, size: int, square: bool) -> bytes:
    image = load_image(path, draft_size=size)
    if square:
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    else:
        image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def image_bytes(path: str, index: Any, size: int = THUMB_SIZE, square: bool = False) -> bytes:
    """A JPEG of the image at ``path`` fitting in ``size`` pixels (``square``: center-cropped to
    ``size`` x ``size``, for an even grid); refuses paths that ``index`` does not hold.

    Raises :class:`ui.safety.PathRefusedError` or :class:`retrieval.errors.ImageDecodeError`.
    """
    real = safe_path(path, index)
    try:
        mtime = real.stat().st_mtime_ns
    except OSError:
        mtime = 0  # load_image reports the missing file with its own reason
    return _jpeg_bytes(str(real), mtime, size, square)


def index_generation(index: Any) -> str:
    """A string that changes whenever a new generation of the index is published."""
    manifest = index.manifest
    return f"{index.path}|{manifest.build_time}|{manifest.count}"


@st.cache_data(max_entries=4, show_spinner="Looking for near-duplicates…")
def duplicate_pairs(_index: Any, generation: str, floor: float) -> Any:
    """Near-neighbour pairs at or above ``floor``, searched once per generation (vectors only)."""
    from retrieval.duplicates.groups import similar_pairs

    return similar_pairs(_index.reader, floor)


@st.cache_data(max_entries=32, show_spinner=False)
def duplicate_groups(_index: Any, generation: str, floor: float, threshold: float) -> list[Any]:
    """The groups at ``threshold`` (>= ``floor``) from :func:`duplicate_pairs`: a slider move costs no new search."""
    from retrieval.duplicates.groups import group_pairs

    return group_pairs(_index.reader, duplicate_pairs(_index, generation, floor), threshold)


@st.cache_data(max_entries=16, show_spinner=False)
def index_facets(_index: Any, generation: str) -> dict[str, Any]:
    """Values the sidebar filters offer: folders, file types, tags and the date span of the index."""
    import pyarrow.compute as pc

    table = _index.reader.metadata
    paths = table.column("path").to_pylist() if "path" in table.column_names else []
    folders = sorted({str(Path(p).parent) for p in paths})
    file_types = (
        sorted(set(table.column("file_type").drop_null().to_pylist())) if "file_type" in table.column_names else []
    )
    tags: list[str] = []
    if "tags" in table.column_names:
        tags = sorted(set(pc.list_flatten(table.column("tags")).drop_null().to_pylist()))
    dates = _date_span(table)
    return {"folders": folders, "file_types": file_types, "tags": tags, "dates": dates, "paths": paths}


def _date_span(table: Any) -> tuple[Any, Any] | None:
    """First and last day of the photos, by capture time, else file modification time (as the filter does)."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0 or "mtime" not in table.column_names:
        return None
    seconds = table.column("mtime")
    if "captured_at" in table.column_names:
        captured = table.column("captured_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        seconds = pc.coalesce(pc.divide(pc.cast(captured, pa.float64()), 1e6), seconds)
    span = pc.min_max(seconds)
    low, high = span["min"].as_py(), span["max"].as_py()
    if low is None or high is None:
        return None
    return tuple(datetime.fromtimestamp(v, tz=timezone.utc).date() for v in (low, high))  # type: ignore[return-value]


@st.cache_data(max_entries=512, show_spinner=False)
def query_vector(_index: Any, fingerprint: str, text: str) -> Any:
    """The embedding of a text query, so reruns (filters, sliders, "Open") do not re-encode it."""
    return _index.query_vector(text)


@st.cache_data(max_entries=64, show_spinner=False)
def image_query_vector(_index: Any, fingerprint: str, digest: str, _image: Any) -> Any:
    """The embedding of an uploaded image, keyed by the upload's content hash."""
    return _index.query_vector(_image)
