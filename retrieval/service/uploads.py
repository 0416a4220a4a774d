"""Uploaded images: read within a byte cap, decoded with the same checks as indexed files.

The bytes are decoded in memory by :func:`retrieval.imageio.open_image` (the per-call
pixel cap, no global Pillow setting) and never written anywhere; the file name sent with
an upload only picks the decoder for HEIC/AVIF, it is never opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ImageDecodeError
from ..imageio import IMAGE_EXTENSIONS, decode_image, open_image

CHUNK = 1 << 20


def read_capped(upload: Any, max_bytes: int) -> bytes:
    """The whole of a FastAPI ``UploadFile``, or :class:`ImageDecodeError` (``too_large``) past ``max_bytes``."""
    data = bytearray()
    name = upload.filename or "upload"
    while chunk := upload.file.read(CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise ImageDecodeError(name, "too_large", f"more than {max_bytes:,} bytes")
    return bytes(data)


def decode_upload(data: bytes, name: str | None, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """An upright RGB image from uploaded bytes. ``draft_size`` as for :func:`retrieval.imageio.load_image`,
    so an uploaded photo gives the vector the same file gives to a local search."""
    label = Path(name or "upload").name or "upload"
    suffix = Path(label).suffix.lower()
    hint = Path("upload" + (suffix if suffix in IMAGE_EXTENSIONS else ""))
    try:
        return decode_image(open_image(hint, max_pixels=max_pixels, data=data), hint, draft_size)
    except ImageDecodeError as exc:
        raise ImageDecodeError(label, exc.reason, exc.detail) from exc
