"""What the app may read: photos in the current generation of the index, and uploads that decode as images.

The checks are plain functions so they can be unit-tested without a browser. The app calls
:func:`resolve_indexed` before opening or showing any file, so a crafted path (``..``, an
absolute path elsewhere, a symlink pointing out, a photo taken out with ``indexer remove`` or
never indexed, such as one in a hidden folder) is refused rather than read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from retrieval.errors import ImageDecodeError, PathRefusedError
from retrieval.imageio import IMAGE_EXTENSIONS, load_image

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def is_inside(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``path`` (after resolving ``..`` and symlinks) lies within one of ``roots``."""
    real = _real(path)
    for root in roots:
        real_root = _real(root)
        if real == real_root or real.is_relative_to(real_root):
            return True
    return False


def resolve_inside_roots(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path:
    """Return the fully resolved ``path`` if it lies inside one of ``roots``, else raise.

    Relative paths are resolved against the current directory, never against a root, so a
    relative ``../x`` cannot be smuggled in. An empty root list refuses everything.
    """
    text = os.fspath(path)
    if not text or "\x00" in text:
        raise PathRefusedError(text, "not a valid path")
    roots = list(roots)
    if not roots:
        raise PathRefusedError(text, "the index has no root folders")
    if not is_inside(text, roots):
        raise PathRefusedError(text)
    return _real(text)


def resolve_indexed(path: str | os.PathLike[str], index: Any) -> Path:
    """Return the fully resolved ``path`` if the current generation of ``index`` (a
    :class:`retrieval.query.search.Index`) holds it, else raise :class:`PathRefusedError`.

    The index stores photos by their resolved paths, so ``..`` and links resolve to what was
    indexed or to nothing; a photo reached through a link out of the folders is shown only
    when the index followed that link (``indexer build --follow-links``)."""
    text = os.fspath(path)
    if not text or "\x00" in text:
        raise PathRefusedError(text, "not a valid path")
    rows = index.reader.rows_for_paths([text])
    if len(rows) == 0 or rows[0] < 0:
        raise PathRefusedError(text, "not a photo in the index")
    return _real(text)


@dataclass(frozen=True)
class UploadLimits:
    """How much an uploaded image may weigh, and which file endings are accepted."""

    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = 40_000_000


def upload_suffix(name: str) -> str:
    """The lower-case file ending of an upload, or raise when it is not an image type we read."""
    suffix = Path(name or "").suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageDecodeError(name or "upload", "not_an_image", f"file type {suffix or '(none)'} is not supported")
    return suffix


def decode_upload(data: bytes, name: str, limits: UploadLimits = UploadLimits()) -> Image.Image:
    """Decode uploaded bytes with exactly the checks ``load_image`` applies to files.

    The bytes go to a private temporary file (so HEIC and every other reader behave as for
    indexed files) which is removed before returning. Raises :class:`ImageDecodeError`
    with ``reason`` ``too_large`` or any of ``load_image``'s reasons.
    """
    label = name or "upload"
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            label, "too_large", f"{len(data) / 1e6:.1f} MB, the limit is {limits.max_bytes / 1e6:.0f} MB"
        )
    suffix = upload_suffix(name)
    with tempfile.TemporaryDirectory(prefix="ui-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_image(path, max_pixels=limits.max_pixels)
        except ImageDecodeError as exc:
            raise ImageDecodeError(label, exc.reason, exc.detail) from exc


def describe_decode_error(exc: ImageDecodeError) -> str:
    """A sentence for the person who uploaded the file."""
    reasons = {
        "too_large": "the file is too large",
        "empty": "the file is empty",
        "missing": "the file could not be found",
        "not_an_image": "it is not an image we can read",
        "decompression_bomb": "the image has too many pixels",
        "truncated": "the image file is truncated",
        "corrupt": "the image file is damaged",
    }
    why = reasons.get(exc.reason, exc.reason)
    return f"Could not use {Path(exc.path).name}: {why}" + (f" ({exc.detail})." if exc.detail else ".")
