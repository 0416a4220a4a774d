"""Sample photos for the quickstart: the real photographs bundled with scikit-image."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from PIL import Image

from retrieval.errors import FileWriteError

# name in skimage.data -> file written (only photographs, no synthetic or microscopy images)
SAMPLE_PHOTOS = {
    "astronaut": "astronaut.jpg",
    "coffee": "coffee.jpg",
    "chelsea": "chelsea_the_cat.jpg",
    "rocket": "rocket.jpg",
    "camera": "cameraman.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "moon": "moon.png",
}


def _load(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    return Image.fromarray(array)


def write_samples(out_dir: str | os.PathLike[str], kept: list[Path] | None = None) -> list[Path]:
    """Write the bundled sample photos into ``out_dir``; returns the sample files there.

    A file of the same name that holds something else (a photo of your own) is never
    overwritten: it is left as it is and added to ``kept``. FileWriteError when the disk
    refuses (read-only, full); a half-written photo is removed."""
    out = Path(out_dir)
    written: list[Path] = []
    partial: Path | None = None  # the file being written: the only one an error may remove
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, filename in SAMPLE_PHOTOS.items():
            image = _load(name)
            target = out / filename
            buffer = io.BytesIO()
            if target.suffix == ".jpg":
                image.convert("RGB").save(buffer, "JPEG", quality=92)
            else:
                image.save(buffer, "PNG")
            data = buffer.getvalue()
            if target.exists() and (not target.is_file() or target.read_bytes() != data):
                if kept is not None:
                    kept.append(target)
                continue
            if not target.exists():
                partial = target
                target.write_bytes(data)
                partial = None
            written.append(target)
    except OSError as exc:
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        raise FileWriteError(
            f"could not write the sample photos into {out}: {exc.strerror or exc} "
            f"({len(written)} of {len(SAMPLE_PHOTOS)} written)"
        ) from exc
    return written
