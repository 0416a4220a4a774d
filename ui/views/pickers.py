"""Choosing images for the Describe and Classify pages: uploads or photos already in the index."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

from retrieval.errors import ImageDecodeError
from retrieval.imageio import load_image

from ..components import UPLOAD_TYPES, image_from_upload
from ..resources import index_facets, index_generation
from ..safety import PathRefusedError, UploadLimits, describe_decode_error, resolve_indexed


def indexed_image(index: Any, path: str) -> Image.Image | None:
    """Load an indexed photo after checking the index holds it; None (with a message) if not."""
    try:
        real = resolve_indexed(path, index)
        return load_image(real)
    except PathRefusedError as exc:
        st.error(f"Refused to open `{path}`: {exc.detail}.")
    except ImageDecodeError as exc:
        st.error(describe_decode_error(exc))
    return None


def indexed_paths(index: Any) -> list[str]:
    return list(index_facets(index, index_generation(index))["paths"])


def _short(path: str, roots: list[str]) -> str:
    for root in roots:
        if path.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(path, root)
    return path


def pick_images(index: Any, key: str, limits: UploadLimits, multiple: bool) -> list[tuple[str, Image.Image]]:
    """(name, image) pairs the user chose, from uploads or from the index."""
    source = st.radio("Image source", ["Upload", "From the index"], horizontal=True, key=f"{key}_source")
    if source == "Upload":
        uploaded = st.file_uploader(
            "Upload image(s)" if multiple else "Upload an image",
            type=UPLOAD_TYPES,
            accept_multiple_files=multiple,
            key=f"{key}_upload",
        )
        files = uploaded if isinstance(uploaded, list) else [uploaded] if uploaded else []
        pairs = [(f.name, image_from_upload(f, limits)) for f in files]
        return [(name, img) for name, img in pairs if img is not None]
    paths = indexed_paths(index)
    if not paths:
        st.info("The index is empty.")
        return []
    fmt = functools.partial(_short, roots=index.roots)
    if multiple:
        chosen = st.multiselect(
            "Indexed photos", paths, default=paths[: min(3, len(paths))], format_func=fmt, key=f"{key}_paths"
        )
    else:
        one = st.selectbox("Indexed photo", paths, format_func=fmt, key=f"{key}_path")
        chosen = [one] if one else []
    pairs = [(Path(p).name, indexed_image(index, p)) for p in chosen]
    return [(name, img) for name, img in pairs if img is not None]
