"""Opening image files safely: every supported format, EXIF orientation, reduced-scale JPEG decode.

Nothing here changes Pillow's global settings: the decompression-bomb limit is checked
per call, and HEIC/HEIF files are opened through pillow-heif directly rather than by
registering a global opener. AVIF is Pillow's own (a Pillow built with libavif; with one
built without it an ``.avif`` file is reported as ``unsupported_format``, not as corrupt).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError, features

from .errors import ImageDecodeError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
AVIF_EXTENSIONS = frozenset({".avif"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb limit, applied per call
# JPEGs may have twice as many (Pillow's hard limit): medium-format cameras make 100-150 MP
# photos, and a JPEG is decoded at a reduced scale (``draft``), so it never takes that memory.
JPEG_PIXEL_ALLOWANCE = 2


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@functools.cache
def pillow_reads_avif() -> bool:
    """Whether this Pillow was built with an AVIF decoder (libavif)."""
    return "avif" in features.modules and bool(features.check_module("avif"))


def _open(path: Path, data: bytes | bytearray | None) -> Image.Image:
    if path.suffix.lower() in AVIF_EXTENSIONS and not pillow_reads_avif():
        raise ImageDecodeError(
            str(path),
            "unsupported_format",
            f"this Pillow ({Image.__version__}) has no AVIF decoder; install one built with libavif",
        )
    if path.suffix.lower() in HEIF_EXTENSIONS:
        import pillow_heif

        heif = pillow_heif.open_heif(io.BytesIO(data) if data is not None else str(path), convert_hdr_to_8bit=True)
        return heif.to_pillow()
    return Image.open(io.BytesIO(data) if data is not None else path)


@contextlib.contextmanager
def _typed_errors(path: Path) -> Iterator[None]:
    """Pillow's many failure types, as :class:`ImageDecodeError` with a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limits are checked here, per format
            yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(str(path), "decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(str(path), "not_an_image", "unrecognised file format") from exc
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(str(path), reason, str(exc)) from exc
    except (ValueError, SyntaxError, IndexError, TypeError, EOFError, RuntimeError) as exc:  # malformed headers
        raise ImageDecodeError(str(path), "corrupt", str(exc)) from exc


def open_image(
    path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | bytearray | None = None
) -> Image.Image:
    """Open ``path`` (or its already-read ``data``) and parse its header; no pixels decoded yet.

    Raises :class:`ImageDecodeError` with a ``reason`` of ``missing``, ``empty``,
    ``not_an_image``, ``decompression_bomb`` or ``corrupt``.
    """
    path = Path(path)
    if data is None:
        try:
            st = path.stat()
        except OSError as exc:
            raise ImageDecodeError(str(path), "missing", str(exc)) from exc
        if stat.S_ISDIR(st.st_mode):
            raise ImageDecodeError(str(path), "not_an_image", "a folder, not an image file")
        size = st.st_size
    else:
        size = len(data)
    if size == 0:
        raise ImageDecodeError(str(path), "empty", "zero-byte file")
    with _typed_errors(path):
        img = _open(path, data)
        limit = max_pixels * (JPEG_PIXEL_ALLOWANCE if img.format == "JPEG" else 1)
        if img.width * img.height > limit:
            raise ImageDecodeError(
                str(path),
                "decompression_bomb",
                f"{img.width}x{img.height} pixels, more than {limit:,} for a {img.format} file",
            )
        return img


def decode_image(img: Image.Image, path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Decode an image from :func:`open_image` into an upright RGB image (see :func:`load_image`)."""
    with _typed_errors(Path(path)):
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: an upright image is not copied
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit and 32-bit grayscale (scanners, astronomy, microscopy) and
    float images are brought to 8 bits by their own range first: Pillow's conversion clips them
    at 255, which turned a 16-bit photo into a white picture. Values already in 0-255 (integers)
    or 0-1 (floats) keep their scale. Transparent pixels are laid on white, as viewers show
    them: dropping the alpha showed whatever colour they hold, often black, so a logo or a
    cut-out on a transparent background was a picture on black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        import numpy as np

        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        top = 1.0 if img.mode == "F" else 255.0
        if low >= 0 and high <= top:
            scaled = values * (255.0 / top)
        else:
            scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = np.nan_to_num(scaled, nan=0.0).clip(0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return img.convert("RGB")


def load_image(
    path: str | os.PathLike[str], draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode ``path`` into an upright RGB image.

    ``draft_size`` lets JPEGs decode at a reduced scale (Pillow ``draft``) as long as the
    shorter side stays at least that large. GIFs give their first frame. Raises
    :class:`ImageDecodeError` with a ``reason`` of ``missing``, ``empty``, ``not_an_image``,
    ``decompression_bomb``, ``truncated`` or ``corrupt``.
    """
    return decode_image(open_image(path, max_pixels), path, draft_size)
